"""The model server (`farm-platform models serve`, kserve) and its client, for real: one
server process per module on free ports, the shipped weights, the Open Inference Protocol
over loopback. Needs the `serve` extra; skipped without it."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import copy_repo_models

from farm_platform import config
from farm_platform.admin.configured import configured_registry
from farm_platform.config import REPO_ROOT
from farm_platform.layout import ImageKey
from farm_platform.ml import oip_wire
from farm_platform.ml.registry import DISEASE_TYPES, ModelRegistry
from farm_platform.resources.inference import InferenceResource
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform_dev.model_server import ModelServerProcess
from farm_platform_dev.processes import free_port, kill_now, listening_addresses

pytest.importorskip("kserve")
inference = pytest.importorskip("farm_platform.ml.inference")
oip = pytest.importorskip("farm_platform.ml.oip")
oip_runners = pytest.importorskip("farm_platform.ml.oip_runners")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models plus a v2 of disease_2_grader (same weights), inactive."""
    target = copy_repo_models(tmp_path_factory.mktemp("served") / "models")
    v2 = target / "disease_2_grader" / "v2"
    shutil.copytree(target / "disease_2_grader" / "v1", v2)
    card = json.loads((v2 / "card.json").read_text())
    (v2 / "card.json").write_text(json.dumps({**card, "version": "v2"}))
    return target


@pytest.fixture(scope="module")
def server_urls(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ModelServerProcess(models_dir, log) as server:
        yield {"http": server.http_url, "grpc": server.grpc_url}


@pytest.fixture(scope="module")
def server(server_urls: dict[str, str]) -> str:
    """The REST address: health, model list, reload."""
    return server_urls["http"]


@pytest.fixture(scope="module")
def photos() -> list[tuple[ImageKey, np.ndarray]]:
    simulate = pytest.importorskip("farm_platform_dev.simulate")
    # The held-out seed of test_models.py: leaves from none to crowded.
    return [
        (ImageKey(f"P{i:03d}", dt.date(2024, 5, 1)), inference.decode_png(sim.png))
        for i, sim in enumerate(simulate.render_training_images(2000, 12))
    ]


def test_server_lists_every_active_model(server: str, models_dir: Path) -> None:
    import requests

    listed = requests.get(f"{server}/v2/models", timeout=10).json()["models"]
    assert sorted(listed) == sorted(ModelRegistry(models_dir).active_versions())


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_server_results_equal_local_inference(
    transport: str,
    server_urls: dict[str, str],
    models_dir: Path,
    photos: list[tuple[ImageKey, np.ndarray]],
) -> None:
    registry = ModelRegistry(models_dir)
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
    server: str, server_urls: dict[str, str], models_dir: Path
) -> None:
    registry = ModelRegistry(models_dir)
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

        assert main(["models", "--models-dir", str(models_dir), "reload", "--url", server]) == 0
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
    transport: str, server_urls: dict[str, str], models_dir: Path
) -> None:
    registry = ModelRegistry(models_dir)
    client = oip.OipClient(server_urls[transport])
    weights = models_dir / "disease_2_grader" / "v2" / "weights.pt"
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


def test_the_registry_watch_follows_a_new_active_version(models_dir: Path) -> None:
    from farm_platform.ml import serving

    registry = ModelRegistry(models_dir)
    repository = serving.RegistryRepository(registry)
    for model in serving.registry_models(registry):
        repository.update(model)
    watch = serving.RegistryWatch(repository, interval_seconds=60)
    grader = repository.get_model("disease_2_grader")
    weights = models_dir / "disease_2_grader" / "v2" / "weights.pt"
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


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_unreachable_server_fails_the_run_in_one_line(scheme: str) -> None:
    from farm_platform.grading.chunks import GradingPlan, _models

    registry = configured_registry()
    unreachable = InferenceResource(
        mode="oip", oip_url=f"{scheme}://127.0.0.1:{free_port()}", oip_timeout_seconds=1
    )
    plan = GradingPlan(
        date=dt.date(2024, 5, 1),
        positions=("P000",),
        record_images=True,
        detect=True,
        detector_card=registry.detector(),
        grader_cards=(registry.grader_for("disease_0"),),
        run_id="r",
        chunk_photos=8,
        inference=unreachable.settings(),
    )
    with pytest.raises(oip.OipUnavailable) as failure:
        _models(plan, registry)
    message = str(failure.value)
    assert "\n" not in message
    assert f"unreachable after {config.OIP_ATTEMPTS} tries" in message


def test_inference_setting_is_checked() -> None:
    with pytest.raises(config.ConfigError, match="FARM_INFERENCE='remote'"):
        InferenceResource(mode="remote").settings()
    with pytest.raises(config.ConfigError, match="FARM_OIP_URL is not set"):
        InferenceResource(mode="oip").settings()
    served = InferenceResource(mode="oip", oip_url="grpc://h:1/", oip_token="t").settings()
    assert (served.oip_url, served.oip_token) == ("grpc://h:1", "t")
    assert served.where() == "on the model server grpc://h:1"


def test_grpc_without_the_serve_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    # As if kserve were not installed: the import of its protocol stubs fails.
    monkeypatch.setitem(sys.modules, "kserve.protocol.grpc", None)
    client = oip.OipClient(f"grpc://127.0.0.1:{free_port()}")
    with pytest.raises(oip.OipError, match=r"serve extra \(pip install '.\[serve\]'\)"):
        client.infer("leaf_detector", {"images": np.zeros((0, 256, 256, 3), np.uint8)}, ())


# ---------------------------------------------------------------------------------------
# The protocol's metadata, versioned paths, the listening address


def _grpc_stub(url: str) -> Any:
    import grpc
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    return GRPCInferenceServiceStub(grpc.insecure_channel(url.removeprefix("grpc://")))


def _grpc_metadata(url: str, model_id: str, version: str = "") -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    answer = _grpc_stub(url).ModelMetadata(pb.ModelMetadataRequest(name=model_id, version=version))
    metadata = MessageToDict(answer, preserving_proto_field_name=True)
    # proto3 JSON writes int64 as strings
    for tensor in (*metadata["inputs"], *metadata["outputs"]):
        tensor["shape"] = [int(n) for n in tensor["shape"]]
    return metadata


def test_metadata_names_the_active_version_and_the_tensors_each_model_takes_and_gives(
    server_urls: dict[str, str], models_dir: Path
) -> None:
    import requests

    registry = ModelRegistry(models_dir)
    client = oip.OipClient(server_urls["grpc"])
    for model_id, card in registry.active_cards().items():
        rest = requests.get(f"{server_urls['http']}/v2/models/{model_id}", timeout=10).json()
        assert rest == _grpc_metadata(server_urls["grpc"], model_id)
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
    assert _grpc_metadata(grpc_url, "disease_0_grader", "v1") == unversioned
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
    assert _grpc_stub(grpc_url).ModelInfer(request, timeout=10).model_version == "v1"

    expected = "disease_0_grader version v9 is not served: the active version is v1"
    for refused in (
        requests.get(f"{model}/versions/v9", timeout=10),
        requests.post(f"{model}/versions/v9/infer", data=body, headers=headers, timeout=10),
    ):
        assert refused.status_code == 404
        assert refused.json()["error"].startswith(expected)
    request.model_version = "v9"
    for call in (
        lambda: _grpc_stub(grpc_url).ModelInfer(request, timeout=10),
        lambda: _grpc_metadata(grpc_url, "disease_0_grader", "v9"),
    ):
        with pytest.raises(grpc.RpcError) as refused_call:
            call()
        assert refused_call.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused_call.value.details().startswith(expected)


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_a_server_started_without_host_listens_on_loopback_only(
    server_urls: dict[str, str],
) -> None:
    ports = [int(url.rsplit(":", 1)[1]) for url in server_urls.values()]
    for port in ports:
        assert listening_addresses(port) == {"127.0.0.1"}
    outward = _outward_address()
    if outward is None:
        return
    for port in ports:
        with socket.socket() as sock:
            sock.settimeout(5)
            assert sock.connect_ex((outward, port)) != 0, f"{outward}:{port} answered"


def test_the_kubernetes_manifest_listens_on_the_pods_address() -> None:
    import yaml

    manifest = yaml.safe_load((REPO_ROOT / "deploy/kserve/inference-service.yaml").read_text())
    [container] = manifest["spec"]["predictor"]["containers"]
    command = [*container["command"], *container.get("args", [])]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    [token] = [e for e in container["env"] if e["name"] == config.FARM_OIP_TOKEN]
    assert "secretKeyRef" in token["valueFrom"]


# ---------------------------------------------------------------------------------------
# Two replicas that require a token

TOKEN = secrets.token_hex(16)


@pytest.fixture(scope="module")
def replicas(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ModelServerProcess]]:
    logs = tmp_path_factory.mktemp("replicas")
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(ModelServerProcess(models_dir, logs / f"{n}.log", token=TOKEN))
            for n in "ab"
        ]


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_server_with_a_token_serves_only_requests_that_carry_it(
    transport: str, replicas: list[ModelServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = replicas[0]
    url = server.grpc_url if transport == "grpc" else server.http_url
    crops = {"crops": np.zeros((1, 48, 48, 3), np.uint8)}
    refused = "UNAUTHENTICATED" if transport == "grpc" else "HTTP 401"
    for token, reason in ((None, "no bearer token"), ("not-" + TOKEN, "wrong bearer token")):
        client = oip.OipClient(url, token=token)
        with pytest.raises(oip.OipError, match=f"{refused}: {reason}") as failure:
            client.infer("disease_0_grader", crops, oip_runners.GRADER_OUTPUTS)
        assert "\n" not in str(failure.value)
    monkeypatch.setenv(config.FARM_OIP_URL, url)
    monkeypatch.setenv(config.FARM_OIP_TOKEN, TOKEN)
    monkeypatch.setenv(config.FARM_INFERENCE, "oip")
    settings = InferenceResource.from_environment().settings()
    client = oip.OipClient.from_settings(settings)
    reported, _ = client.infer("disease_0_grader", crops, oip_runners.GRADER_OUTPUTS)
    assert reported == oip_wire.Reported("disease_0_grader", "v1")


def test_a_server_with_a_token_answers_health_checks_without_it(
    replicas: list[ModelServerProcess],
) -> None:
    import grpc
    import requests
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    server = replicas[0]
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert requests.get(server.http_url + path, timeout=10).status_code == 200
    assert requests.get(server.http_url + "/v2/models", timeout=10).status_code == 401
    stub = _grpc_stub(server.grpc_url)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="leaf_detector"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _kill_on_arrival(server: ModelServerProcess, calls_seen: int) -> threading.Thread:
    """SIGKILL `server` as soon as its log shows one more ModelInfer call than
    `calls_seen`: while it computes the answer (kserve logs each call as it starts)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while server.log_path.read_text().count("ModelInfer") <= calls_seen:
            assert time.monotonic() < deadline, "the request never reached the replica"
            time.sleep(0.002)
        kill_now([server.pid])

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher


def test_an_empty_batch_neither_waits_for_nor_holds_the_emulated_accelerator() -> None:
    """A run's version check sends every replica an empty batch of each model. Held like a
    real batch, it cost scale_out.py's runs 6 models x k replicas x the batch time each,
    queued behind the other runs' batches: a run's time grew with k."""
    from farm_platform.ml.serving import EmulatedAccelerator

    accelerator = EmulatedAccelerator(batch_seconds=0.01)
    holding, release, entered = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with accelerator.batch(32):
            holding.set()
            release.wait(60)

    def another_batch() -> None:
        with accelerator.batch(1):
            entered.set()

    holder, waiter = threading.Thread(target=hold), threading.Thread(target=another_batch)
    holder.start()
    try:
        assert holding.wait(60)
        with accelerator.batch(0):
            assert not release.is_set()  # in and out while a real batch holds it
        waiter.start()
        assert not entered.wait(0.5), "a real batch must wait for the accelerator"
    finally:
        release.set()
        holder.join(60)
        if waiter.is_alive():
            waiter.join(60)
    assert entered.is_set()


def test_clients_made_together_start_their_rotations_at_different_replicas() -> None:
    """Every run makes its own client. When each rotation began at the first replica, runs
    started together asked the same replica at the same moment, request after request, and
    queued on it while the others idled (benchmarks/scale_out.py, 1 s batches: efficiency
    0.34 at k = 4 with the cores 60 % idle)."""
    urls = [f"grpc://127.0.0.1:{port}" for port in range(9001, 9005)]
    firsts = [oip.OipClient(",".join(urls))._rotation()[0] for _ in range(64)]
    # Random starts: missing a replica in 64 clients has a chance of 4 * (3/4)**64 < 1e-7.
    assert set(firsts) == set(urls)
    pinned = oip.OipClient(",".join(urls), first_replica=2)
    assert [pinned._rotation()[0] for _ in range(3)] == [urls[2], urls[3], urls[0]]


def test_requests_spread_over_the_replicas_and_survive_one_killed_mid_batch(
    replicas: list[ModelServerProcess], models_dir: Path
) -> None:
    registry = ModelRegistry(models_dir)
    card, detector_card = registry.grader_for("disease_1"), registry.detector()
    grader = inference.load_grader(card, registry)
    a, b = (server.grpc_url for server in replicas)
    client = oip.OipClient(f"{a},{b}", timeout=10, token=TOKEN, first_replica=0)

    client.reload(card.id)  # on every replica
    assert client.answered == {a: 1, b: 1}
    oip_runners.check_versions(client, list(registry.active_cards().values()))
    assert client.answered == {a: 7, b: 7}  # every replica was asked about every model

    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (16, 8, 48, 48, 3), dtype=np.uint8)
    for n, crops in enumerate(batch):
        if n == 9:
            assert client.answered == {a: 7 + 5, b: 7 + 4}
            assert replicas[1].log_path.read_text().count("ModelInfer") == 6 + 4
            # The next request (b's turn) kills b mid-computation; a answers it instead.
            photos = rng.integers(0, 256, (36, 256, 256, 3), dtype=np.uint8)
            killer = _kill_on_arrival(replicas[1], 6 + 4)
            served_boxes = oip_runners.remote_detector(client, detector_card).run(photos)
            killer.join()
            local = inference.load_detector(detector_card, registry)
            # In the server's batches of 32, so that the float sums run in the same order.
            local_boxes = [*inference.run_detector(local, photos[:32])]
            local_boxes += inference.run_detector(local, photos[32:])
            for (boxes, scores), (want_boxes, want_scores) in zip(
                served_boxes, local_boxes, strict=True
            ):
                assert np.array_equal(boxes, want_boxes) and np.array_equal(scores, want_scores)
            assert client.answered == {a: 7 + 5 + 1, b: 7 + 4}  # b never answered it
        _, served = client.infer(card.id, {"crops": crops}, oip_runners.GRADER_OUTPUTS)
        index, confidence = inference.run_grader(grader, inference.to_tensor(crops))
        assert np.array_equal(served["index"], index)
        assert np.allclose(served["confidence"], confidence, rtol=0, atol=1e-6)
    assert client.answered == {a: 7 + 5 + 1 + 7, b: 7 + 4}
    # b's own log: its share, then the request it was killed in
    assert replicas[1].log_path.read_text().count("ModelInfer") == 6 + 4 + 1

    # The version check passes on the replica it can still reach.
    oip_runners.check_versions(client, [card])


def test_replicas_all_unreachable_fail_in_one_line_naming_them() -> None:
    urls = [f"grpc://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    client = oip.OipClient(",".join(urls), timeout=1)
    registry = configured_registry()
    for attempt in (
        lambda: client.infer("disease_0_grader", {"crops": np.zeros((0, 48, 48, 3), np.uint8)}, ()),
        lambda: oip_runners.check_versions(client, [registry.grader_for("disease_0")]),
    ):
        with pytest.raises(oip.OipUnavailable) as failure:
            attempt()
        message = str(failure.value)
        assert "\n" not in message
        assert message.startswith(f"model servers {urls[0]}, {urls[1]} unreachable after 3 tries")
        # The time the tries took, and the timeout as a limit, not as what each try took.
        assert re.search(r"after 3 tries in [0-9]+\.[0-9] s \(", message), message
        assert "a try waits up to 1 s" in message and "s each" not in message


def test_a_list_of_server_addresses_is_checked_one_by_one() -> None:
    from farm_platform.config_values import oip_url

    assert oip_url(" grpc://127.0.0.1:1/, http://127.0.0.1:2") == (
        "grpc://127.0.0.1:1,http://127.0.0.1:2"
    )
    with pytest.raises(config.ConfigError, match="'127.0.0.1:2' must start with grpc://"):
        oip_url("grpc://127.0.0.1:1,127.0.0.1:2")


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
    models_dir: Path,
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

    first = ModelServerProcess(models_dir, tmp_path / "first.log")
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
    with ModelServerProcess(models_dir, tmp_path / "second.log") as second:
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
