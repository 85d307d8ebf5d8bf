"""The report's headline and summary: the design, the effect table, the calls in words for
few positions, no baseline, daily looks and held-back partitions.
"""

import dataclasses
import html
import re

import polars as pl
import pytest
from report_support import design_row, report_data

from farm_platform.report.data import (
    ReportData,
)
from farm_platform.report.headline import design_line, overall_answer, summary_lines
from farm_platform.report.render import render_report


@pytest.mark.parametrize(
    ("design", "in_design_line", "in_call", "answer"),
    [
        (
            "randomised in blocks",
            "randomised within 4 blocks of neighbouring positions (seed 42)",
            "disease_0: treated heal faster: conclusive, valid",
            "In short: treated plants heal faster from disease_0; no conclusive answer yet for "
            "the other 1 disease.",
        ),
        (
            "randomised",
            "arms randomised (seed 42), no blocks",
            "disease_0: treated heal faster: conclusive, valid",
            "In short: treated plants heal faster from disease_0; no conclusive answer yet for "
            "the other 1 disease.",
        ),
        (
            "allocated (two areas)",
            "Design: two areas, control and treated allocated by hand (not randomised): the "
            "effect is the medicine plus any difference in progression between the two areas",
            "disease_0: the treated area heals faster than the control area: conclusive (that "
            "is the medicine plus any difference in progression between the two areas), valid",
            "In short: the treated area heals faster from disease_0 than the control area; that "
            "is the medicine plus any difference in progression between the two areas, which "
            "this design cannot tell apart; no conclusive answer yet for the other 1 disease.",
        ),
        (
            "allocated in blocks",
            "Design: 4 blocks, arms allocated by hand (not randomised): the effect is the "
            "medicine plus any difference between the positions chosen for each arm",
            "disease_0: the treated area heals faster than the control area: conclusive (that "
            "is the medicine plus any difference between the positions chosen for each arm)",
            "In short: the treated area heals faster from disease_0 than the control area; that "
            "is the medicine plus any difference between the positions chosen for each arm, "
            "which this design cannot tell apart; no conclusive answer yet for the other 1 "
            "disease.",
        ),
        (
            None,
            "Design: not recorded, taken as two areas, control and treated allocated by hand",
            "disease_0: the treated area heals faster than the control area: conclusive (that "
            "is the medicine plus any difference in progression between the two areas)",
            "In short: the treated area heals faster from disease_0 than the control area; that "
            "is the medicine plus any difference in progression between the two areas, which "
            "this design cannot tell apart; no conclusive answer yet for the other 1 disease.",
        ),
    ],
)
def test_the_headline_names_the_design_and_words_its_calls_by_it(
    design, in_design_line, in_call, answer
):
    data = dataclasses.replace(report_data([]), design=design_row(design) if design else None)
    line = design_line(data)
    assert in_design_line in line
    assert ("farm-platform trial design" in line) == (not (design or "").startswith("randomised"))
    assert summary_lines(data)[0].startswith(in_call)
    assert overall_answer(data) == answer
    page = render_report(data)
    # In the headline: after the one-sentence answer, before the per-disease decisions.
    assert page.index(answer) < page.index(html.escape(line)) < page.index("Decision per disease")


def test_the_effect_table_shows_the_blocked_estimator_and_its_blocks():
    data = report_data([])
    blocked = data.effect.with_columns(
        estimator=pl.Series(["within blocks", "welch"]),
        n_blocks=pl.Series([4, None], dtype=pl.Int64),
        n_outside_blocks=pl.Series([1, None], dtype=pl.Int64),
    )
    data = dataclasses.replace(data, effect=blocked)
    page = render_report(data)
    assert "<td>within blocks</td><td>4</td><td>1</td>" in page
    assert "<td>welch</td><td></td><td></td>" in page and "None" not in page
    line = summary_lines(data)[0]
    assert "; within 4 blocks (1 position(s) graded that day are in a block" in line
    one_block = blocked.with_columns(
        n_blocks=pl.lit(1, dtype=pl.Int64), ci_low=pl.lit(None, dtype=pl.Float64)
    )
    line = summary_lines(dataclasses.replace(data, effect=one_block))[0]
    assert line == (
        "disease_0: no conclusion on 2026-06-03: 1 block(s) with both arms graded since their "
        "first day; a blocked estimate needs at least 2 to build an interval"
    )


def test_report_is_self_contained_html_with_plots_and_effects():
    page = render_report(report_data(ungraded=["P003"]))
    image = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert image and len(image.group(1)) > 1000  # an embedded plot, not a link
    assert "http://" not in page and "https://" not in page
    assert "-0.800" in page and "[-1.050, -0.550]" in page
    assert "P003" in page and "no grades for 2026-06-03" in page  # says what is missing
    assert "disease_0_grader" in page


@pytest.mark.parametrize("ungraded", [[], ["P001", "P002"]])
def test_summary_names_direction_and_significance(ungraded):
    lines = summary_lines(report_data(ungraded))
    assert lines[0].startswith("disease_0: treated heal faster: conclusive")
    assert "Effect -0.800 grade after 2 days" in lines[0]
    assert "no significant difference" in lines[1]
    page = render_report(report_data(ungraded))
    assert ("no grades for" in page) == bool(ungraded)
    # One sentence at the top says the same as the headline's lines.
    answer = (
        "In short: treated plants heal faster from disease_0; "
        "no conclusive answer yet for the other 1 disease."
    )
    assert overall_answer(report_data(ungraded)) == answer
    assert f"<strong>{answer}</strong>" in page


def test_an_arm_without_positions_is_said_not_crashed_on():
    data = report_data(ungraded=[])
    no_treated = data.effect.with_columns(
        n_treated=pl.when(pl.col("disease_type") == "disease_1").then(0).otherwise(4),
        effect=pl.when(pl.col("disease_type") == "disease_1").then(None).otherwise(-0.8),
        ci_low=pl.when(pl.col("disease_type") == "disease_1").then(None).otherwise(-1.05),
        ci_high=pl.when(pl.col("disease_type") == "disease_1").then(None).otherwise(-0.55),
        significant=pl.when(pl.col("disease_type") == "disease_1").then(None).otherwise(True),
    )
    data = dataclasses.replace(data, effect=no_treated)
    lines = summary_lines(data)
    assert lines[0].startswith("disease_0: treated heal faster")
    assert lines[1] == (
        "disease_1: no estimate on 2026-06-03: no treated positions graded since their first day"
    )
    assert "disease_1" in render_report(data)  # the page renders too


def one_disease(data: ReportData, **values: object) -> ReportData:
    """`data` with disease_1's row of the effect replaced by `values` (others kept)."""
    row = data.effect.filter(pl.col("disease_type") == "disease_1").to_dicts()[0] | values
    effect = pl.concat(
        [
            data.effect.filter(pl.col("disease_type") != "disease_1"),
            pl.DataFrame([row], schema=data.effect.schema),
        ]
    )
    return dataclasses.replace(data, effect=effect)


def test_the_headline_uses_the_rule_valid_under_daily_looks():
    # Day 2, two diseases: the day's interval [-0.545, -0.055] excludes 0, but the
    # always-valid one (0.05 · 6/(π² · 4) spent, split over 2 diseases) does not.
    data = one_disease(
        report_data(ungraded=[]), effect=-0.3, ci_low=-0.545, ci_high=-0.055, significant=True
    )
    line = summary_lines(data)[1]
    assert line.startswith("disease_1: not conclusive yet")
    assert "treated heal faster" not in line
    low, high = re.search(r"always-valid 95 % interval \[([-+.\d]+), ([-+.\d]+)\]", line).groups()
    assert float(low) < -0.545 and float(high) > 0
    page = render_report(data)
    assert "valid under daily looks" in page
    # The references are what is implemented (issue 27): a union-bound spending sequence,
    # not the Lan–DeMets spending function, which the footnote says it is not.
    assert "Darling, D. A. &amp; Robbins" in page and "Holm, S. (1979)" in page
    assert "not the Lan–DeMets spending function" in page
    assert "sequential_significant" in page and "holm_significant" in page


@pytest.mark.parametrize(
    ("n_treated", "n_control", "said"),
    [(1, 4, "only one treated position"), (3, 1, "only one control position")],
)
def test_one_position_in_an_arm_shows_no_number(n_treated, n_control, said):
    # dbt computes a difference from one position, but no interval: nothing to decide on.
    data = one_disease(
        report_data(ungraded=[]),
        n_treated=n_treated,
        n_control=n_control,
        effect=-0.987,
        std_error=None,
        df=None,
        ci_low=None,
        ci_high=None,
        significant=False,
    )
    line = summary_lines(data)[1]
    assert line.startswith("disease_1: no conclusion on 2026-06-03") and said in line
    assert "0.987" not in line and "0.987" not in render_report(data)


def test_no_baseline_and_no_grades_are_said_in_words():
    data = report_data(ungraded=[])
    # disease_2 was graded, but on one day only: no change from a first day exists.
    severity = data.severity.with_columns(disease_type=pl.lit("disease_2"))
    lines = summary_lines(dataclasses.replace(data, severity=severity))
    assert lines[-1].startswith("disease_2: no estimate yet") and "baseline" in lines[-1]
    empty = dataclasses.replace(data, effect=data.effect.clear(), severity=data.severity.clear())
    assert summary_lines(empty) == ["No estimate yet: no grades."]
    assert "No estimate yet" in render_report(empty)


def test_few_positions_are_said_plainly():
    data = one_disease(
        report_data(ungraded=[]), n_treated=2, n_control=2, df=1.2, ci_low=-2.5, ci_high=2.6
    )
    line = summary_lines(data)[1]
    assert "Few positions (2 treated, 2 control)" in line
    assert "Welch df 1.2 is rounded down to 1" in line and "conservative" in line
    assert "Few positions" not in summary_lines(data)[0]  # df 6


def test_report_lists_the_partitions_held_back_by_data_quality_checks():
    data = report_data(ungraded=[])
    held = pl.DataFrame(
        {
            "date": [data.day],
            "position_id": ["P007"],
            "disease_type": ["disease_3"],
            "failed_checks": ["disease_3_grades/grades_valid"],
        }
    )
    page = render_report(dataclasses.replace(data, held_back=held))
    assert "1 photo × disease(s)" in page and "held back" in page
    assert "P007" in page and "disease_3_grades/grades_valid" in page
    clean = render_report(data)
    assert "Nothing was held back" in clean and "P007" not in clean
