"""The activation gate: a version worse than the active one on a registered dataset is refused
unless forced with a recorded reason; evaluations on the model asset and the report; datasets
in a bucket (issue 42, part 4).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from model_evaluation_support import (
    DETECTOR,
    GRADER,
    grade_files,
    models,
    new_version,
    one_leaf_coco,
)
from PIL import Image

from farm_platform import cli
from farm_platform import config as farm_config
from farm_platform.admin.configured import configured_registry
from farm_platform.admin.evaluation import (
    DATASETS_KEY,
    EVALUATIONS_FILE,
    open_registered,
    read_evaluations,
    registered_datasets,
)
from farm_platform.config import REPO_MODELS_DIR, ConfigError
from farm_platform.ml.datasets import DatasetError, read_coco
from farm_platform.ml.evaluation import coco_detector_metrics
from farm_platform.ml.registry import ACTIVATIONS_KEY, ModelRegistry

# --------------------------------------------------------------------------- the gate


def test_a_worse_version_is_refused_then_forced_with_a_recorded_reason(models_dir, capsys):
    new_version(models_dir, DETECTOR, "v4", "v1")  # v1's weights: worse than v3 on eval_leaves
    assert models(models_dir, "activate", DETECTOR, "v4") == 2
    err = capsys.readouterr().err
    assert "refused: leaf_detector v4 is worse than the active v3" in err
    assert "dataset 'eval_leaves': ap " in err and "FARM_GATE_TOLERANCE=0.01" in err
    registry = ModelRegistry(models_dir)
    assert registry.active_versions()[DETECTOR] == "v3"
    # It was evaluated on the registered dataset on the way, and the record kept.
    assert "eval_leaves" in read_evaluations(registry, DETECTOR, "v4")

    assert models(models_dir, "activate", DETECTOR, "v4", "--force") == 2
    assert "--force needs --reason" in capsys.readouterr().err
    reason = "field photos: v3 misses wet leaves"
    assert models(models_dir, "activate", DETECTOR, "v4", "--force", "--reason", reason) == 0
    assert "FORCED over dataset 'eval_leaves'" in capsys.readouterr().out
    assert registry.active_versions()[DETECTOR] == "v4"
    (logged,) = json.loads((models_dir / "registry.json").read_text())[ACTIVATIONS_KEY]
    assert logged["forced"] and logged["reason"] == reason and logged["previous"] == "v3"
    assert {r["metric"] for r in logged["regressions"]} >= {"ap", "ap50", "f1"}
    assert models(models_dir, "list") == 0
    listed = capsys.readouterr().out
    assert "FORCED active" in listed and reason in listed and "eval eval_leaves: AP" in listed


def test_a_better_or_equal_version_activates(models_dir, monkeypatch, capsys):
    registry = ModelRegistry(models_dir)
    registry.set_active(DETECTOR, "v1")
    assert models(models_dir, "activate", DETECTOR, "v3") == 0  # v3 beats v1
    assert registry.active_versions()[DETECTOR] == "v3"
    new_version(models_dir, GRADER, "v2", "v1")  # the same weights: equal, not worse
    monkeypatch.setenv(farm_config.FARM_GATE_TOLERANCE, "0")
    assert models(models_dir, "activate", GRADER, "v2") == 0
    assert registry.active_versions()[GRADER] == "v2"
    log = json.loads((models_dir / "registry.json").read_text())[ACTIVATIONS_KEY]
    assert [(a["version"], a["forced"]) for a in log] == [("v3", False), ("v2", False)]


def test_add_evaluates_on_every_registered_dataset_and_gates_activate(models_dir, tmp_path, capsys):
    incoming = tmp_path / "incoming" / DETECTOR / "v5"
    shutil.copytree(models_dir / DETECTOR / "v1", incoming)
    card = json.loads((incoming / "card.json").read_text())
    (incoming / "card.json").write_text(json.dumps({**card, "version": "v5"}))
    # Figures that come with the folder are not believed: the version is evaluated afresh.
    forged = {"eval_leaves": {"overall": {"ap": 1.0, "ap50": 1.0, "f1": 1.0}}}
    (incoming / EVALUATIONS_FILE).write_text(json.dumps({"evaluations": forged}))
    assert models(models_dir, "add", str(incoming), "--activate") == 2
    captured = capsys.readouterr()
    assert "leaf_detector v5 on eval_leaves" in captured.out
    assert "refused: leaf_detector v5 is worse" in captured.err
    registry = ModelRegistry(models_dir)
    assert registry.versions(DETECTOR)[-1] == "v5"  # registered, not active
    assert registry.active_versions()[DETECTOR] == "v3"
    stored = read_evaluations(registry, DETECTOR, "v5")["eval_leaves"]["overall"]
    assert stored["ap"] < 1.0


def test_gate_tolerance_setting_is_validated():
    from farm_platform.config_values import gate_tolerance

    with pytest.raises(ConfigError, match="FARM_GATE_TOLERANCE.*must be a share from 0 to 1"):
        gate_tolerance("2")
    assert gate_tolerance("") == farm_config.DEFAULT_GATE_TOLERANCE
    assert DATASETS_KEY == "evaluation_datasets"


def test_evaluations_and_a_forced_activation_on_the_model_asset(models_dir, tmp_path):
    from dagster import DagsterInstance, materialize

    from farm_platform.admin.activation_gate import activate
    from farm_platform.images.keys import MODEL_ASSETS
    from farm_platform.images.registered_models import registered_models
    from farm_platform.resources import ModelRegistryResource, WarehouseResource

    registry = ModelRegistry(models_dir)
    new_version(models_dir, DETECTOR, "v4", "v1")
    assert activate(registry, DETECTOR, "v4", force=True, reason="wet season").forced
    resources = {
        "models": ModelRegistryResource(models_dir=str(models_dir)),
        "warehouse": WarehouseResource(url=f"duckdb:///{tmp_path / 'farm.duckdb'}"),
    }
    key = MODEL_ASSETS[DETECTOR]
    with DagsterInstance.ephemeral() as instance:
        assert materialize(
            [registered_models], selection=[key], instance=instance, resources=resources
        ).success
        event = instance.get_latest_materialization_event(key)
    metadata = event.asset_materialization.metadata
    assert metadata["model_version"].value == "v4"
    assert metadata["evaluations"].value["eval_leaves"]["ap"] < 0.3
    assert metadata["activation"].value["reason"] == "wet season"
    assert metadata["activation"].value["forced"] is True


def test_registered_datasets_in_a_bucket_are_pushed_read_and_checked(
    bucket_env,
    tmp_path,
    capsys,
):
    """`models push` carries the datasets; the bucket's copy is read into the local cache
    and checked against the registry's sha256 at each use; `register-dataset` uploads."""
    from models_bucket_support import new_bucket

    from farm_platform.ml.model_store import BucketModelStore

    url = f"gs://{new_bucket(bucket_env)}/models"
    assert cli.main(["models", "--models-dir", url, "push", str(REPO_MODELS_DIR)]) == 0
    remote = ModelRegistry(url)
    assert registered_datasets(remote) == registered_datasets(configured_registry())
    assert cli.main(["models", "--models-dir", url, "evaluate", GRADER, "v1"]) == 0
    assert "disease_3_grader v1 on eval_grades" in capsys.readouterr().out
    local = read_evaluations(configured_registry(), GRADER, "v1")["eval_grades"]
    assert read_evaluations(remote, GRADER, "v1")["eval_grades"]["overall"] == local["overall"]

    store = BucketModelStore(url)
    crop = "datasets/eval_heldout/grades/crops/128_0000_00.png"
    store.fs.pipe_file(store._key(crop), store.read_bytes(crop) + b"\0")
    assert cli.main(["models", "--models-dir", url, "evaluate", GRADER, "v1"]) == 2
    assert "does not match the registry: expected sha256" in capsys.readouterr().err

    rows = grade_files(tmp_path)
    with open(tmp_path / "grades" / "mine.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "disease", "grade"])
        writer.writeheader()
        writer.writerows({k: row[k] for k in ("path", "disease", "grade")} for row in rows[:5])
    args = ["register-dataset", "mine", str(tmp_path / "grades" / "mine.csv")]
    assert cli.main(["models", "--models-dir", url, *args]) == 0
    assert store.exists("datasets/mine/mine.csv") and store.exists(
        f"datasets/mine/{rows[0]['path']}"
    )
    entry = next(e for e in registered_datasets(remote) if e.name == "mine")
    assert len(open_registered(remote, entry).rows) == 5


def test_the_reports_model_table_carries_evaluations_and_a_forced_reason(models_dir, monkeypatch):
    import polars as pl

    from farm_platform.admin.activation_gate import activate
    from farm_platform.report.data import with_evaluations

    new_version(models_dir, DETECTOR, "v4", "v1")
    activate(ModelRegistry(models_dir), DETECTOR, "v4", force=True, reason="wet season")
    active = pl.DataFrame({"model_id": [DETECTOR, GRADER], "version": ["v4", "v1"]})
    notes = with_evaluations(active, ModelRegistry(models_dir))["evaluation"].to_list()
    assert notes[0].startswith("eval eval_leaves: AP 0.204") and "'wet season'" in notes[0]
    assert notes[1].startswith("eval eval_grades: exact 0.461")


def test_registered_paths_stay_inside_the_models_folder_and_reactivation_is_no_write(
    models_dir, capsys
):
    registry_file = models_dir / "registry.json"
    before = registry_file.read_bytes()
    assert models(models_dir, "activate", DETECTOR, "v3") == 0  # already active
    assert registry_file.read_bytes() == before
    data = json.loads(before)
    data[DATASETS_KEY]["eval_leaves"]["path"] = "../../outside/annotations.json"
    registry_file.write_text(json.dumps(data))
    assert models(models_dir, "evaluate", DETECTOR, "v3") == 2
    assert "must lie inside the models folder" in capsys.readouterr().err


def test_a_grade_csv_with_boxes_grades_the_crops_cut_from_its_photos(models_dir, tmp_path):
    rows = grade_files(tmp_path)[:12]
    with open(tmp_path / "grades" / "boxed.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "disease", "grade", "x0", "y0", "x1", "y1"])
        for n, row in enumerate(rows):
            crop = np.asarray(Image.open(tmp_path / "grades" / row["path"]).convert("RGB"))
            photo = np.full((120, 120, 3), 90, np.uint8)
            height, width = crop.shape[:2]
            photo[7 : 7 + height, 5 : 5 + width] = crop
            Image.fromarray(photo).save(tmp_path / "grades" / f"photo{n}.png")
            writer.writerow(
                [f"photo{n}.png", "disease_3", row["grade"], 5, 7, 5 + width, 7 + height]
            )
    with open(tmp_path / "grades" / "crops.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "disease", "grade"])
        writer.writeheader()
        writer.writerows({k: row[k] for k in ("path", "disease", "grade")} for row in rows)
    for name in ("boxed.csv", "crops.csv"):
        path = tmp_path / "grades" / name
        assert models(models_dir, "evaluate", GRADER, "v1", "--dataset", str(path)) == 0
    records = read_evaluations(ModelRegistry(models_dir), GRADER, "v1")
    boxed = next(r for n, r in records.items() if n.startswith("boxed.csv@"))["overall"]
    crops = next(r for n, r in records.items() if n.startswith("crops.csv@"))["overall"]
    assert boxed == crops and boxed["crops"] == 12


def test_grade_folders_register_and_are_evaluated_with_the_rest(models_dir, tmp_path, capsys):
    rows = grade_files(tmp_path)[:10]
    folders = models_dir / "datasets" / "mine"
    for row in rows:
        target = folders / "disease_3" / row["grade"] / Path(row["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "grades" / row["path"], target)
    outside = tmp_path / "grades" / "grades.csv"
    assert models(models_dir, "register-dataset", "mine", str(outside)) == 2
    assert "is outside the models folder" in capsys.readouterr().err
    (folders / "disease_3" / "stray.png").write_bytes(b"")
    assert models(models_dir, "register-dataset", "mine", str(folders)) == 2
    assert "holds 1 image(s) outside a grade folder (e.g. 'stray.png')" in capsys.readouterr().err
    (folders / "disease_3" / "stray.png").unlink()
    assert models(models_dir, "register-dataset", "mine", str(folders)) == 0
    assert models(models_dir, "datasets") == 0
    assert "mine                 disease_grader  datasets/mine" in capsys.readouterr().out
    assert models(models_dir, "evaluate", GRADER, "v1") == 0
    out = capsys.readouterr().out
    assert "v1 on eval_grades" in out and "v1 on mine" in out and "(10 crops)" in out
    # Another disease's grader finds no crops of its own there: shown, never gated on.
    assert models(models_dir, "evaluate", "disease_0_grader", "v1") == 0
    assert "v1 on mine (sha256" in capsys.readouterr().out


def test_the_leaf_category_is_chosen_and_other_boxes_are_counted_not_scored(tmp_path):
    path = one_leaf_coco(tmp_path, [[0, 0, 10, 10]])
    coco = json.loads(path.read_text())
    coco["categories"] = [{"id": 7, "name": "Leaf"}, {"id": 8, "name": "weed"}]
    coco["annotations"].append({"image_id": 1, "category_id": 8, "bbox": [20, 20, 5, 5]})
    path.write_text(json.dumps(coco))
    figures = coco_detector_metrics(read_coco(path), {1: [(0, 0, 10, 10, 0.9)]})
    assert (figures["ap"], figures["f1"], figures["true_leaves"]) == (1.0, 1.0, 1)
    assert figures["other_category_boxes"] == 1
    coco["categories"][0]["name"] = "stem"
    path.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="2 categories and 0 named 'leaf'"):
        read_coco(path)
