"""Issue 7's story through the real daemon: a new disease_3 grader version, end to end.

Grade a small simulated farm → register and activate disease_3_grader v2 → Dagster lists
exactly the disease_3_grades day partitions as stale → a real asset backfill over a date range
re-grades them → both versions' rows, equal counts → the comparison mart shows the pair.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import copy_repo_models
from dagster import AssetKey, DagsterInstance, RunsFilter
from test_pipeline_e2e import Platform, assert_no_duplicate_keys, saw_duplicates_or_requested_runs

from farm_platform import cli
from farm_platform.admin.backfill import backfill_progress
from farm_platform.admin.model_versions import stale_partitions
from farm_platform.config import FARM_MODELS_DIR, REPO_MODELS_DIR
from farm_platform.images.keys import GRADES_BY_DISEASE, LEAF_CROPS, MODEL_ASSETS
from farm_platform.ml.registry import ModelRegistry
from farm_platform_dev.daemon import UNFINISHED_STATUSES, ended_tick_id, wait_for_ticks
from farm_platform_dev.farm import dbt_build, dbt_workdir
from farm_platform_dev.simulate import FarmConfig

pytestmark = pytest.mark.slow
GRADER = "disease_3_grader"
DISEASE_3_GRADES = GRADES_BY_DISEASE["disease_3"]
START = dt.date(2026, 6, 1)


def wait_until(what: str, condition: Callable[[], bool], timeout: float, daemon=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{daemon.log_tail() if daemon else ''}")
        if daemon is not None and not daemon.alive():
            pytest.fail(f"dagster-daemon exited while waiting for {what}\n{daemon.log_tail()}")
        time.sleep(1)


def run_day(run) -> str:
    """The day partition of a run: a single partition, or a backfill's one-day range."""
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    assert tags["dagster/asset_partition_range_start"] == tags["dagster/asset_partition_range_end"]
    return tags["dagster/asset_partition_range_start"]


def backfill_runs_succeeded(instance: DagsterInstance, backfill_id: str, runs: int) -> bool:
    """Whether the backfill's `runs` runs have all succeeded; fails the test on a failed one."""
    statuses = backfill_progress(instance, backfill_id).runs
    assert not set(statuses) & {"FAILURE", "CANCELED"}, f"backfill {backfill_id}: {statuses}"
    return statuses == {"SUCCESS": runs}


def recorded_version(instance: DagsterInstance, key: AssetKey) -> str | None:
    event = instance.get_latest_materialization_event(key)
    return event.asset_materialization.tags.get("dagster/data_version") if event else None


def grade_counts(platform: Platform) -> dict[tuple[str, str], int]:
    rows = platform.rows(
        "SELECT disease_type, disease_model_version, count(*) AS n FROM disease_grades"
        " GROUP BY 1, 2"
    )
    return {(r["disease_type"], r["disease_model_version"]): r["n"] for r in rows.to_dicts()}


def copy_as_new_version(models_dir: Path, target: Path, version: str) -> Path:
    """v1's weights under a new version: same architecture, sha256 = the file's."""
    shutil.copytree(models_dir / GRADER / "v1", target)
    card = json.loads((target / "card.json").read_text())
    card.update(version=version, created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    card["training"] = {**card["training"], "note": "v1's weights, re-registered for the e2e"}
    (target / "card.json").write_text(json.dumps(card, indent=2))
    return target


@pytest.fixture
def story(local_stack, default_subscription, tmp_path, monkeypatch) -> Platform:
    models_dir = copy_repo_models(tmp_path / "models")
    platform = Platform(local_stack, tmp_path / "farm")
    platform.models_dir = models_dir
    platform.environment[FARM_MODELS_DIR] = str(models_dir)
    for name, value in platform.environment.items():
        monkeypatch.setenv(name, value)  # the CLI reads DAGSTER_HOME and FARM_MODELS_DIR
    return platform


def test_new_grader_version_story(story: Platform, capsys):
    platform = story
    registry = ModelRegistry(platform.models_dir)
    config = FarmConfig(positions=4, days=3, start_date=START, seed=3)

    with platform.daemon() as daemon, platform.instance() as instance:
        # The model assets record the active versions first (the grader's v1), so that the
        # grades' provenance names them.
        active = registry.active_versions()
        wait_until(
            "model assets at the registry's active versions",
            lambda: all(recorded_version(instance, MODEL_ASSETS[m]) == active[m] for m in active),
            timeout=180,
            daemon=daemon,
        )
        published_at = dt.datetime.now(dt.UTC)
        images = platform.simulate(config)
        platform.wait(instance, images, daemon)
        assert all(not parts for parts in stale_partitions(instance).values())
        v1 = grade_counts(platform)
        leaves = platform.rows("SELECT count(*) AS n FROM leaf_crops")["n"][0]
        assert v1 == {(d, "v1"): leaves for d in GRADES_BY_DISEASE}

        replay_adds_no_work(platform, instance, daemon, capsys, published_at, v1)
        activate_v2(platform, registry, instance, daemon, capsys)
        only_disease_3_grades_are_stale(instance, capsys)
        backfill_id, counts, after = backfill_two_days(platform, instance, daemon, capsys)
        assert after[("disease_3", "v1")] == leaves  # old rows stay
        assert after[("disease_3", "v2")] == counts["v2"]
        assert {k: n for k, n in after.items() if k[0] != "disease_3"} == {
            k: n for k, n in v1.items() if k[0] != "disease_3"
        }
        # Only the third day is still stale.
        still = stale_partitions(instance, [DISEASE_3_GRADES])[DISEASE_3_GRADES]
        assert [p.partition_key for p in still] == [(START + dt.timedelta(days=2)).isoformat()]
        backfill_one_position_in_place(platform, instance, capsys, backfill_id, after)

    comparison_mart_pairs_v1_and_v2(platform, counts["v2"])


def replay_adds_no_work(platform, instance, daemon, capsys, published_at, v1) -> None:
    """Replaying the queue: the arrival queue knows these photos, no new work."""
    runs_before = len(instance.get_run_records(RunsFilter()))
    capsys.readouterr()
    before = ended_tick_id(instance)
    assert cli.main(["replay", "--since", published_at.isoformat()]) == 0
    assert "seeked" in capsys.readouterr().out
    # The tick that pulls the replayed messages counts the photos duplicates.
    seen = saw_duplicates_or_requested_runs
    wait_for_ticks(instance, daemon, 1, 120, where=seen, after=before)
    assert len(instance.get_run_records(RunsFilter())) == runs_before
    assert grade_counts(platform) == v1


def activate_v2(platform, registry, instance, daemon, capsys) -> None:
    """1. Register and activate v2 with one command."""
    incoming = copy_as_new_version(platform.models_dir, platform.root / "incoming_v2", "v2")
    assert cli.main(["models", "add", str(incoming), "--activate"]) == 0
    assert "registered disease_3_grader v2" in capsys.readouterr().out
    assert registry.active_versions()[GRADER] == "v2"
    assert ModelRegistry(REPO_MODELS_DIR).active_versions()[GRADER] == "v1"
    wait_until(
        "model_registry_sensor to record disease_3_model at v2",
        lambda: recorded_version(instance, MODEL_ASSETS[GRADER]) == "v2",
        timeout=90,
        daemon=daemon,
    )
    wait_until(
        "the model run to finish",
        lambda: (
            not instance.get_run_records(RunsFilter(statuses=list(UNFINISHED_STATUSES)), limit=1)
        ),
        timeout=120,
        daemon=daemon,
    )


def only_disease_3_grades_are_stale(instance, capsys) -> None:
    """2. Stale, through Dagster's API: exactly the disease_3_grades day partitions."""
    stale = stale_partitions(instance)
    all_partitions = sorted(instance.get_materialized_partitions(DISEASE_3_GRADES))
    assert all_partitions == [(START + dt.timedelta(days=d)).isoformat() for d in range(3)]
    assert sorted(p.partition_key for p in stale[DISEASE_3_GRADES]) == all_partitions
    assert all("disease_3_model" in p.causes[0] for p in stale[DISEASE_3_GRADES])
    others = {k.to_user_string(): len(v) for k, v in stale.items() if k != DISEASE_3_GRADES}
    assert set(others.values()) == {0}, others
    assert LEAF_CROPS in stale
    assert cli.main(["models", "stale", "--asset", "disease_3_grades"]) == 0
    out = capsys.readouterr().out
    assert "disease_3_grades: 3 stale partition(s)" in out


def backfill_two_days(
    platform, instance, daemon, capsys
) -> tuple[str, dict[str, int], dict[tuple[str, str], int]]:
    """3. A real asset backfill over the first two days: its id, the first two days'
    disease_3 rows per version, and every (disease, version)'s rows after it.

    Dagster's backfill daemon looks at its backfills every 30 s: the test waits for this
    one's runs, so that the next backfill is submitted before the look that marks this one
    done (and --wait is exercised on that one)."""
    last = START + dt.timedelta(days=1)
    backfill_args = ["backfill", "--assets", "disease_3_grades", "--from", str(START)]
    backfill_args += ["--to", str(last)]
    assert cli.main(backfill_args) == 0
    out = capsys.readouterr().out
    print(out)
    backfill_id = out.split()[1].rstrip(":")
    assert "over 2 day partition(s)" in out
    wait_until(
        "the backfill's two runs to succeed",
        lambda: backfill_runs_succeeded(instance, backfill_id, 2),
        timeout=600,
        daemon=daemon,
    )
    assert f"http://localhost:3000/runs/b/{backfill_id} (Runs → Backfills)" in out
    backfill_runs = instance.get_run_records(RunsFilter.for_backfill(backfill_id))
    # One run per day, each re-grading every recorded photo of its day.
    assert sorted(run_day(r.dagster_run) for r in backfill_runs) == [
        START.isoformat(),
        last.isoformat(),
    ]

    first_two_days = f"date <= DATE '{last.isoformat()}'"
    per_version = platform.rows(
        "SELECT disease_model_version AS v, count(*) AS n FROM disease_grades"
        f" WHERE disease_type = 'disease_3' AND {first_two_days} GROUP BY 1"
    )
    counts = dict(zip(per_version["v"], per_version["n"], strict=True))
    assert set(counts) == {"v1", "v2"} and counts["v1"] == counts["v2"] > 0, counts
    return backfill_id, counts, grade_counts(platform)


def backfill_one_position_in_place(platform, instance, capsys, backfill_id, after) -> None:
    """A backfill of some positions only, over a day already backfilled: their rows are
    re-graded in place (a re-run adds no row), the others untouched."""
    last = START + dt.timedelta(days=1)
    before = platform.rows(
        "SELECT position_id, dagster_run_id FROM disease_grades"
        " WHERE disease_model_version = 'v2' GROUP BY 1, 2"
    )
    one_day = ["backfill", "--assets", "disease_3_grades", "--from", str(last), "--to", str(last)]
    assert cli.main([*one_day, "--positions", "P001", "--wait", "--timeout", "600"]) == 0
    assert "COMPLETED_SUCCESS" in capsys.readouterr().out
    assert backfill_progress(instance, backfill_id).status == "COMPLETED_SUCCESS"
    after_positions = platform.rows(
        "SELECT position_id, dagster_run_id FROM disease_grades"
        " WHERE disease_model_version = 'v2' GROUP BY 1, 2"
    )
    changed = before.join(after_positions, on=["position_id", "dagster_run_id"], how="anti")
    assert sorted(set(changed["position_id"])) == ["P001"]
    assert grade_counts(platform) == after
    assert_no_duplicate_keys(platform)


def comparison_mart_pairs_v1_and_v2(platform: Platform, v2_rows: int) -> None:
    """4. The comparison mart: the v1/v2 pair, agreement 1.0 (same weights)."""
    project = dbt_workdir(platform.field_map, platform.root / "dbt_project")
    dbt_build(project, platform.warehouse.url)
    agreement = platform.rows("SELECT * FROM model_version_agreement")
    pair = agreement.filter(agreement["disease_model_id"] == GRADER)
    assert pair.height == 1, agreement
    row = pair.to_dicts()[0]
    assert {row["version_a"], row["version_b"]} == {"v1", "v2"}
    assert row["leaves_compared"] == v2_rows
    assert row["agreement_rate"] == pytest.approx(1.0)
