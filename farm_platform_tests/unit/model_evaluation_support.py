"""What the evaluation tests share (test_model_evaluation*.py): the models they evaluate, the
shipped held-out datasets, the `models` command, and datasets and versions made for a test.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from farm_platform import cli
from farm_platform.admin.evaluation import (
    EVALUATIONS_FILE,
)
from farm_platform.config import REPO_MODELS_DIR

DETECTOR = "leaf_detector"
GRADER = "disease_3_grader"
SHIPPED = REPO_MODELS_DIR / "datasets" / "eval_heldout"


def models(models_dir: Path, *args: str) -> int:
    return cli.main(["models", "--models-dir", str(models_dir), *args])


def one_leaf_coco(tmp_path: Path, boxes: list[list[float]]) -> Path:
    """A COCO file of one 40x40 photo per box, one leaf each, `photo_size` alternating."""
    images, annotations = [], []
    for i, box in enumerate(boxes, start=1):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 40, "height": 40})
        images[-1]["photo_size"] = 40 if i % 2 else 80
        annotations.append({"image_id": i, "category_id": 7, "bbox": box})
    path = tmp_path / "leaves.json"
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "x"}]}
    path.write_text(json.dumps(coco))
    return path


def grade_files(tmp_path: Path, disease: str = "disease_3") -> list[dict[str, str]]:
    """The shipped grade CSV's rows of one disease, and its crops, copied."""
    shutil.copytree(SHIPPED / "grades", tmp_path / "grades")
    with open(tmp_path / "grades" / "grades.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["disease"] == disease]


def new_version(models_dir: Path, model_id: str, version: str, weights_of: str) -> Path:
    """A registered version `version` of `model_id` with the weights of `weights_of`."""
    folder = models_dir / model_id / version
    shutil.copytree(models_dir / model_id / weights_of, folder)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**card, "version": version}))
    (folder / EVALUATIONS_FILE).unlink(missing_ok=True)
    return folder
