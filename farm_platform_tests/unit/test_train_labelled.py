"""`models/train.py --coco --grades` (issue 42, part 5): the project's architectures trained
on a team's labelled data, here a small set exported from the evaluation renderer family
(`export-heldout`), briefly; the version folders are what `models add` registers."""

from __future__ import annotations

import collections
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_repo_models
from test_model_formats import _register

from farm_platform.config import REPO_MODELS_DIR
from farm_platform.ml.datasets import dataset_sha256, open_dataset
from farm_platform_dev.heldout_export import export_heldout

TRAIN = REPO_MODELS_DIR / "train.py"
BRIEF = ["--version", "t1", "--detector-epochs", "1", "--grader-epochs", "1", "--threads", "1"]


def train(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TRAIN), *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 photos at 128 and 256 px of the evaluation renderer: COCO leaves and a grade CSV."""
    out = tmp_path_factory.mktemp("labelled") / "data"
    export_heldout(out, "eval", count=4, sizes=(128, 256), seed=123)
    return out


@pytest.mark.slow
def test_trained_on_coco_and_grade_csv_the_folders_register(labelled, tmp_path):
    coco, grades = labelled / "leaves" / "annotations.json", labelled / "grades" / "grades.csv"
    done = train("--coco", coco, "--grades", grades, "--out", tmp_path / "out", *BRIEF)
    assert done.returncode == 0, done.stderr
    models_dir = copy_repo_models(tmp_path / "models")
    printed, detector = _register(models_dir, tmp_path / "out" / "leaf_detector" / "t1")
    assert "registered leaf_detector t1" in printed
    assert detector.training["dataset"] == {
        "path": str(coco),
        "sha256": dataset_sha256(open_dataset(coco)),
    }
    # Every leaf of the COCO file, of photos of both sizes, is a training box.
    leaves = len(json.loads(coco.read_text())["annotations"])
    assert f"detector: 8 photos, {leaves} leaves" in done.stdout
    # One grader per disease of the CSV, each on that disease's rows and grades.
    with open(grades, newline="") as handle:
        per_disease = collections.defaultdict(collections.Counter)
        for row in csv.DictReader(handle):
            per_disease[row["disease"]][int(row["grade"])] += 1
    assert sorted(per_disease) == [f"disease_{k}" for k in range(5)]
    for disease, counts in per_disease.items():
        card = json.loads((tmp_path / "out" / f"{disease}_grader" / "t1" / "card.json").read_text())
        assert card["training"]["crops"] == sum(counts.values())
        assert card["training"]["grade_counts"] == [counts[g] for g in range(4)]
    printed, grader = _register(models_dir, tmp_path / "out" / "disease_3_grader" / "t1")
    assert "registered disease_3_grader t1" in printed
    assert grader.disease_type == "disease_3" and grader.grades == (0, 1, 2, 3)


@pytest.mark.slow
def test_grade_folders_by_disease_name_train_that_diseases_grader(labelled, tmp_path):
    """ROOT/<readable disease name>/<grade>/ trains that disease's grader alone."""
    root = tmp_path / "folders"
    with open(labelled / "grades" / "grades.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["disease"] == "disease_2":
                folder = root / "powdery mildew" / row["grade"]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / Path(row["path"]).name).symlink_to(labelled / "grades" / row["path"])
    done = train("--grades", root, "--out", tmp_path / "out", *BRIEF)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["disease_2_grader"]


def _grade_folder(root: Path, *parts: str) -> Path:
    image = next((REPO_MODELS_DIR / "datasets" / "eval_heldout" / "grades").rglob("*.png"))
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True)
    (folder / "a.png").symlink_to(image)
    return root


@pytest.mark.parametrize(
    "parts, out, expected",
    [
        (("1",), True, "to train, put the crops in ROOT/<disease>/<grade>/"),
        (("disease_0", "1"), False, "give --out DIR"),
        (("disease_0", "4"), True, "has grade 4; the project's graders grade [0, 1, 2, 3]"),
        (("blight", "1"), True, "disease 'blight' is none of disease_0"),
    ],
    ids=["no_disease_level", "no_out", "grade_4", "unknown_disease"],
)
def test_labelled_data_it_cannot_train_on_is_refused_in_one_line(parts, out, expected, tmp_path):
    root = _grade_folder(tmp_path / "grades", *parts)
    done = train("--grades", root, *(["--out", tmp_path / "out"] if out else []), *BRIEF)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert expected in done.stderr
    assert not (tmp_path / "out").exists()
