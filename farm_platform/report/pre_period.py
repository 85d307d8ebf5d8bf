"""What the report says about a pre-period (FARM_TREATMENT_START): the line that says how
the effect is estimated, and per disease the pre-trend test, worded as Roth (2022) asks:
a passed test is no proof that the arms' trends were parallel."""

from __future__ import annotations

import polars as pl

from farm_platform.report.data import ReportData
from farm_platform.report.effect_trend import DETECTABLE_POWER, pre_trend_tests


def pre_period_line(data: ReportData) -> str | None:
    """The report's sentence on the pre-period; None when the trial has none."""
    if data.trend.is_empty():
        return None
    start = data.trend["treatment_start"][0]
    pre_dates = data.trend.filter(pl.col("period") == "pre")["date"].unique().len()
    head = f"Pre-period: treatment begins on {start}; {pre_dates + 1} pre-treatment day(s)"
    if data.trend.filter(pl.col("period") == "treatment").is_empty():
        return (
            f"{head} so far. Until then nothing about the medicine is estimated or decided: "
            "the looks below are placebo looks (treated minus control before any treatment), "
            "which test whether the arms' trends already differed."
        )
    return (
        f"{head}. The effect is net of each position's pre-treatment trend (its straight "
        "line through its pre-period grades, extrapolated; positions with fewer than two "
        "pre-period days are left out), and looks are counted from the day treatment began: "
        "the decision rule spends its error budget on these looks only, never on the "
        "unadjusted estimate or the placebo looks as well. This removes a difference in "
        "progression between the arms that held before treatment, not one that began with "
        "it, and the extrapolated trends widen the intervals."
    )


def pre_trend_sentences(data: ReportData) -> dict[str, str]:
    """Per disease, its pre-trend test in words (empty without a pre-period)."""
    if data.trend.is_empty():
        return {}
    sentences = {}
    for row in pre_trend_tests(data.trend).iter_rows(named=True):
        head = (
            f"Pre-trend test over the pre-period (placebo look on {row['date']}, "
            f"{row['days_since_start']} days after the first): treated minus control change "
            f"{row['effect']:+.3f} grade"
        )
        if row["p_value"] is None:
            sentences[row["disease_type"]] = (
                f"{head}, no interval (too few positions or no spread): the pre-period cannot "
                "say whether the arms' trends differed"
            )
            continue
        head += f", 95 % CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], p = {row['p_value']:.3f}"
        if row["rejects"]:
            sentences[row["disease_type"]] = (
                f"{head}: the arms' trends differed before treatment. The estimate above removes "
                "each position's straight-line pre-treatment trend; if the difference was not a "
                "straight line, it remains in the effect"
            )
        else:
            sentences[row["disease_type"]] = (
                f"{head}: no difference detected, which does NOT show that the trends were "
                f"parallel: this test finds a difference of {row['detectable']:.3f} grade over "
                f"the pre-period only {DETECTABLE_POWER:.0%} of the time (Roth 2022, pretest "
                "with caution); the decision does not depend on it"
            )
    return sentences
