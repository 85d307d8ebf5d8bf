"""A day graded by the real image assets (Dagster `materialize`, folder bucket, DuckDB)
with an ONNX detector and a TorchScript grader of another class order active: the rows
equal the shipped models' and carry the exported versions (issue 42, part 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_repo_models
from test_model_formats import (
    GRADER_ID,
    SHIPPED,
    BoxesDetector,
    PermutedGrader,
    version_folder,
)

from farm_platform.admin.model_versions import add_model
from farm_platform.ml import inference
from farm_platform.ml.registry import ModelRegistry
from farm_platform_dev.farm import grade_simulated_farm
from farm_platform_dev.model_export import export_model
from farm_platform_dev.simulate import FarmConfig

CONFIG = FarmConfig(positions=8, days=1, seed=42)


def exported_models_dir(root: Path, detector_input: dict) -> Path:
    """The shipped models with, active in their place, the shipped detector exported to
    ONNX (version x0, its input as `detector_input` says) and the disease_0 grader to
    TorchScript with its classes in another order (x1)."""
    target = copy_repo_models(root / "models")
    registry = ModelRegistry(target)
    detector = BoxesDetector(inference.load_detector(SHIPPED.detector()))
    weights = export_model(
        detector, torch.rand(2, 3, 256, 256), root / "d.onnx", "onnx", outputs=["boxes", "scores"]
    )
    output = {"form": "boxes", "score_threshold": 0.3}
    folder = version_folder(
        root / "in", "leaf_detector", weights, format="onnx", input=detector_input, output=output
    )
    add_model(folder, registry, activate=True)
    perm = [3, 1, 0, 2]
    grader = PermutedGrader(inference.load_grader(SHIPPED.active_card(GRADER_ID)), perm)
    weights = export_model(grader, torch.rand(2, 3, 48, 48), root / "g.pt", "torchscript")
    output = {"form": "logits", "label_map": perm}
    folder = version_folder(
        root / "in", GRADER_ID, weights, format="torchscript", input={}, output=output
    )
    add_model(folder, registry, activate=True)
    return target


CROPS = "SELECT * FROM leaf_crops ORDER BY position_id, leaf_crop_idx"
GRADES = (
    "SELECT * FROM disease_grades WHERE disease_type = 'disease_0' "
    "ORDER BY position_id, leaf_crop_idx"
)


@pytest.mark.slow
def test_a_day_graded_by_exported_models_equals_the_shipped_models_day(tmp_path):
    models_dir = exported_models_dir(tmp_path, {})
    shipped = grade_simulated_farm(CONFIG, tmp_path / "shipped").warehouse
    exported = grade_simulated_farm(CONFIG, tmp_path / "exported", models_dir=models_dir).warehouse
    crops, expected_crops = exported.query(CROPS), shipped.query(CROPS)
    assert crops.height == expected_crops.height > 40
    for column in ("x0", "y0", "x1", "y1", "score"):
        np.testing.assert_allclose(crops[column], expected_crops[column], rtol=0, atol=1e-3)
    assert set(crops["cropper_model_version"]) == {"x0"}
    grades, expected_grades = exported.query(GRADES), shipped.query(GRADES)
    assert grades["predicted_grade"].to_list() == expected_grades["predicted_grade"].to_list()
    np.testing.assert_allclose(grades["confidence"], expected_grades["confidence"], atol=1e-5)
    versions = grades.select("disease_model_version", "cropper_model_version").unique().rows()
    assert versions == [("x1", "x0")]
