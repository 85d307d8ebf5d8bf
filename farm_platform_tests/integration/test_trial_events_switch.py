"""A trial that does not go to plan (issue 27): a grader version switched on mid-trial,
through dbt on DuckDB and PostgreSQL.

The farm and what the tests share: trial_events_support.py.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from dbt_farm import (
    CROPPER,
    DAYS,
    KNOWN_EFFECT_PER_DAY,
    LAST_DAY,
    MODEL_VERSIONS,
    TOLERANCE,
    TREATED,
    Build,
    Farm,
    dbt_build,
    load_warehouse,
    position_changes,
    synthetic_farm,
)
from test_dbt_incremental import _assert_equals_a_full_refresh, _warehouse_and_copy
from trial_events_support import trial_report

from farm_platform.report.headline import summary_lines
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.farm import dbt_workdir

# --------------------------------------------------------------------------- grader switch

# disease_0's grader v2 goes live on the third day: v1 graded days 0–1, v2 grades days 2–3.
# v2 grades one leaf of each treated position one grade higher on the last day, so its
# estimate there differs from v1's known effect and tells the two apart.
SWITCH_DAY = DAYS[2]
SWITCH_VERSIONS = [
    (m, v, (v == "v2") if m == "disease_0_grader" else active, task, disease, recorded)
    for m, v, active, task, disease, recorded in MODEL_VERSIONS
] + [("disease_0_grader", "v2", True, "disease_grader", "disease_0", "2024-06-05")]


def _v2_grades(farm: Farm) -> pl.DataFrame:
    """v2's disease_0 grades of every photo (on the active cropper)."""
    rows = farm.disease_grades.filter(
        (pl.col("disease_type") == "disease_0")
        & (pl.col("cropper_model_version") == CROPPER[1])
        & (pl.col("disease_model_version") == "v1")
    )
    bump = (
        pl.col("position_id").is_in(TREATED)
        & (pl.col("date") == LAST_DAY)
        & (pl.col("leaf_crop_idx") == 0)
    )
    return rows.with_columns(
        disease_model_version=pl.lit("v2"),
        predicted_grade=pl.when(bump)
        .then((pl.col("predicted_grade") + 1).clip(0, 3))
        .otherwise(pl.col("predicted_grade")),
    )


def switched_farm() -> tuple[Farm, pl.DataFrame]:
    """The farm as it stands after the switch without a backfill, and the backfill's rows
    (v2's grades of the days before the switch)."""
    farm = synthetic_farm()
    v2 = _v2_grades(farm)
    old = farm.disease_grades.filter(
        (pl.col("disease_type") != "disease_0")
        | (pl.col("date") < SWITCH_DAY)
        | (pl.col("cropper_model_version") != CROPPER[1])
    )
    grades = pl.concat([old, v2.filter(pl.col("date") >= SWITCH_DAY)])
    backfill = v2.filter(pl.col("date") < SWITCH_DAY).with_columns(
        graded_at=pl.lit(datetime.now(UTC), dtype=pl.Datetime("us", "UTC"))
    )
    return Farm(farm.positions, farm.drone_images, farm.leaf_crops, grades), backfill


def _disease_0_effect(build: Build) -> list[dict]:
    return build.query(
        "SELECT * FROM treatment_effect WHERE disease_type = 'disease_0' ORDER BY date"
    ).to_dicts()


@pytest.mark.slow
@pytest.mark.parametrize("db", ["duckdb", "postgres"])
def test_a_grader_switch_keeps_the_old_version_until_the_backfill_covers_the_trial(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    farm, backfill = switched_farm()
    project = dbt_workdir(farm.positions, tmp_path / "project")
    with _warehouse_and_copy(db, tmp_path, request) as (url, copy_url):
        load_warehouse(url, farm, model_versions=SWITCH_VERSIONS)
        build = dbt_build(project, url)
        assert build.success, sorted(build.failed())

        # v2 graded only the days since the switch: the estimate stays on v1, from the
        # trial's first day (no restart of the baseline or of the look count), and ends
        # where v1 stopped grading.
        chosen = build.query(
            "SELECT * FROM int_estimate_versions WHERE disease_type = 'disease_0'"
        ).to_dicts()
        assert len(chosen) == 1
        assert chosen[0]["disease_model_version"] == "v1"
        assert chosen[0]["active_version"] == "v2"
        assert chosen[0]["complete_through"] == DAYS[1]
        assert chosen[0]["active_missing_photos"] == 14 * 2  # days 0 and 1, every position
        assert (chosen[0]["active_missing_from"], chosen[0]["active_missing_to"]) == (
            DAYS[0],
            DAYS[1],
        )
        rows = _disease_0_effect(build)
        assert [(r["date"], r["first_date"], r["days_since_start"]) for r in rows] == [
            (DAYS[1], DAYS[0], 1)
        ]
        assert abs(rows[0]["effect"] - KNOWN_EFFECT_PER_DAY) < TOLERANCE

        # The report says which version the estimate uses, why, and what to backfill; its
        # version section agrees with the per-version table beside it.
        data = trial_report(build)
        lines = summary_lines(data)
        line = next(text for text in lines if text.startswith("disease_0"))
        assert "disease_0_grader v1" in line and "v2" in line, line
        assert f"{DAYS[0]} to {DAYS[1]}" in line, line
        assert f"no estimate after {DAYS[1]}" in line, line
        from farm_platform.report.render import render_report

        page = render_report(data)
        assert "nothing to compare yet" not in page
        assert "no day graded by both" in page

        # The backfill of the days before the switch completes v2's history: the estimate
        # moves to v2 on every date (the whole curve is rebuilt by the incremental build).
        WarehouseResource(url=url).replace_many([("disease_grades", backfill, None)])
        build = dbt_build(project, url)
        assert build.success, sorted(build.failed())
        changed = build.query("SELECT date FROM int_changed_days ORDER BY date")["date"]
        assert changed.to_list() == DAYS
        _assert_equals_a_full_refresh(project, url, copy_url(url), "a switch's backfill")
        chosen = build.query(
            "SELECT * FROM int_estimate_versions WHERE disease_type = 'disease_0'"
        ).to_dicts()
        assert chosen[0]["disease_model_version"] == "v2"
        assert chosen[0]["active_missing_photos"] == 0
        all_grades = pl.concat([farm.disease_grades, backfill], how="vertical_relaxed")
        changes = position_changes(
            Farm(farm.positions, farm.drone_images, farm.leaf_crops, all_grades),
            "disease_0",
            "v2",
        )
        rows = _disease_0_effect(build)
        assert [(r["date"], r["first_date"]) for r in rows] == [(d, DAYS[0]) for d in DAYS[1:]]
        for row in rows:
            arms = changes[row["date"]]
            expected = statistics.fmean(arms["treated"]) - statistics.fmean(arms["control"])
            assert abs(row["effect"] - expected) < TOLERANCE, row
        assert abs(rows[-1]["effect"] - 3 * KNOWN_EFFECT_PER_DAY) > 0.01  # v2's, not v1's
        line = next(
            text for text in summary_lines(trial_report(build)) if text.startswith("disease_0")
        )
        assert "not the active" not in line, line
