"""`farm-platform models evaluate` on COCO detection JSON, grade CSVs and grade folders, and the
registered evaluation datasets (sha256) (issue 42, part 3).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_repo_models
from model_evaluation_support import (
    DETECTOR,
    GRADER,
    SHIPPED,
    grade_files,
    models,
    new_version,
    one_leaf_coco,
)

from farm_platform import cli
from farm_platform.admin.configured import configured_registry
from farm_platform.admin.evaluation import (
    read_evaluations,
    registered_datasets,
)
from farm_platform.ml.datasets import DatasetError, dataset_sha256, open_dataset, read_coco
from farm_platform.ml.evaluation import coco_detector_metrics, grade_metrics
from farm_platform.ml.registry import ModelRegistry

# --------------------------------------------------------------------------- metrics


def test_coco_metrics_hand_computed(tmp_path):
    dataset = read_coco(one_leaf_coco(tmp_path, [[0, 0, 10, 10], [20, 20, 10, 10]]))
    exact = {1: [(0, 0, 10, 10, 0.9)], 2: [(20, 20, 30, 30, 0.8)]}
    figures = coco_detector_metrics(dataset, exact)
    assert (figures["ap"], figures["ap50"], figures["f1"], figures["abs_count_error"]) == (
        1.0,
        1.0,
        1.0,
        0.0,
    )
    # Shifted 2 px: IoU 80/120 = 0.667, a match at IoU 0.50, 0.55, 0.60, 0.65 (4 of the 10
    # thresholds): AP 0.4, AP50 and F1 at 0.5 still 1.
    shifted = {1: [(2, 0, 12, 10, 0.9)], 2: [(22, 20, 32, 30, 0.8)]}
    figures = coco_detector_metrics(dataset, shifted)
    assert (figures["ap"], figures["ap50"], figures["f1"]) == (0.4, 1.0, 1.0)
    # Shifted 5 px: IoU 50/150 = 0.333, no match anywhere; a leaf missed and a false box.
    figures = coco_detector_metrics(dataset, {1: [(5, 0, 15, 10, 0.9)], 2: []})
    assert (figures["ap"], figures["ap50"], figures["f1"]) == (0.0, 0.0, 0.0)
    assert (figures["count_error"], figures["abs_count_error"]) == (-0.5, 0.5)
    # One of two leaves found: recall 0.5 at precision 1 is 51 of COCO's 101 recall points.
    figures = coco_detector_metrics(dataset, {1: exact[1]})
    assert (figures["ap50"], figures["f1"]) == (round(51 / 101, 4), round(2 / 3, 4))


def test_ground_truth_of_the_exported_set_scores_one_and_shifted_boxes_less():
    dataset = read_coco(SHIPPED / "leaves" / "annotations.json")
    truth: dict[int, list] = {}
    moved: dict[int, list] = {}
    for a in dataset.coco["annotations"]:
        x, y, w, h = a["bbox"]
        truth.setdefault(a["image_id"], []).append((x, y, x + w, y + h, 1.0))
        moved.setdefault(a["image_id"], []).append((x + w / 4, y, x + w * 1.25, y + h, 1.0))
    perfect = coco_detector_metrics(dataset, truth)
    assert perfect["ap"] == perfect["ap50"] == perfect["f1"] == 1.0
    assert perfect["true_leaves"] == len(dataset.coco["annotations"]) == perfect["detections"]
    # A quarter of the width off: IoU 0.6, matched at 0.5 but not at 0.7 and above.
    worse = coco_detector_metrics(dataset, moved)
    assert worse["ap50"] == 1.0 and worse["ap"] < 0.5


def test_grade_metrics_hand_computed():
    figures = grade_metrics([0, 1, 2, 3, 3], [0, 1, 3, 1, 3], 4)
    assert figures["confusion"] == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 1]]
    assert (figures["exact"], figures["within_one"]) == (0.6, 0.8)


# --------------------------------------------------------------------------- the command


def test_evaluate_detector_on_a_coco_file_through_the_cli(models_dir, tmp_path, capsys):
    shutil.copytree(SHIPPED / "leaves", tmp_path / "leaves")
    assert (
        models(
            models_dir,
            "evaluate",
            DETECTOR,
            "v3",
            "--dataset",
            str(tmp_path / "leaves" / "annotations.json"),
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "AP " in out and "AP50" in out and "F1@0.5" in out and "count error" in out
    assert "photo_size=128:" in out and "photo_size=256:" in out
    # The shipped record of the registered copy stays; the ad-hoc one is added beside it.
    records = read_evaluations(ModelRegistry(models_dir), DETECTOR, "v3")
    adhoc = next(r for name, r in records.items() if name.startswith("annotations.json@"))
    assert adhoc["overall"] == records["eval_leaves"]["overall"]
    assert set(adhoc["strata"]) == {"photo_size", "leaves"}


def test_grade_csv_and_grade_folders_give_the_same_confusion_matrix(models_dir, tmp_path):
    rows = grade_files(tmp_path)
    for row in rows:
        target = tmp_path / "folders" / "disease_3" / row["grade"] / Path(row["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "grades" / row["path"], target)
    assert (
        models(
            models_dir,
            "evaluate",
            GRADER,
            "v1",
            "--dataset",
            str(tmp_path / "grades" / "grades.csv"),
        )
        == 0
    )
    assert models(models_dir, "evaluate", GRADER, "v1", "--dataset", str(tmp_path / "folders")) == 0
    records = read_evaluations(ModelRegistry(models_dir), GRADER, "v1")
    from_csv = next(r for n, r in records.items() if n.startswith("grades.csv@"))
    from_folders = next(r for n, r in records.items() if n.startswith("folders@"))
    confusion = np.array(from_csv["overall"]["confusion"])
    assert confusion.sum() == len(rows) == from_csv["overall"]["crops"]
    assert from_folders["overall"] == from_csv["overall"]
    assert from_csv["overall"]["exact"] == round(np.trace(confusion) / confusion.sum(), 4)
    assert set(from_csv["strata"]["photo_size"]) == {"128", "256"}
    assert from_folders["strata"] == {}


def test_a_detector_dataset_for_a_grader_and_bad_files_are_refused(models_dir, tmp_path, capsys):
    leaves = SHIPPED / "leaves" / "annotations.json"
    assert models(models_dir, "evaluate", GRADER, "v1", "--dataset", str(leaves)) == 2
    assert "is a grader: evaluate it on a grade .csv" in capsys.readouterr().err
    broken = json.loads(one_leaf_coco(tmp_path, [[0, 0, 10, 10]]).read_text())
    broken["annotations"][0]["bbox"] = [0, 0, -1, 10]
    (tmp_path / "leaves.json").write_text(json.dumps(broken))
    with pytest.raises(DatasetError, match=r"annotations\[0\] 'bbox' = \[0, 0, -1, 10\]"):
        open_dataset(tmp_path / "leaves.json")
    (tmp_path / "g.csv").write_text("path,grade\nx.png,1\n")
    with pytest.raises(DatasetError, match=r"columns \['disease'\] are missing"):
        open_dataset(tmp_path / "g.csv")
    (tmp_path / "g.csv").write_text("path,disease,grade\nmissing.png,disease_3,1\n")
    with pytest.raises(DatasetError, match="line 2: path 'missing.png'"):
        open_dataset(tmp_path / "g.csv")
    rows = grade_files(tmp_path)
    with open(tmp_path / "grades" / "bad.csv", "w", newline="") as handle:
        handle.write(f"path,disease,grade\n{rows[0]['path']},disease_3,7\n")
    assert (
        models(
            models_dir, "evaluate", GRADER, "v1", "--dataset", str(tmp_path / "grades" / "bad.csv")
        )
        == 2
    )
    assert "has grade 7, but disease_3_grader v1 grades [0, 1, 2, 3]" in capsys.readouterr().err


# --------------------------------------------------------------------------- registered


def test_shipped_datasets_are_registered_and_are_what_export_heldout_makes(tmp_path, capsys):
    registered = {entry.name: entry for entry in registered_datasets(configured_registry())}
    assert {e.task for e in registered.values()} == {"leaf_detector", "disease_grader"}
    out = tmp_path / "export"
    # The shipped set's own command line (see the DOCS): the same bytes, the same sha256.
    assert cli.main(["export-heldout", str(out), "--crops-from", "4"]) == 0
    models_dir = copy_repo_models(tmp_path / "models")
    shutil.rmtree(models_dir / "datasets")
    shutil.copytree(out, models_dir / "datasets" / "eval_heldout")
    for entry in registered.values():
        dataset = open_dataset(models_dir / entry.path)
        assert dataset_sha256(dataset) == entry.sha256


def test_a_dataset_whose_sha256_differs_is_refused(models_dir, capsys):
    crop = next((models_dir / "datasets" / "eval_heldout" / "grades" / "crops").iterdir())
    crop.write_bytes(crop.read_bytes() + b"\0")
    assert models(models_dir, "evaluate", GRADER, "v1") == 2
    err = capsys.readouterr().err
    assert "registered dataset 'eval_grades'" in err and "does not match the registry" in err
    # The gate cannot judge on it either: activation is refused, not waved through.
    new_version(models_dir, GRADER, "v2", "v1")
    assert models(models_dir, "activate", GRADER, "v2") == 2
    assert "does not match the registry" in capsys.readouterr().err
    assert ModelRegistry(models_dir).active_versions()[GRADER] == "v1"
