"""The model server (`farm-platform models serve`, kserve) for real: one server process per
module on free ports, the shipped weights, the Open Inference Protocol over loopback; its
versions, metadata and listening address, and a day graded through it. Needs the `serve`
extra; skipped without it.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_server_support import (
    grpc_metadata,
    grpc_stub,
    inference,
    oip,
    oip_runners,
    outward_address,
    served_models_fixture,  # noqa: F401 (the fixture `served_models_dir`)
)

from farm_platform.layout import ImageKey
from farm_platform.ml import oip_wire
from farm_platform.ml.registry import DISEASE_TYPES, ModelRegistry
from farm_platform.resources.inference import InferenceResource
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform_dev.model_server import ModelServerProcess
from farm_platform_dev.processes import listening_addresses


@pytest.fixture(scope="module")
def server_urls(
    served_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ModelServerProcess(served_models_dir, log) as server:
        yield {"http": server.http_url, "grpc": server.grpc_url}


@pytest.fixture(scope="module")
def server(server_urls: dict[str, str]) -> str:
    """The REST address: health, model list, reload."""
    return server_urls["http"]


@pytest.fixture(scope="module")
def photos() -> list[tuple[ImageKey, np.ndarray]]:
    simulate = pytest.importorskip("farm_platform_dev.simulate")
    # The held-out seed of unit/test_models_inference.py: leaves from none to crowded.
    return [
        (ImageKey(f"P{i:03d}", dt.date(2024, 5, 1)), inference.decode_png(sim.png))
        for i, sim in enumerate(simulate.render_training_images(2000, 12))
    ]


def test_server_lists_every_active_model(server: str, served_models_dir: Path) -> None:
    import requests

    listed = requests.get(f"{server}/v2/models", timeout=10).json()["models"]
    assert sorted(listed) == sorted(ModelRegistry(served_models_dir).active_versions())


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_server_results_equal_local_inference(
    transport: str,
    server_urls: dict[str, str],
    served_models_dir: Path,
    photos: list[tuple[ImageKey, np.ndarray]],
) -> None:
    registry = ModelRegistry(served_models_dir)
    client = oip.OipClient(server_urls[transport])
    detector_card = registry.detector()
    local_rows, crops = inference.crop_leaves(
        photos, inference.load_detector(detector_card, registry), detector_card, "file:///b"
    )
    served_rows, served_crops = inference.crop_leaves(
        photos, oip_runners.remote_detector(client, detector_card), detector_card, "file:///b"
    )
    assert local_rows.height > 40
    assert served_rows.equals(local_rows)
    assert all(np.array_equal(a, b) for a, b in zip(crops, served_crops, strict=True))
    for disease in DISEASE_TYPES:
        card = registry.grader_for(disease)
        prepared = inference.prepare_crops(crops, card.input_size)
        # A batch smaller than the request shows batching does not change results either.
        local = inference.grade_crops(
            prepared, local_rows, inference.load_grader(card, registry), card
        )
        served = inference.grade_crops(
            prepared, local_rows, oip_runners.remote_grader(client, card), card, batch_size=50
        )
        assert served["predicted_grade"].to_list() == local["predicted_grade"].to_list()
        assert np.allclose(served["confidence"], local["confidence"], rtol=0, atol=1e-6)
        assert served.drop("confidence").equals(local.drop("confidence"))


def test_version_mismatch_is_refused_until_the_server_reloads(
    server: str, server_urls: dict[str, str], served_models_dir: Path
) -> None:
    registry = ModelRegistry(served_models_dir)
    client = oip.OipClient(server)
    grpc_client = oip.OipClient(server_urls["grpc"])
    registry.set_active("disease_2_grader", "v2")
    try:
        card = registry.grader_for("disease_2")
        with pytest.raises(oip.OipVersionMismatch, match="computed disease_2_grader v1.*v2"):
            oip_runners.check_versions(client, [card])
        grader = oip_runners.remote_grader(grpc_client, card)
        with pytest.raises(oip.OipVersionMismatch):
            grader.run(inference.prepare_crops([np.zeros((9, 9, 3), np.uint8)], (48, 48)))

        # The reload call: the new active version is served without a restart.
        from farm_platform.cli import main

        assert (
            main(["models", "--models-dir", str(served_models_dir), "reload", "--url", server]) == 0
        )
        for transport in (client, grpc_client):
            oip_runners.check_versions(transport, list(registry.active_cards().values()))
        reported, _ = client.infer(
            card.id, {"crops": np.zeros((1, 48, 48, 3), np.uint8)}, oip_runners.GRADER_OUTPUTS
        )
        assert reported == oip_wire.Reported("disease_2_grader", "v2")
    finally:
        registry.set_active("disease_2_grader", "v1")
        client.reload("disease_2_grader")


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_reload_keeps_serving_the_old_version_when_the_new_weights_are_corrupt(
    transport: str, server_urls: dict[str, str], served_models_dir: Path
) -> None:
    registry = ModelRegistry(served_models_dir)
    client = oip.OipClient(server_urls[transport])
    weights = served_models_dir / "disease_2_grader" / "v2" / "weights.pt"
    original = weights.read_bytes()
    registry.set_active("disease_2_grader", "v2")
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        with pytest.raises(oip.OipError, match="sha256") as failure:
            client.reload("disease_2_grader")
        assert not isinstance(failure.value, oip.OipUnavailable)
        reported, _ = client.infer(
            "disease_2_grader",
            {"crops": np.zeros((1, 48, 48, 3), np.uint8)},
            oip_runners.GRADER_OUTPUTS,
        )
        assert reported.version == "v1"
    finally:
        weights.write_bytes(original)
        registry.set_active("disease_2_grader", "v1")


def test_the_registry_watch_follows_a_new_active_version(served_models_dir: Path) -> None:
    from farm_platform.ml import serving

    registry = ModelRegistry(served_models_dir)
    repository = serving.RegistryRepository(registry)
    for model in serving.registry_models(registry):
        repository.update(model)
    watch = serving.RegistryWatch(repository, interval_seconds=60)
    grader = repository.get_model("disease_2_grader")
    weights = served_models_dir / "disease_2_grader" / "v2" / "weights.pt"
    original = weights.read_bytes()
    try:
        watch.check()
        assert grader.card.version == "v1"
        registry.set_active("disease_2_grader", "v2")
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        watch.check()  # corrupt weights: v1 keeps serving
        assert grader.card.version == "v1"
        weights.write_bytes(original)
        watch.check()
        assert grader.card.version == "v2"
        assert repository.get_model("leaf_detector").card.version == registry.detector().version
    finally:
        weights.write_bytes(original)
        registry.set_active("disease_2_grader", "v1")


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_request_the_model_cannot_take_is_answered_with_the_reason(
    transport: str, server_urls: dict[str, str]
) -> None:
    client = oip.OipClient(server_urls[transport])
    with pytest.raises(oip.OipError, match=r"takes \[N, 48, 48, 3\], got \[1, 8, 8, 3\]"):
        client.infer(
            "disease_0_grader",
            {"crops": np.zeros((1, 8, 8, 3), np.uint8)},
            oip_runners.GRADER_OUTPUTS,
        )


# ---------------------------------------------------------------------------------------
# The protocol's metadata, versioned paths, the listening address


def test_metadata_names_the_active_version_and_the_tensors_each_model_takes_and_gives(
    server_urls: dict[str, str], served_models_dir: Path
) -> None:
    import requests

    registry = ModelRegistry(served_models_dir)
    client = oip.OipClient(server_urls["grpc"])
    for model_id, card in registry.active_cards().items():
        rest = requests.get(f"{server_urls['http']}/v2/models/{model_id}", timeout=10).json()
        assert rest == grpc_metadata(server_urls["grpc"], model_id)
        assert rest["versions"] == [card.version]
        assert rest["platform"] == "pytorch"
        height, width = card.input_size
        [taken] = rest["inputs"]
        assert taken["datatype"] == "UINT8"
        assert taken["shape"] == [-1, height, width, 3]
        # What the metadata says the model gives is what it gives, for two inputs.
        _, answer = client.infer(
            model_id,
            {taken["name"]: np.zeros((2, height, width, 3), np.uint8)},
            tuple(output["name"] for output in rest["outputs"]),
        )
        assert [o["name"] for o in rest["outputs"]] == list(answer)
        for output in rest["outputs"]:
            array = answer[output["name"]]
            assert oip_wire.datatype(array.dtype) == output["datatype"]
            assert len(array.shape) == len(output["shape"])
            assert all(d == -1 or d == n for d, n in zip(output["shape"], array.shape, strict=True))
    counts = requests.get(f"{server_urls['http']}/v2/models/leaf_detector", timeout=10).json()
    assert counts["outputs"][2] == {"name": "counts", "datatype": "INT64", "shape": [-1]}


def test_the_versioned_path_serves_the_active_version_and_names_it_for_another(
    server_urls: dict[str, str],
) -> None:
    import grpc
    import requests
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    http, grpc_url = server_urls["http"], server_urls["grpc"]
    model = f"{http}/v2/models/disease_0_grader"
    unversioned = requests.get(model, timeout=10).json()
    assert requests.get(f"{model}/versions/v1", timeout=10).json() == unversioned
    assert grpc_metadata(grpc_url, "disease_0_grader", "v1") == unversioned
    assert requests.get(f"{model}/versions/v1/ready", timeout=10).json()["ready"] is True
    body, head = oip_wire.rest_request({"crops": np.zeros((1, 48, 48, 3), np.uint8)}, ("index",))
    headers = {"Content-Type": "application/octet-stream", oip_wire.HEADER_LENGTH: str(head)}
    served = requests.post(f"{model}/versions/v1/infer", data=body, headers=headers, timeout=10)
    assert served.status_code == 200
    assert oip_wire.decode_response(served)[0] == oip_wire.Reported("disease_0_grader", "v1")
    request = pb.ModelInferRequest(
        model_name="disease_0_grader",
        model_version="v1",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="crops", datatype="UINT8", shape=[0, 48, 48, 3]
            )
        ],
        raw_input_contents=[b""],
    )
    assert grpc_stub(grpc_url).ModelInfer(request, timeout=10).model_version == "v1"

    expected = "disease_0_grader version v9 is not served: the active version is v1"
    for refused in (
        requests.get(f"{model}/versions/v9", timeout=10),
        requests.post(f"{model}/versions/v9/infer", data=body, headers=headers, timeout=10),
    ):
        assert refused.status_code == 404
        assert refused.json()["error"].startswith(expected)
    request.model_version = "v9"
    for call in (
        lambda: grpc_stub(grpc_url).ModelInfer(request, timeout=10),
        lambda: grpc_metadata(grpc_url, "disease_0_grader", "v9"),
    ):
        with pytest.raises(grpc.RpcError) as refused_call:
            call()
        assert refused_call.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused_call.value.details().startswith(expected)


def test_a_server_started_without_host_listens_on_loopback_only(
    server_urls: dict[str, str],
) -> None:
    ports = [int(url.rsplit(":", 1)[1]) for url in server_urls.values()]
    for port in ports:
        assert listening_addresses(port) == {"127.0.0.1"}
    outward = outward_address()
    if outward is None:
        return
    for port in ports:
        with socket.socket() as sock:
            sock.settimeout(5)
            assert sock.connect_ex((outward, port)) != 0, f"{outward}:{port} answered"


# ---------------------------------------------------------------------------------------
# Through the image pipeline (one Dagster run in this process, a folder bucket, DuckDB)

GRADE_KEY = ["position_id", "leaf_crop_idx", "disease_type"]


@pytest.fixture(scope="module")
def graded_locally(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from farm_platform_dev.farm import grade_simulated_farm
    from farm_platform_dev.simulate import FarmConfig

    config = FarmConfig(positions=3, days=1, seed=21)
    return config, grade_simulated_farm(config, tmp_path_factory.mktemp("farm") / "farm")


def _grades(resources: dict[str, object]) -> Any:
    return resources["warehouse"].query("SELECT * FROM disease_grades").sort(GRADE_KEY)


def test_a_day_graded_through_the_server_equals_the_day_graded_in_the_run(
    graded_locally: Any,
    server_urls: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from farm_platform_dev.farm import copy_farm, materialize_day

    config, graded = graded_locally
    resources = copy_farm(graded, tmp_path)
    resources["inference"] = InferenceResource(mode="oip", oip_url=server_urls["grpc"])
    assert materialize_day(resources, config.dates[0].isoformat())

    served = _grades(resources)
    local = graded.warehouse.query("SELECT * FROM disease_grades").sort(GRADE_KEY)
    assert set(served["dagster_run_id"]).isdisjoint(set(local["dagster_run_id"]))
    assert served.height == local.height > 0
    assert served["predicted_grade"].to_list() == local["predicted_grade"].to_list()
    assert np.allclose(served["confidence"], local["confidence"], rtol=0, atol=1e-6)
    columns = [*GRADE_KEY, "disease_model_id", "disease_model_version"]
    assert served.select(columns).equals(local.select(columns))


@pytest.mark.slow
def test_a_server_that_goes_away_mid_run_fails_the_run_and_the_retry_grades_each_photo_once(
    graded_locally: Any,
    served_models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from farm_platform_dev.farm import copy_farm, materialize_day

    config, graded = graded_locally
    day = config.dates[0].isoformat()
    resources = copy_farm(graded, tmp_path)
    resources["ingest_policy"] = IngestPolicyResource(run_chunk_photos=1)  # three chunks

    def on(server: ModelServerProcess) -> InferenceResource:
        return InferenceResource(mode="oip", oip_url=server.grpc_url, oip_timeout_seconds=2)

    first = ModelServerProcess(served_models_dir, tmp_path / "first.log")
    requests_seen = []
    real_infer = oip.OipClient.infer

    def infer_then_stop_the_server(self: Any, *args: Any, **kwargs: Any) -> Any:
        answer = real_infer(self, *args, **kwargs)
        requests_seen.append(args[0])
        # The version check (6 models) and the first photo (detector + 5 graders) are
        # answered; then the server process is stopped for real, mid-run.
        if len(requests_seen) == 12:
            first.stop()
        return answer

    monkeypatch.setattr(oip.OipClient, "infer", infer_then_stop_the_server)
    with first:
        resources["inference"] = on(first)
        assert not materialize_day(resources, day)
    assert len(requests_seen) == 12

    # The retry (what the requeue sensor starts for a failed run's photos), on a new server.
    monkeypatch.setattr(oip.OipClient, "infer", real_infer)
    with ModelServerProcess(served_models_dir, tmp_path / "second.log") as second:
        resources["inference"] = on(second)
        assert materialize_day(resources, day)

    grades = _grades(resources)
    assert len(set(grades["dagster_run_id"])) == 1  # all from the retry, none left over
    crops = resources["warehouse"].query("SELECT * FROM leaf_crops")
    assert sorted(set(grades["position_id"])) == ["P000", "P001", "P002"]
    assert grades.height == 5 * crops.height
    assert grades.select(GRADE_KEY).is_unique().all()
    local = graded.warehouse.query("SELECT * FROM disease_grades").sort(GRADE_KEY)
    assert grades["predicted_grade"].to_list() == local["predicted_grade"].to_list()
