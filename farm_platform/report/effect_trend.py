"""The trend_adjusted_effect mart in polars (a mirror of dbt_project/models/marts/
trend_adjusted_effect.sql, for the effect benchmark), and the pre-trend test the report
shows from that mart's placebo looks.

With a pre-period (FARM_TREATMENT_START), two things are estimated per disease:
- placebo looks (period 'pre'): treatment_effect's estimator on the pre-period alone; the
  last one, over the whole pre-period, is the pre-trend test (event-study leads);
- the effect net of each position's pre-treatment trend (period 'treatment'): a position's
  least-squares line through its pre-period mean grades, extrapolated, is subtracted from
  its mean grade on each treatment date; the arms' mean adjusted changes are then compared
  as treatment_effect does. Looks count from the day treatment begins (look 1).

Roth (2022), "Pretest with caution: event-study estimates after testing for parallel
trends" (AER: Insights 4(3)): a pre-trend test has little power, and a passed test is no
proof that trends were parallel; the report therefore gives the smallest trend difference
the test could have detected and never uses the test to choose an estimator.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from farm_platform.report.effect_frame import (
    EFFECT_FRAME_COLUMNS,
    effect_from_changes,
    treatment_effect_frame,
    with_block,
)
from farm_platform.report.effect_stats import ALPHA, _t_quantile, tabulated_df

PERIOD_COLUMNS = ("period", "treatment_start", "days_from_treatment_start")
# The power at which the report states the smallest pre-trend the test could detect.
DETECTABLE_POWER = 0.8
PRETEST_REFERENCE = (
    "Roth, J. (2022). Pretest with caution: event-study estimates after testing for "
    "parallel trends. AER: Insights 4(3), 305–322."
)


def trend_adjusted_frame(position_day: pl.DataFrame, treatment_start: dt.date) -> pl.DataFrame:
    """trend_adjusted_effect from position-day means (treatment_effect_frame's input): the
    pre-period's placebo looks and the trend-adjusted treatment looks, dbt's columns but
    `design`. A position with fewer than two pre-period dates has no trend to remove and is
    left out of the adjusted estimate."""
    own = ["disease_type", "position_id"]
    rows = with_block(position_day).with_columns(position_first_date=pl.col("date").min().over(own))
    rows = rows.with_columns(x=(pl.col("date") - pl.col("position_first_date")).dt.total_days())
    pre = rows.filter(pl.col("date") < treatment_start)
    x, y = pl.col("x").cast(pl.Float64), pl.col("mean_grade")
    trends = (
        pre.group_by(own)
        .agg(
            pre_dates=pl.len(),
            slope=((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum(),
            x_mean=x.mean(),
            y_mean=y.mean(),
        )
        .filter(pl.col("pre_dates") >= 2)
    )
    adjusted = (
        rows.filter(pl.col("date") >= treatment_start)
        .join(trends, on=own)
        .with_columns(
            change=y - (pl.col("y_mean") + pl.col("slope") * (x - pl.col("x_mean"))),
        )
    )
    start = pl.lit(treatment_start, dtype=pl.Date)
    since = (pl.col("date") - start).dt.total_days()
    placebo = treatment_effect_frame(pre.drop("position_first_date", "x")).with_columns(
        period=pl.lit("pre"), treatment_start=start, days_from_treatment_start=since
    )
    treated = effect_from_changes(adjusted).with_columns(
        period=pl.lit("treatment"),
        treatment_start=start,
        days_from_treatment_start=since,
        first_date=start,
        days_since_start=since + 1,
    )
    columns = [*PERIOD_COLUMNS, "disease_type", *EFFECT_FRAME_COLUMNS]
    return pl.concat(
        [placebo.select(columns), treated.select(columns)], how="vertical_relaxed"
    ).sort("disease_type", "date")


def pre_trend_tests(trend: pl.DataFrame) -> pl.DataFrame:
    """Per disease, the pre-trend test: the last placebo look (the arms' difference in
    change over the whole pre-period), its 95 % interval and p-value, whether it rejects
    parallel trends, and `detectable`: the smallest difference the test finds with
    DETECTABLE_POWER (null without an interval)."""
    from farm_platform.report.effect_stats import _p_value

    pre = trend.filter(pl.col("period") == "pre")
    if pre.is_empty():
        return pre.with_columns(
            pl.lit(None, dtype=pl.Float64).alias("p_value"),
            pl.lit(None, dtype=pl.Boolean).alias("rejects"),
            pl.lit(None, dtype=pl.Float64).alias("detectable"),
        )
    last = pre.sort("date").group_by("disease_type").agg(pl.all().last()).sort("disease_type")
    rows = []
    for row in last.iter_rows(named=True):
        t_df = tabulated_df(row["df"])
        row["p_value"] = _p_value(row["effect"], row["std_error"], row["df"])
        row["rejects"] = None if row["p_value"] is None else row["p_value"] < ALPHA
        row["detectable"] = (
            None
            if t_df is None or row["std_error"] is None
            else (_t_quantile(1 - ALPHA / 2, t_df) + _t_quantile(DETECTABLE_POWER, t_df))
            * row["std_error"]
        )
        rows.append(row)
    return pl.DataFrame(rows)
