"""What the model tests share (test_models_*.py): the shipped models' ids, the contract
columns of crops and grades, and models/evaluate.py's modules.
"""

from __future__ import annotations

import sys

import polars as pl

from farm_platform.config import REPO_MODELS_DIR
from farm_platform.ml.registry import DISEASE_TYPES

MODEL_IDS = ("leaf_detector", *(f"{d}_grader" for d in DISEASE_TYPES))
LEAF_CROPS_COLUMNS = [
    ("position_id", pl.String),
    ("date", pl.Date),
    ("leaf_crop_idx", pl.Int64),
    ("x0", pl.Float64),
    ("y0", pl.Float64),
    ("x1", pl.Float64),
    ("y1", pl.Float64),
    ("score", pl.Float64),
    ("crop_uri", pl.String),
    ("cropper_model_id", pl.String),
    ("cropper_model_version", pl.String),
]
GRADES_COLUMNS = [
    ("position_id", pl.String),
    ("date", pl.Date),
    ("leaf_crop_idx", pl.Int64),
    ("disease_type", pl.String),
    ("predicted_grade", pl.Int64),
    ("cropper_model_id", pl.String),
    ("cropper_model_version", pl.String),
    ("disease_model_id", pl.String),
    ("disease_model_version", pl.String),
    ("confidence", pl.Float64),
]


def evaluate_module():
    """The modules of models/evaluate.py (the photos, the figures, the records) as one
    namespace: scripts beside the models that import each other, not a package."""
    import importlib
    import types

    if str(REPO_MODELS_DIR) not in sys.path:
        sys.path.insert(0, str(REPO_MODELS_DIR))
    names: dict = {}
    for module in ("eval_photos", "eval_metrics", "eval_records"):
        names.update(vars(importlib.import_module(module)))
    return types.SimpleNamespace(**names)
