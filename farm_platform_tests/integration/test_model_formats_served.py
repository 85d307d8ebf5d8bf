"""ONNX and TorchScript cards on the model server (issue 42, part 2): `models serve` serves
them as it serves the shipped cards, and its answers equal the same cards run in process.
A real server process (kserve) over loopback; needs the `serve` extra."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_model_formats import GRADER_ID, SHIPPED
from test_model_formats_pipeline import exported_models_dir

from farm_platform.admin.model_versions import add_model
from farm_platform.layout import ImageKey
from farm_platform.ml import inference
from farm_platform.ml.registry import ModelRegistry
from farm_platform_dev.model_server import ModelServerProcess

pytest.importorskip("kserve")
oip = pytest.importorskip("farm_platform.ml.oip")
oip_runners = pytest.importorskip("farm_platform.ml.oip_runners")


DETECTOR = "x0"  # the ONNX detector's version in exported_models_dir


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models, with an ONNX detector (letterboxed input) and a TorchScript
    grader of another class order active in their place."""
    root = tmp_path_factory.mktemp("served-formats")
    return exported_models_dir(root, {"resize": "letterbox", "pad_value": 114})


@pytest.fixture(scope="module")
def grpc_url(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    # The ONNX detector also served plain, as a team's KServe or Triton would serve it.
    with ModelServerProcess(
        models_dir, log, plain=(f"leaf_detector:{DETECTOR}=leafboxes:3",)
    ) as server:
        yield server.grpc_url


@pytest.mark.slow
def test_the_server_answers_as_the_exported_models_run_here(models_dir, grpc_url):
    simulate = pytest.importorskip("farm_platform_dev.simulate")
    arrays = [inference.decode_png(s.png) for s in simulate.render_training_images(2000, 6)]
    photos = [
        (ImageKey(f"P{i}", dt.date(2024, 5, 1)), photo)
        for i, photo in enumerate([*arrays, arrays[0][:160], arrays[1][:, :200]])
    ]
    registry = ModelRegistry(models_dir)
    client = oip.OipClient(grpc_url)
    detector_card, grader_card = registry.detector(), registry.active_card(GRADER_ID)
    assert (detector_card.format, grader_card.format) == ("onnx", "torchscript")
    oip_runners.check_versions(client, [detector_card, grader_card])
    local_rows, crops = inference.crop_leaves(
        photos, inference.load_detector(detector_card, registry), detector_card, "file:///b"
    )
    served_rows, served_crops = inference.crop_leaves(
        photos, oip_runners.remote_detector(client, detector_card), detector_card, "file:///b"
    )
    assert local_rows.height > 40
    for column in ("x0", "y0", "x1", "y1", "score"):
        np.testing.assert_allclose(served_rows[column], local_rows[column], rtol=0, atol=1e-5)
    assert served_rows["crop_uri"].to_list() == local_rows["crop_uri"].to_list()
    local = inference.grade_crops(
        crops, local_rows, inference.load_grader(grader_card, registry), grader_card
    )
    served = inference.grade_crops(
        served_crops, served_rows, oip_runners.remote_grader(client, grader_card), grader_card, 50
    )
    assert served["predicted_grade"].to_list() == local["predicted_grade"].to_list()
    np.testing.assert_allclose(served["confidence"], local["confidence"], rtol=0, atol=1e-6)
    # And both grade as the shipped grader does, whose class order the export shuffled.
    shipped_card = SHIPPED.active_card(GRADER_ID)
    shipped = inference.grade_crops(
        crops, local_rows, inference.load_grader(shipped_card), shipped_card
    )
    assert local["predicted_grade"].to_list() == shipped["predicted_grade"].to_list()
    assert isinstance(served, pl.DataFrame) and served["disease_model_version"][0] == "x1"


def test_an_external_detector_card_finds_the_leaves_the_onnx_file_finds(
    models_dir, grpc_url, tmp_path
):
    """An external_oip detector card (boxes form, letterbox) naming the ONNX detector served
    plain: registered after its checks, its boxes are those of the ONNX file run here."""
    registry = ModelRegistry(models_dir)
    onnx_card = registry.card("leaf_detector", DETECTOR)
    card = json.loads((models_dir / "leaf_detector" / DETECTOR / "card.json").read_text())
    del card["weights"], card["sha256"]
    server = {"model": "leafboxes", "version": "3", "input": "INPUT__0"}
    card.update(
        version="ext-d",
        format="external_oip",
        server={**server, "url": grpc_url, "outputs": ["OUTPUT__0", "OUTPUT__1"]},
    )
    folder = tmp_path / "ext-d"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps(card))
    added = add_model(folder, registry)
    assert "leaves found per probe photo" in added.check
    simulate = pytest.importorskip("farm_platform_dev.simulate")
    arrays = [inference.decode_png(s.png) for s in simulate.render_training_images(2000, 4)]
    photos = [(ImageKey(f"P{i}", dt.date(2024, 5, 1)), a) for i, a in enumerate(arrays)]
    external = registry.card("leaf_detector", "ext-d")
    local, _ = inference.crop_leaves(
        photos, inference.load_detector(onnx_card, registry), onnx_card, "file:///b"
    )
    remote, _ = inference.crop_leaves(
        photos, inference.load_detector(external, registry), external, "file:///b"
    )
    assert remote.height == local.height > 20
    for column in ("x0", "y0", "x1", "y1", "score"):
        np.testing.assert_allclose(remote[column], local[column], rtol=0, atol=1e-5)
    assert set(remote["cropper_model_version"]) == {"ext-d"}
