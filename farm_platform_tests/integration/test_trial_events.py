"""Trials that do not go to plan (issue 27), through dbt on DuckDB and PostgreSQL: a grader
version switched on mid-trial, photos that arrive after their day's report, and positions
that leave the trial.

The farm is dbt_farm.py's synthetic farm (7 + 7 positions, 4 days, a known effect of −0.5
grade a day on disease_0); each test changes one thing about it and checks the marts and
the report's words against expectations computed here from the rows written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import statistics
from collections.abc import Iterator
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
    _position_changes,
    dbt_build,
    load_warehouse,
    synthetic_farm,
)
from test_dbt_incremental import _assert_equals_a_full_refresh, _warehouse_and_copy

from farm_platform.admin.configured import configured_registry
from farm_platform.report.data import (
    attrition,
    effect_decisions,
    load_report_data,
    revisions,
)
from farm_platform.report.effect_stats import add_decisions, carry_decisions, moved_since
from farm_platform.report.headline import summary_lines
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.farm import dbt_workdir
from farm_platform_dev.postgres import fresh_database

NAMES = {"disease_0": "brown spot", "disease_3": "vein streak"}


@contextlib.contextmanager
def _warehouse(db: str, tmp: Path, request: pytest.FixtureRequest, name: str) -> Iterator[str]:
    if db == "duckdb":
        yield f"duckdb:///{tmp / 'warehouse.duckdb'}"
        return
    yield fresh_database(request.getfixturevalue("postgres_url"), name)


def _report(build: Build, day=LAST_DAY):
    return load_report_data(
        WarehouseResource(url=build.url), day, configured_registry(), disease_names=NAMES
    )


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
        data = _report(build)
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
        changes = _position_changes(
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
        line = next(text for text in summary_lines(_report(build)) if text.startswith("disease_0"))
        assert "not the active" not in line, line


# --------------------------------------------------------------------------- late photos

# Half of day 2's photos (positions 4..6 of each area) arrive after day 2's report.
LATE = {(f"{area}{i}", DAYS[2]) for area in "CT" for i in (4, 5, 6)}


def _photos(farm: Farm, keep) -> Farm:
    def rows(frame: pl.DataFrame) -> pl.DataFrame:
        mask = [keep(p, d) for p, d in frame.select("position_id", "date").iter_rows()]
        return frame.filter(pl.Series(mask, dtype=pl.Boolean))

    return Farm(
        farm.positions, rows(farm.drone_images), rows(farm.leaf_crops), rows(farm.disease_grades)
    )


@pytest.mark.slow
@pytest.mark.parametrize("db", ["duckdb", "postgres"])
def test_late_photos_revise_a_reported_day_visibly_and_its_decision_stands(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    farm = synthetic_farm()
    project = dbt_workdir(farm.positions, tmp_path / "project")
    with _warehouse(db, tmp_path, request, "farm_late") as url:
        # Day 2's report, before the late half of its photos.
        load_warehouse(url, _photos(farm, lambda p, d: d <= DAYS[2] and (p, d) not in LATE))
        build = dbt_build(project, url)
        assert build.success, sorted(build.failed())
        first = _report(build, DAYS[2])
        assert revisions(first).is_empty()
        assert _materialize_report(url, tmp_path / "reports", DAYS[2]).exists()
        before = effect_decisions(first)
        assert set(before["decided_on"]) == {DAYS[2]}
        assert not before["revised"].any()

        # The late photos of day 2 and day 3's photos, then day 3's report.
        stamp = datetime.now(UTC)
        arrived = _photos(farm, lambda p, d: (p, d) in LATE or d == DAYS[3])
        WarehouseResource(url=url).replace_many(
            [
                (
                    "drone_images",
                    arrived.drone_images.with_columns(ingested_at=pl.lit(stamp)),
                    None,
                ),
                ("leaf_crops", arrived.leaf_crops, None),
                (
                    "disease_grades",
                    arrived.disease_grades.with_columns(graded_at=pl.lit(stamp)),
                    None,
                ),
            ]
        )
        build = dbt_build(project, url)
        assert build.success, sorted(build.failed())
        data = _report(build, DAYS[3])
        data = dataclasses.replace(data, previous_effect=before, previous_day=DAYS[2])

        # What moved: day 2, both diseases, with the positions before and after.
        moved = revisions(data)
        assert set(zip(moved["disease_type"], moved["date"], strict=True)) == {
            ("disease_0", DAYS[2]),
            ("disease_3", DAYS[2]),
        }
        assert set(moved["positions_before"]) == {8} and set(moved["positions_after"]) == {14}
        decided = {
            (r["disease_type"], r["date"]): r for r in effect_decisions(data).iter_rows(named=True)
        }
        # The revised looks keep the decision day 2's report made; day 3 is decided now.
        for disease in ("disease_0", "disease_3"):
            row = decided[disease, DAYS[2]]
            assert row["revised"] is True and row["decided_on"] == DAYS[2], row
            old = before.filter(
                (pl.col("disease_type") == disease) & (pl.col("date") == DAYS[2])
            ).row(0, named=True)
            assert row["decision"] == old["sequential_significant"]
            assert abs(row["decided_effect"] - old["effect"]) < TOLERANCE
            assert decided[disease, DAYS[3]]["decided_on"] == DAYS[3]
            assert decided[disease, DAYS[1]]["revised"] is False
        # The headline holds disease_0's earliest conclusive decision, with its day.
        calls = sorted(d for (k, d), r in decided.items() if k == "disease_0" and r["decision"])
        assert calls, decided
        line = next(t for t in summary_lines(data) if t.startswith("disease_0"))
        # (Two allocated areas: the call says what the effect mixes in, then its rule.)
        assert "conclusive (that is the medicine plus any difference in progression" in line
        assert f"valid under daily looks at five diseases; decided on {calls[0]}" in line
        from farm_platform.report.render import render_report

        page = render_report(data)
        assert f"2 look(s) moved since the report of {DAYS[2]}" in page
        # The asset itself finds day 2's report in the store and says the same.
        page = _materialize_report(url, tmp_path / "reports", DAYS[3]).read_text()
        assert f"2 look(s) moved since the report of {DAYS[2]}" in page
        stored = tmp_path / "reports" / DAYS[3].isoformat() / "treatment_effect.parquet"
        table = pl.read_parquet(stored)
        assert table.filter(pl.col("revised"))["decided_on"].to_list() == [DAYS[2]] * 2


def _materialize_report(url: str, root: Path, day) -> Path:
    """The effectiveness_report asset of `day` into `root`; the HTML's path."""
    from dagster import build_asset_context

    from farm_platform.analytics.report import write_effectiveness_report
    from farm_platform.resources.model_registry import ModelRegistryResource
    from farm_platform.resources.report_store import ReportStoreResource

    write_effectiveness_report(
        build_asset_context(partition_key=day.isoformat()),
        warehouse=WarehouseResource(url=url),
        reports=ReportStoreResource(bucket_url=f"file://{root}", reports_url=f"file://{root}"),
        models=ModelRegistryResource(),
    )
    return root / day.isoformat() / "effectiveness_report.html"


def test_a_revised_look_decides_nothing_and_a_decision_stands() -> None:
    """The rule on its own (no dbt): a look the previous report decided 'not conclusive'
    whose late photos now give an always-valid interval that excludes 0 stays undecided and
    is marked revised; one decided conclusive stays conclusive when its revision does not."""
    look = {
        "disease_type": "disease_0",
        "days_since_start": 2,
        "n_treated": 6,
        "n_control": 6,
        "df": 10.0,
        "significant": True,
    }
    previous = pl.DataFrame(
        [
            {**look, "date": DAYS[1], "effect": -0.2, "std_error": 0.1},
            {**look, "date": DAYS[2], "effect": -1.0, "std_error": 0.1},
        ]
    )
    previous = carry_decisions(add_decisions(previous), None, DAYS[2])
    assert previous["decision"].to_list() == [False, True]
    revised = pl.DataFrame(
        [
            {**look, "date": DAYS[1], "effect": -1.0, "std_error": 0.1, "n_treated": 7},
            {**look, "date": DAYS[2], "effect": -0.1, "std_error": 0.1, "n_treated": 7},
        ]
    )
    current = carry_decisions(add_decisions(revised), previous, DAYS[3], DAYS[2])
    assert current["sequential_significant"].to_list() == [True, False]  # the new numbers
    assert current["decision"].to_list() == [False, True]  # what was decided stands
    assert current["revised"].to_list() == [True, True]
    assert current["decided_on"].to_list() == [DAYS[2], DAYS[2]]
    moved = moved_since(current, previous)
    assert moved["always_valid_before"].to_list() == [False, True]
    assert moved["always_valid_after"].to_list() == [True, False]


def test_a_look_decided_late_spends_its_own_share_of_the_day() -> None:
    # One disease of five tested on a date (the others were decided earlier, or have no
    # estimate yet): it spends a fifth of the look's alpha, not all of it.
    row = {
        "disease_type": "disease_0",
        "date": DAYS[2],
        "days_since_start": 2,
        "n_treated": 6,
        "n_control": 6,
        "df": 10.0,
        "effect": -0.5,
        "std_error": 0.1,
    }
    alone = add_decisions(pl.DataFrame([row]))["sequential_alpha"].item()
    shared = add_decisions(pl.DataFrame([row]), diseases=5)["sequential_alpha"].item()
    assert shared == pytest.approx(alone / 5)


def test_the_report_compares_with_the_latest_earlier_report(tmp_path: Path) -> None:
    import fsspec

    from farm_platform.report.render import previous_report

    fs = fsspec.filesystem("file")
    root = str(tmp_path / "reports")
    for day, effect in ((DAYS[0], -0.1), (DAYS[1], -0.2), (DAYS[3], -0.4)):
        folder = tmp_path / "reports" / day.isoformat()
        folder.mkdir(parents=True)
        pl.DataFrame({"effect": [effect]}).write_parquet(folder / "treatment_effect.parquet")
    (tmp_path / "reports" / "not-a-day").mkdir()
    assert previous_report(fs, root, DAYS[0]) == (None, None)
    day, table = previous_report(fs, root, DAYS[3])  # the report of DAYS[2] was never made
    assert day == DAYS[1] and table["effect"].to_list() == [-0.2]
    assert previous_report(fs, str(tmp_path / "none"), DAYS[3]) == (None, None)


# --------------------------------------------------------------------------- attrition

# The slowest-healing position of each arm (T1, C1: the largest offsets) stops being
# photographed after day 1; on the last day C6 is not photographed and T6's photo is
# unreadable (the synthetic farm's own gaps), so they have left as of that day too.
DROPPED = {"T1", "C1"}


@pytest.mark.slow
@pytest.mark.parametrize("db", ["duckdb", "postgres"])
def test_positions_that_leave_are_counted_tested_and_the_effect_shown_three_ways(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    farm = _photos(synthetic_farm(), lambda p, d: not (p in DROPPED and d > DAYS[1]))
    project = dbt_workdir(farm.positions, tmp_path / "project")
    with _warehouse(db, tmp_path, request, "farm_attrition") as url:
        load_warehouse(url, farm)
        build = dbt_build(project, url)
        assert build.success, sorted(build.failed())
        data = _report(build)
        summary = attrition(data).filter(pl.col("disease_type") == "disease_0").row(0, named=True)

    # Expectations from the rows written (disease_0, active grades, active cropper).
    leaves: dict[tuple[str, object], list[int]] = {}
    for row in farm.active_grades():
        if row["disease_type"] == "disease_0":
            leaves.setdefault((row["position_id"], row["date"]), []).append(row["predicted_grade"])
    means = {key: statistics.fmean(values) for key, values in leaves.items()}
    dates = {p: sorted(d for q, d in means if q == p) for p, _ in means}
    latest = max(d for _, d in means)
    left = {p for p, ds in dates.items() if ds[-1] < latest}
    assert left == {"T1", "C1", "C6", "T6"}
    assert summary["latest_date"] == LAST_DAY
    assert (summary["treated_left"], summary["treated_positions"]) == (2, 7)
    assert (summary["control_left"], summary["control_positions"]) == (2, 7)

    def area(p: str) -> str:
        return "treated" if p.startswith("T") else "control"

    stayers = set(dates) - left
    differences = []
    for p in sorted(left):
        last = dates[p][-1]
        same_day = [means[s, last] for s in stayers if area(s) == area(p) and (s, last) in means]
        differences.append(means[p, last] - statistics.fmean(same_day))
    from scipy import stats

    test = stats.ttest_1samp(differences, 0.0)
    assert summary["leavers_tested"] == 4
    assert abs(summary["leavers_minus_stayers"] - statistics.fmean(differences)) < TOLERANCE
    assert abs(summary["difference_p_value"] - test.pvalue) < 1e-9

    def did(positions: set[str]) -> float:
        change = {p: means[p, dates[p][-1]] - means[p, dates[p][0]] for p in positions}
        arm = {a: [c for p, c in change.items() if area(p) == a] for a in ("treated", "control")}
        return statistics.fmean(arm["treated"]) - statistics.fmean(arm["control"])

    # Followed throughout = graded on the first and the last day = the stayers here; the
    # headline's estimate on the last day is over the same positions.
    assert abs(summary["effect_followed_throughout"] - did(stayers)) < TOLERANCE
    headline = data.effect.filter(
        (pl.col("disease_type") == "disease_0") & (pl.col("date") == LAST_DAY)
    )["effect"].item()
    assert abs(summary["effect_graded_on_latest"] - headline) < TOLERANCE
    assert abs(summary["effect_leavers_carried_forward"] - did(set(dates))) < TOLERANCE
    assert summary["followed_ci_low"] < summary["effect_followed_throughout"]

    from farm_platform.report.render import render_report

    page = render_report(data)
    assert "Positions left the trial" in page
    assert f"not graded on {LAST_DAY}): 2 of 7 treated, 2 of 7 control" in page
    # In the headline too, whatever the test of leavers against stayers says (issue 43).
    line = next(text for text in summary_lines(data) if text.startswith("disease_0"))
    assert "Positions left: 2 of 7 treated and 2 of 7 control" in line, line
    assert f"the leavers graded {summary['leavers_minus_stayers']:+.3f} against" in line
    assert "Sensitivity" in line and "carried forward" in line
    assert html.escape(line) in page


def test_attrition_words_when_the_leavers_cannot_be_tested() -> None:
    # Leavers whose differences from the stayers are all the same (no spread), and one
    # leaver alone: no test, said in words, never a p-value of 0.
    from farm_platform.report.attrition import attrition_lines, one_sample

    assert one_sample([0.25, 0.25])["p"] is None
    assert one_sample([0.25])["p"] is None
    base = {
        "disease_type": "disease_3",
        "latest_date": LAST_DAY,
        "treated_positions": 7,
        "treated_left": 1,
        "control_positions": 7,
        "control_left": 1,
        "leavers_minus_stayers": 0.25,
        "difference_ci_low": None,
        "difference_ci_high": None,
        "difference_p_value": None,
        "effect_followed_throughout": None,
        "effect_leavers_carried_forward": None,
    }
    frame = pl.DataFrame(
        [{**base, "leavers_tested": 2}, {**base, "disease_type": "disease_4", "leavers_tested": 1}]
    )
    same, alone = attrition_lines(frame)
    assert "no spread to test with" in same and "p =" not in same
    assert "one leaver: too few to test" in alone
