"""A trial that does not go to plan (issue 27): photos that arrive after their day's report,
through dbt on DuckDB and PostgreSQL, and the rule that decides a revised look.

The farm and what the tests share: trial_events_support.py.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from dbt_farm import (
    DAYS,
    TOLERANCE,
    dbt_build,
    load_warehouse,
    synthetic_farm,
)
from trial_events_support import photos_kept, trial_report, trial_warehouse

from farm_platform.report.data import (
    effect_decisions,
    revisions,
)
from farm_platform.report.effect_stats import add_decisions, carry_decisions, moved_since
from farm_platform.report.headline import summary_lines
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.farm import dbt_workdir

# --------------------------------------------------------------------------- late photos

# Half of day 2's photos (positions 4..6 of each area) arrive after day 2's report.
LATE = {(f"{area}{i}", DAYS[2]) for area in "CT" for i in (4, 5, 6)}


@pytest.mark.slow
@pytest.mark.parametrize("db", ["duckdb", "postgres"])
def test_late_photos_revise_a_reported_day_visibly_and_its_decision_stands(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    farm = synthetic_farm()
    project = dbt_workdir(farm.positions, tmp_path / "project")
    with trial_warehouse(db, tmp_path, request, "farm_late") as url:
        # Day 2's report, before the late half of its photos.
        load_warehouse(url, photos_kept(farm, lambda p, d: d <= DAYS[2] and (p, d) not in LATE))
        build = dbt_build(project, url)
        assert build.success, sorted(build.failed())
        first = trial_report(build, DAYS[2])
        assert revisions(first).is_empty()
        assert _materialize_report(url, tmp_path / "reports", DAYS[2]).exists()
        before = effect_decisions(first)
        assert set(before["decided_on"]) == {DAYS[2]}
        assert not before["revised"].any()

        # The late photos of day 2 and day 3's photos, then day 3's report.
        stamp = datetime.now(UTC)
        arrived = photos_kept(farm, lambda p, d: (p, d) in LATE or d == DAYS[3])
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
        data = trial_report(build, DAYS[3])
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
