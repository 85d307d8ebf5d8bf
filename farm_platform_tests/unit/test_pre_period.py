"""A trial with a pre-period (issue 43 part 3): FARM_TREATMENT_START, the placebo looks and
pre-trend test, the trend-adjusted estimate (its polars mirror; dbt's equals it in
test_trial_design's blocked dbt build) and what the headline says of them."""

import datetime as dt

import polars as pl
import pytest

from farm_platform import config
from farm_platform.report.data import ReportData, decided_effect
from farm_platform.report.effect_frame import treatment_effect_frame
from farm_platform.report.effect_trend import pre_trend_tests, trend_adjusted_frame
from farm_platform.report.headline import summary_lines
from farm_platform.report.pre_period import pre_period_line
from farm_platform.resources.trial_calendar import TrialCalendarResource
from farm_platform_dev.simulate import FarmConfig, true_position_day


def treatment_start() -> dt.date | None:
    """The setting as the analytics location reads it when its definitions load."""
    return TrialCalendarResource.from_environment().calendar().treatment_start


def test_the_treatment_start_setting_is_a_date_or_unset(monkeypatch):
    monkeypatch.delenv(config.FARM_TREATMENT_START, raising=False)
    assert treatment_start() is None
    monkeypatch.setenv(config.FARM_TREATMENT_START, "2026-06-05")
    assert treatment_start() == dt.date(2026, 6, 5)
    monkeypatch.setenv(config.FARM_TREATMENT_START, "5 June")
    with pytest.raises(config.ConfigError, match="FARM_TREATMENT_START='5 June' is not a date"):
        treatment_start()


def test_the_simulated_pre_period_carries_no_effect():
    with pytest.raises(ValueError, match="pre_days=3 must be from 0 to days - 1"):
        FarmConfig(days=3, pre_days=3)
    farm = FarmConfig(positions=24, days=7, seed=3, effect=0.3, layout="randomised", pre_days=4)
    assert farm.treatment_start == dt.date(2026, 6, 5)
    trend = trend_adjusted_frame(true_position_day(farm), farm.treatment_start)
    placebo = trend.filter(pl.col("period") == "pre")
    assert placebo["date"].max() == dt.date(2026, 6, 4)
    assert placebo["effect"].abs().max() < 0.1
    treated = trend.filter(pl.col("period") == "treatment")
    assert treated["days_since_start"].unique().sort().to_list() == [1, 2, 3]
    assert treated.filter(pl.col("days_since_start") == 3)["effect"].mean() < -0.3


def _farms(gradient: float, seeds: int = 6) -> list[tuple[pl.DataFrame, pl.DataFrame]]:
    """No-effect two-area farms, 4 pre-period days of 9, under a progression gradient:
    each farm's plain estimate from the trial's first day and its trend-adjusted frame."""
    out = []
    for seed in range(seeds):
        farm = FarmConfig(
            positions=24, days=9, seed=seed, effect=0.0, gradient=gradient, pre_days=4
        )
        rows = true_position_day(farm)
        out.append((treatment_effect_frame(rows), trend_adjusted_frame(rows, farm.treatment_start)))
    return out


def test_the_trend_adjustment_removes_a_gradient_the_pre_period_shows():
    # A gradient as large as the effect benchmark's unit (0.15/day): the plain estimate
    # reads it as a strong effect; net of each position's pre-treatment trend it is gone,
    # and the pre-trend test sees it on every farm.
    farms = _farms(0.15)
    last = dt.date(2026, 6, 9)
    plain = [p.filter(pl.col("date") == last)["effect"].mean() for p, _ in farms]
    adjusted = [t.filter(pl.col("date") == last)["effect"].mean() for _, t in farms]
    assert sum(plain) / len(plain) < -0.6
    assert abs(sum(adjusted) / len(adjusted)) < 0.1
    assert all(pre_trend_tests(t)["rejects"].all() for _, t in farms)


def _data(trend: pl.DataFrame, day: dt.date) -> ReportData:
    trend = trend.filter(pl.col("date") <= day)
    empty = pl.DataFrame()
    effect = decided_effect(pl.DataFrame(schema=trend.drop("period").schema), trend)
    return ReportData(
        day,
        effect.drop("treatment_start", "days_from_treatment_start"),
        empty,
        empty,
        [],
        empty,
        empty,
        trend=trend,
    )


def test_the_headline_shows_the_pre_period_and_the_pre_trend_test():
    (_, parallel), *_ = _farms(0.0, seeds=1)
    (_, diverging), *_ = _farms(0.15, seeds=1)

    before = _data(parallel, dt.date(2026, 6, 4))
    assert pre_period_line(before).startswith(
        "Pre-period: treatment begins on 2026-06-05; 4 pre-treatment day(s) so far. Until "
        "then nothing about the medicine is estimated or decided"
    )
    lines = summary_lines(before)
    assert len(lines) == 5
    assert lines[0].startswith(
        "disease_0: no estimate yet: treatment begins on 2026-06-05, so no effect of the "
        "medicine is estimated yet. Pre-trend test over the pre-period (placebo look on "
        "2026-06-04, 3 days after the first)"
    )

    after = _data(parallel, dt.date(2026, 6, 9))
    assert "The effect is net of each position's pre-treatment trend" in pre_period_line(after)
    passed = [line for line in summary_lines(after) if "no difference detected" in line]
    assert passed, summary_lines(after)
    assert "Effect" in passed[0] and "after 5 days" in passed[0]
    assert "does NOT show that the trends were parallel" in passed[0]
    assert "only 80% of the time (Roth 2022, pretest with caution)" in passed[0]

    differed = summary_lines(_data(diverging, dt.date(2026, 6, 9)))
    assert all("the arms' trends differed before treatment" in line for line in differed)
    assert pre_period_line(_data(parallel.clear(), dt.date(2026, 6, 9))) is None


def test_the_report_page_shows_the_pre_period_and_its_placebo_looks():
    import dataclasses

    from report_support import report_data

    from farm_platform.report.render import render_report

    (_, trend), *_ = _farms(0.0, seeds=1)
    with_pre = dataclasses.replace(
        report_data(ungraded=[]), trend=trend.filter(pl.col("date") <= dt.date(2026, 6, 4))
    )
    page = render_report(with_pre)
    assert "Pre-period: treatment begins on 2026-06-05; 4 pre-treatment day(s) so far." in page
    assert "<th>days_from_treatment_start</th>" in page and "<td>-1</td>" in page
    assert "Pre-trend test over the pre-period" in page
    assert "Pre-period" not in render_report(report_data(ungraded=[]))


def test_a_pre_trend_test_without_an_interval_says_the_pre_period_cannot_tell():
    # Too few positions in an arm, or no spread: the placebo look has no standard error,
    # and the headline says the pre-period cannot answer rather than "no difference".
    (_, trend), *_ = _farms(0.0, seeds=1)
    pre = pl.col("period") == "pre"
    no_interval = trend.with_columns(
        std_error=pl.when(pre).then(None).otherwise(pl.col("std_error")),
        df=pl.when(pre).then(None).otherwise(pl.col("df")),
    )
    lines = summary_lines(_data(no_interval, dt.date(2026, 6, 9)))
    assert len(lines) == 5
    assert all(
        "no interval (too few positions or no spread): the pre-period cannot say whether the "
        "arms' trends differed" in line
        for line in lines
    ), lines
    assert not any("no difference detected" in line for line in lines)
