"""A trial that does not go to plan (issue 27): positions that leave the trial, through dbt
on DuckDB and PostgreSQL.

The farm and what the tests share: trial_events_support.py.
"""

from __future__ import annotations

import html
import statistics
from pathlib import Path

import polars as pl
import pytest
from dbt_farm import (
    DAYS,
    LAST_DAY,
    TOLERANCE,
    dbt_build,
    load_warehouse,
    synthetic_farm,
)
from trial_events_support import photos_kept, trial_report, trial_warehouse

from farm_platform.report.data import (
    attrition,
)
from farm_platform.report.headline import summary_lines
from farm_platform_dev.farm import dbt_workdir

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
    farm = photos_kept(synthetic_farm(), lambda p, d: not (p in DROPPED and d > DAYS[1]))
    project = dbt_workdir(farm.positions, tmp_path / "project")
    with trial_warehouse(db, tmp_path, request, "farm_attrition") as url:
        load_warehouse(url, farm)
        build = dbt_build(project, url)
        assert build.success, sorted(build.failed())
        data = trial_report(build)
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
