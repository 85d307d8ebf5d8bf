"""Dropout in the headline (issue 43): how many left per arm, the leavers' last grades
against the stayers', and the tipping point of the call, with no significance gate."""

import datetime as dt

import polars as pl
import pytest

from farm_platform.report.attrition import attrition_summary, welch_effect
from farm_platform.report.data import ReportData
from farm_platform.report.dropout import dropout_sentence, tipping_point
from farm_platform.report.headline import summary_lines

FIRST, LATEST = dt.date(2026, 6, 1), dt.date(2026, 6, 6)
LEFT_ON = dt.date(2026, 6, 3)


def last_grades(treated_left: int = 2, control_left: int = 0) -> pl.DataFrame:
    """attrition.LAST_GRADES_SQL's rows for one disease: 8 positions per arm, the treated
    healing 0.5 grade more; the first `treated_left` / `control_left` of each arm were last
    photographed on LEFT_ON, sicker than the others."""
    rows = []
    for arm, shift in (("treated", -0.5), ("control", 0.0)):
        leavers = treated_left if arm == "treated" else control_left
        for i in range(8):
            left = i < leavers
            change = shift + 0.04 * (i % 4) + (0.3 if left else 0.0)
            rows.append(
                {
                    "disease_type": "disease_0",
                    "position_id": f"{arm[0].upper()}{i}",
                    "area": arm,
                    "first_date": FIRST,
                    "last_date": LEFT_ON if left else LATEST,
                    "last_mean_grade": 2.0 + change,
                    "last_change": change,
                    "trial_first_date": FIRST,
                    "latest_date": LATEST,
                }
            )
    return pl.DataFrame(rows)


def stayers(last: pl.DataFrame) -> pl.DataFrame:
    """The stayers' mean grade per arm on LEFT_ON (the treated ones had healed by then)."""
    return pl.DataFrame(
        {
            "disease_type": ["disease_0"] * 2,
            "date": [LEFT_ON] * 2,
            "area": ["control", "treated"],
            "stayers_mean_grade": [2.0, 1.6],
            "stayers": [8, 6],
        }
    )


def _called(last: pl.DataFrame, arm: str, delta: float, alpha: float) -> bool:
    records = last.to_dicts()
    changes = {
        a: [
            r["last_change"] + (delta if r["last_date"] < LATEST and r["area"] == arm else 0.0)
            for r in records
            if r["area"] == a
        ]
        for a in ("treated", "control")
    }
    effect = welch_effect(changes["treated"], changes["control"], alpha)
    return effect["ci_low"] > 0 or effect["ci_high"] < 0


@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_the_tipping_point_is_where_the_call_flips(alpha):
    last = last_grades()
    tipping = tipping_point(last, alpha)
    assert (tipping["arm"], tipping["leavers"], tipping["called"]) == ("treated", 2, True)
    delta = tipping["delta"]
    # Treated healed faster; the call falls if the treated leavers ended sicker (δ > 0).
    assert delta > 0
    assert _called(last, "treated", delta * 0.98, alpha)
    assert not _called(last, "treated", delta * 1.02, alpha)
    # A stricter level needs a smaller shift to lose the call.
    assert tipping_point(last, 0.0001)["delta"] < tipping_point(last, 0.05)["delta"]


def test_control_leavers_are_shifted_when_no_treated_position_left():
    tipping = tipping_point(last_grades(treated_left=0, control_left=3), 0.05)
    assert (tipping["arm"], tipping["leavers"]) == ("control", 3)
    assert tipping["delta"] < 0  # control leavers healthier would close the gap
    assert tipping_point(last_grades(0, 0), 0.05) is None


def test_the_sentence_names_leavers_per_arm_and_their_grades_without_a_test():
    last = last_grades(treated_left=2, control_left=1)
    row = attrition_summary(last, stayers(last)).row(0, named=True)
    sentence = dropout_sentence(row, last, 0.05)
    assert sentence.startswith(
        "Positions left: 2 of 8 treated and 1 of 8 control are not in the latest estimate"
    )
    assert f"graded {row['leavers_minus_stayers']:+.3f} against the stayers" in sentence
    assert "sicker than those who stayed" in sentence and "p =" not in sentence
    assert "Sensitivity (tipping point)" in sentence and "grade sicker than" in sentence
    nobody = attrition_summary(last_grades(0, 0), stayers(last))
    assert dropout_sentence(nobody.row(0, named=True), last_grades(0, 0), 0.05) is None


def test_the_headline_carries_the_dropout_of_every_disease_with_leavers():
    last = last_grades()
    effect = pl.DataFrame(
        {
            "disease_type": ["disease_0"],
            "date": [LATEST],
            "days_since_start": [5],
            "n_treated": [6],
            "n_control": [8],
            "effect": [-0.5],
            "std_error": [0.03],
            "df": [12.0],
            "ci_low": [-0.56],
            "ci_high": [-0.44],
            "significant": [True],
        }
    )
    data = ReportData(
        day=LATEST,
        effect=effect,
        severity=pl.DataFrame(),
        coverage=pl.DataFrame(),
        ungraded=[],
        models=pl.DataFrame(),
        agreement=pl.DataFrame(),
        last_grades=last,
        stayers=stayers(last),
    )
    (line,) = summary_lines(data)
    assert line.startswith("disease_0: the treated area heals faster than the control area")
    assert ". Positions left: 2 of 8 treated and 0 of 8 control" in line
    assert "Sensitivity" in line
