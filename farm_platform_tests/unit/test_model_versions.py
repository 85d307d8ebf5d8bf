"""`farm-platform models add/list/activate`: validation, refusal reasons, atomicity."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from farm_platform import cli
from farm_platform.admin.configured import configured_registry
from farm_platform.admin.model_versions import (
    ModelExistsError,
    ModelValidationError,
    activate_model,
    add_model,
    list_models,
)
from farm_platform.config import REPO_MODELS_DIR
from farm_platform.ml.registry import (
    ModelCardError,
    ModelChecksumError,
    ModelFileMissingError,
    ModelRegistry,
    ModelRegistryError,
    sha256_file,
)

GRADER = "disease_3_grader"


def new_version(
    models_dir: Path, tmp_path: Path, version: str = "v2", model_id: str = GRADER, **card_changes
) -> Path:
    """v1 of a model (the disease_3 grader by default) as a new version folder outside the
    registry."""
    folder = tmp_path / "incoming" / model_id / version
    shutil.copytree(models_dir / model_id / "v1", folder)
    card = json.loads((folder / "card.json").read_text())
    card.update(version=version, **card_changes)
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """Every file (and folder) under `folder` with the sha256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_file()
        else "dir"
        for path in sorted(folder.rglob("*"))
    }


def test_add_registers_without_activating_then_activate(models_dir, tmp_path):
    registry = ModelRegistry(models_dir)
    added = add_model(new_version(models_dir, tmp_path), registry)
    assert added.path == models_dir / GRADER / "v2"
    assert (added.path / "weights.pt").is_file()
    assert added.card.version == "v2" and not added.activated
    assert "(2, 4)" in added.check
    assert registry.active_versions()[GRADER] == "v1"
    assert registry.versions(GRADER) == ["v1", "v2"]
    assert not list(models_dir.glob(".staging-*"))
    rows = {(r.model_id, r.version): r.active for r in list_models(registry)}
    assert rows[(GRADER, "v1")] and not rows[(GRADER, "v2")]

    assert activate_model(GRADER, "v2", registry) == "v1"
    assert registry.active_versions()[GRADER] == "v2"
    assert registry.active_versions()["disease_2_grader"] == "v1"


def test_add_and_activate_in_one_command(models_dir, tmp_path, capsys):
    folder = new_version(models_dir, tmp_path)
    code = cli.main(["models", "--models-dir", str(models_dir), "add", str(folder), "--activate"])
    assert code == 0
    out = capsys.readouterr().out
    assert "registered disease_3_grader v2" in out and "activated" in out
    assert ModelRegistry(models_dir).active_versions()[GRADER] == "v2"
    cli.main(["models", "--models-dir", str(models_dir), "list"])
    assert "* disease_3_grader   v2" in capsys.readouterr().out


def test_models_dir_from_environment(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_MODELS_DIR", str(models_dir))
    add_model(new_version(models_dir, tmp_path), activate=True)
    assert configured_registry().models_dir == models_dir
    assert configured_registry().active_versions()[GRADER] == "v2"
    # The repository's own registry is untouched.
    assert ModelRegistry(REPO_MODELS_DIR).active_versions()[GRADER] == "v1"


def test_list_warns_about_a_corrupted_active_model(models_dir, tmp_path, capsys):
    add_model(new_version(models_dir, tmp_path), ModelRegistry(models_dir))
    weights = models_dir / GRADER / "v1" / "weights.pt"  # v1 is the active version
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")
    _break_card(models_dir / "disease_2_grader" / "v1")
    rows = {(r.model_id, r.version): r for r in list_models(ModelRegistry(models_dir))}
    assert "do not match the card" in rows[GRADER, "v1"].problem and rows[GRADER, "v1"].active
    assert rows[GRADER, "v2"].problem == ""
    assert "grades" in rows["disease_2_grader", "v1"].problem  # listed, not a crash
    code = cli.main(["models", "--models-dir", str(models_dir), "list"])
    out = capsys.readouterr().out
    assert code == 1
    assert "WARNING: ACTIVE model unusable: weights of disease_3_grader v1" in out
    assert "* disease_3_grader   v1" in out and "  disease_3_grader   v2" in out


def test_list_of_sound_models_has_no_warning_and_labels_its_figures(models_dir, capsys):
    assert cli.main(["models", "--models-dir", str(models_dir), "list"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" not in out
    # Each figure says what it is: the card's own, not models/EVALUATION.md's re-measured table.
    card = ModelRegistry(models_dir).card(GRADER, "v1")
    exact = card.metrics["heldout"]["detected_boxes"]["exact"]
    assert f"card: held-out exact grade {exact:.3f}" in out
    assert "card: held-out F1 0." in out


def test_evaluate_script_uses_farm_models_dir(models_dir, tmp_path):
    # The held-out evaluation must score the models the platform runs: those of
    # FARM_MODELS_DIR. A corrupted detector there (and only there) makes it refuse.
    import os
    import subprocess
    import sys

    active = ModelRegistry(models_dir).detector().version
    weights = models_dir / "leaf_detector" / active / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")
    script = REPO_MODELS_DIR / "evaluate.py"
    env = {**os.environ, "FARM_MODELS_DIR": str(models_dir)}
    result = subprocess.run(
        [sys.executable, str(script), "--count", "1"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert f"{models_dir}/leaf_detector/{active}" in result.stderr, result.stderr[-2000:]
    assert "do not match the card" in result.stderr


def _break_card(folder: Path) -> None:
    card = json.loads((folder / "card.json").read_text())
    del card["grades"]
    (folder / "card.json").write_text(json.dumps(card))


def _wrong_sha(folder: Path) -> None:
    card = json.loads((folder / "card.json").read_text())
    card["sha256"] = "0" * 64
    (folder / "card.json").write_text(json.dumps(card))


def _wrong_output_shape(folder: Path) -> None:
    # The card promises 3 grades; the weights (and architecture) give 4 logits.
    card = json.loads((folder / "card.json").read_text())
    card["grades"] = [0, 1, 2]
    (folder / "card.json").write_text(json.dumps(card))


def _missing_weights(folder: Path) -> None:
    (folder / "weights.pt").unlink()


def _weights_of_another_architecture(folder: Path) -> None:
    card = json.loads((folder / "card.json").read_text())
    card["architecture_kwargs"] = {**card["architecture_kwargs"], "width": 8}
    (folder / "card.json").write_text(json.dumps(card))


def _not_json(folder: Path) -> None:
    (folder / "card.json").write_text("{not json")


@pytest.mark.parametrize(
    ("breaks", "error", "reason"),
    [
        (_break_card, ModelCardError, "field 'grades'"),
        (_not_json, ModelCardError, "not valid JSON"),
        (_wrong_sha, ModelChecksumError, "expected sha256 0000"),
        (_wrong_output_shape, ModelValidationError, "expected (2, 3)"),
        (_missing_weights, ModelFileMissingError, "weights.pt does not exist"),
        (_weights_of_another_architecture, ModelRegistryError, "do not fit"),
    ],
    ids=["bad-card", "not-json", "wrong-sha", "wrong-output-shape", "missing-weights", "bad-fit"],
)
def test_invalid_model_is_refused_and_nothing_changes(
    models_dir, tmp_path, capsys, breaks, error, reason
):
    folder = new_version(models_dir, tmp_path)
    breaks(folder)
    before = snapshot(models_dir)
    with pytest.raises(error) as caught:
        add_model(folder, ModelRegistry(models_dir), activate=True)
    assert reason in str(caught.value)
    assert snapshot(models_dir) == before
    # The command line says why and exits non-zero, still changing nothing.
    args = ["models", "--models-dir", str(models_dir), "add", str(folder), "--activate"]
    assert cli.main(args) == 2
    assert reason in capsys.readouterr().err
    assert snapshot(models_dir) == before


def test_existing_version_is_refused(models_dir, tmp_path):
    folder = new_version(models_dir, tmp_path, version="v1")
    before = snapshot(models_dir)
    with pytest.raises(ModelExistsError, match="already registered"):
        add_model(folder, ModelRegistry(models_dir))
    assert snapshot(models_dir) == before


def test_activate_unknown_version_is_refused(models_dir, capsys):
    before = snapshot(models_dir)
    assert cli.main(["models", "--models-dir", str(models_dir), "activate", GRADER, "v9"]) == 2
    assert "no model card for disease_3_grader v9" in capsys.readouterr().err
    assert snapshot(models_dir) == before


def test_copied_weights_are_a_valid_new_version(models_dir, tmp_path):
    """The e2e story's v2: v1's weights under a new version, sha256 = the file's."""
    folder = new_version(models_dir, tmp_path)
    assert json.loads((folder / "card.json").read_text())["sha256"] == sha256_file(
        folder / "weights.pt"
    )
    add_model(folder, ModelRegistry(models_dir))


def test_registry_sensor_asks_for_exactly_the_models_whose_active_version_changed(
    models_dir, tmp_path
):
    from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context, materialize

    from farm_platform.images.keys import MODEL_ASSETS
    from farm_platform.images.registered_models import MODEL_VERSIONS, registered_models
    from farm_platform.images.sensors import MAX_RUNTIME_TAG, model_registry_tick
    from farm_platform.resources import ModelRegistryResource, WarehouseResource
    from farm_platform.resources.ingest_policy import IngestPolicyResource

    models = ModelRegistryResource(models_dir=str(models_dir))
    resources = {
        "models": models,
        "warehouse": WarehouseResource(url=f"duckdb:///{tmp_path / 'farm.duckdb'}"),
    }
    registry = ModelRegistry(models_dir)
    policy = IngestPolicyResource()

    def evaluate(instance: DagsterInstance) -> RunRequest | SkipReason:
        return model_registry_tick(build_sensor_context(instance=instance), models, policy)

    def record(instance: DagsterInstance, selection: list) -> None:
        assert materialize(
            [registered_models], selection=selection, instance=instance, resources=resources
        ).success

    with DagsterInstance.ephemeral() as instance:
        first = evaluate(instance)  # nothing recorded yet: every model
        assert isinstance(first, RunRequest)
        assert set(first.asset_selection) == {*MODEL_ASSETS.values(), MODEL_VERSIONS}
        # Bounded: a model run whose worker died with the daemon must not hold the run
        # queue (and the photos queued behind it) for ever; run monitoring fails it.
        assert first.tags[MAX_RUNTIME_TAG] == str(policy.run_timeout(0))
        record(instance, first.asset_selection)
        assert isinstance(evaluate(instance), SkipReason)

        add_model(new_version(models_dir, tmp_path), registry, activate=True)
        to_v2 = evaluate(instance)
        assert isinstance(to_v2, RunRequest)
        assert set(to_v2.asset_selection) == {MODEL_ASSETS[GRADER], MODEL_VERSIONS}
        assert "v1->v2" in to_v2.run_key
        record(instance, to_v2.asset_selection)
        assert isinstance(evaluate(instance), SkipReason)

        # Switching back and forth again is new work each time, never a reused run key.
        activate_model(GRADER, "v1", registry)
        back = evaluate(instance)
        record(instance, back.asset_selection)
        activate_model(GRADER, "v2", registry)
        again = evaluate(instance)
        assert isinstance(again, RunRequest) and "v1->v2" in again.run_key
        assert len({to_v2.run_key, back.run_key, again.run_key}) == 3


def test_the_shipped_instance_bounds_every_run_without_a_runtime_tag(tmp_path):
    """A UI, backfill or report run whose worker died (the default run launcher cannot
    see it) is failed by run monitoring after the instance's max runtime, instead of
    holding the one-run queue for ever (seen: a daemon killed during a run)."""
    from dagster import DagsterInstance

    from farm_platform.admin.instance import prepare_dagster_home

    prepare_dagster_home(tmp_path)
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled
        assert 3600 <= instance.run_monitoring_max_runtime_seconds <= 24 * 3600


GRADE_ASSETS = {f"disease_{k}_grades" for k in range(5)}


@pytest.mark.parametrize(
    ("model_id", "expected_stale"),
    [
        ("disease_3_grader", {"disease_3_grades"}),
        ("leaf_detector", {"leaf_crops", *GRADE_ASSETS}),
    ],
)
def test_a_new_version_makes_exactly_the_partitions_it_feeds_stale(
    models_dir, tmp_path, model_id, expected_stale
):
    from dagster import DagsterInstance, materialize

    from farm_platform.admin.model_versions import stale_partitions
    from farm_platform.images.keys import MODEL_ASSETS
    from farm_platform.images.registered_models import registered_models
    from farm_platform.resources import ModelRegistryResource
    from farm_platform_dev.farm import grade_simulated_farm
    from farm_platform_dev.simulate import FarmConfig

    config = FarmConfig(positions=2, days=2, seed=4)
    with DagsterInstance.ephemeral() as instance:
        farm = grade_simulated_farm(config, tmp_path / "farm", instance, models_dir)
        assert not any(stale_partitions(instance).values())

        registry = ModelRegistry(models_dir)
        # A version the registry does not hold yet (the detector already has a v2).
        version = f"v{len(registry.versions(model_id)) + 1}"
        add_model(
            new_version(models_dir, tmp_path, version=version, model_id=model_id),
            activate=True,
            registry=registry,
        )
        resources = {
            "models": ModelRegistryResource(models_dir=str(models_dir)),
            "warehouse": farm.warehouse,
        }
        assert materialize(
            [registered_models],
            selection=[MODEL_ASSETS[model_id]],
            instance=instance,
            resources=resources,
        ).success

        stale = stale_partitions(instance)
        found = {key.to_user_string(): len(parts) for key, parts in stale.items() if parts}
        assert found == dict.fromkeys(expected_stale, config.days)  # every day partition
