"""The model server (`farm-platform models serve`, kserve) and its client, for real: one
server process per module on free ports, the shipped weights, the Open Inference Protocol
over loopback. Needs the `serve` extra; skipped without it."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from farm_platform import config
from farm_platform import config as config_module
from farm_platform.config import REPO_MODELS_DIR
from farm_platform.dev.model_server import ModelServerProcess
from farm_platform.dev.processes import free_port
from farm_platform.layout import ImageKey
from farm_platform.ml.registry import DISEASE_TYPES, ModelRegistry

pytest.importorskip("kserve")
inference = pytest.importorskip("farm_platform.ml.inference")
oip = pytest.importorskip("farm_platform.ml.oip")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models plus a v2 of disease_2_grader (same weights), inactive."""
    target = tmp_path_factory.mktemp("served") / "models"
    shutil.copytree(REPO_MODELS_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
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
    simulate = pytest.importorskip("farm_platform.dev.simulate")
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
        photos, oip.remote_detector(client, detector_card), detector_card, "file:///b"
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
            prepared, local_rows, oip.remote_grader(client, card), card, batch_size=50
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
            oip.check_versions(client, [card])
        grader = oip.remote_grader(grpc_client, card)
        with pytest.raises(oip.OipVersionMismatch):
            grader.run(inference.prepare_crops([np.zeros((9, 9, 3), np.uint8)], (48, 48)))

        # The reload call: the new active version is served without a restart.
        from farm_platform.cli import main

        assert main(["models", "--models-dir", str(models_dir), "reload", "--url", server]) == 0
        for transport in (client, grpc_client):
            oip.check_versions(transport, list(registry.active_cards().values()))
        reported, _ = client.infer(
            card.id, {"crops": np.zeros((1, 48, 48, 3), np.uint8)}, oip.GRADER_OUTPUTS
        )
        assert reported == oip.Reported("disease_2_grader", "v2")
    finally:
        registry.set_active("disease_2_grader", "v1")
        client.reload("disease_2_grader")


def test_reload_keeps_serving_the_old_version_when_the_new_weights_are_corrupt(
    server: str, models_dir: Path
) -> None:
    registry = ModelRegistry(models_dir)
    client = oip.OipClient(server)
    weights = models_dir / "disease_2_grader" / "v2" / "weights.pt"
    original = weights.read_bytes()
    registry.set_active("disease_2_grader", "v2")
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        with pytest.raises(oip.OipError, match="sha256"):
            client.reload("disease_2_grader")
        reported, _ = client.infer(
            "disease_2_grader", {"crops": np.zeros((1, 48, 48, 3), np.uint8)}, oip.GRADER_OUTPUTS
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
            "disease_0_grader", {"crops": np.zeros((1, 8, 8, 3), np.uint8)}, oip.GRADER_OUTPUTS
        )


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_unreachable_server_fails_the_run_in_one_line(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from farm_platform.images.grading import GradingPlan, _models

    registry = ModelRegistry()
    monkeypatch.setenv(config.FARM_INFERENCE, "oip")
    monkeypatch.setenv(config.FARM_OIP_URL, f"{scheme}://127.0.0.1:{free_port()}")
    monkeypatch.setenv(config.FARM_OIP_TIMEOUT_SECONDS, "1")
    plan = GradingPlan(
        date=dt.date(2024, 5, 1),
        positions=("P000",),
        record_images=True,
        detect=True,
        detector_card=registry.detector(),
        grader_cards=(registry.grader_for("disease_0"),),
        run_id="r",
        chunk_photos=8,
    )
    with pytest.raises(oip.OipUnavailable) as failure:
        _models(plan, registry)
    message = str(failure.value)
    assert "\n" not in message
    assert f"unreachable after {config.OIP_ATTEMPTS} tries" in message


def test_inference_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.FARM_INFERENCE, "remote")
    with pytest.raises(config.ConfigError, match="FARM_INFERENCE='remote'"):
        config.inference_mode()
    monkeypatch.setenv(config.FARM_INFERENCE, "oip")
    monkeypatch.delenv(config.FARM_OIP_URL, raising=False)
    with pytest.raises(config.ConfigError, match="FARM_OIP_URL is not set"):
        config.oip_url()


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
# Through the image pipeline (one Dagster run in this process, a folder bucket, DuckDB)

GRADE_KEY = ["position_id", "leaf_crop_idx", "disease_type"]


@pytest.fixture(scope="module")
def graded_locally(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from farm_platform.dev.farm import grade_simulated_farm
    from farm_platform.dev.simulate import FarmConfig

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
    from farm_platform.dev.farm import copy_farm, materialize_day

    config, graded = graded_locally
    resources = copy_farm(graded, tmp_path)
    monkeypatch.setenv(config_module.FARM_INFERENCE, "oip")
    monkeypatch.setenv(config_module.FARM_OIP_URL, server_urls["grpc"])
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
    from farm_platform.dev.farm import copy_farm, materialize_day

    config, graded = graded_locally
    day = config.dates[0].isoformat()
    resources = copy_farm(graded, tmp_path)
    monkeypatch.setenv(config_module.FARM_INFERENCE, "oip")
    monkeypatch.setenv(config_module.FARM_OIP_TIMEOUT_SECONDS, "2")
    monkeypatch.setenv(config_module.FARM_RUN_CHUNK_PHOTOS, "1")  # three chunks

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
        monkeypatch.setenv(config_module.FARM_OIP_URL, first.grpc_url)
        assert not materialize_day(resources, day)
    assert len(requests_seen) == 12

    # The retry (what the requeue sensor starts for a failed run's photos), on a new server.
    monkeypatch.setattr(oip.OipClient, "infer", real_infer)
    with ModelServerProcess(models_dir, tmp_path / "second.log") as second:
        monkeypatch.setenv(config_module.FARM_OIP_URL, second.grpc_url)
        assert materialize_day(resources, day)

    grades = _grades(resources)
    assert len(set(grades["dagster_run_id"])) == 1  # all from the retry, none left over
    crops = resources["warehouse"].query("SELECT * FROM leaf_crops")
    assert sorted(set(grades["position_id"])) == ["P000", "P001", "P002"]
    assert grades.height == 5 * crops.height
    assert grades.select(GRADE_KEY).is_unique().all()
    local = graded.warehouse.query("SELECT * FROM disease_grades").sort(GRADE_KEY)
    assert grades["predicted_grade"].to_list() == local["predicted_grade"].to_list()
