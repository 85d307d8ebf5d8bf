"""The effect benchmark's design cases (issue 43), run by `effect_recovery.py --layouts`.

The same locations (two areas of a grid, the founding map) under three layouts: two areas
allocated by hand, arms randomised, and arms randomised within pairs of neighbours
(`farm-platform trial design`). A spatial progression gradient runs across the field: the
west area's centre progresses faster than the east's by `share` × the medicine's effect
per day, so under two areas it reads as the medicine working. The blocked layout is scored
twice: with the blocked analysis (within-block differences, what the report does) and
with the unblocked Welch analysis of the same farms, to measure what the blocks buy.

With a pre-period (`--pre-days P`, issue 43 part 3) each farm has P days before treatment
and `--days` from it, and every layout is scored by the report's rule on the effect net of
each position's pre-treatment trend (effect_trend.trend_adjusted_frame, looks counted from
treatment's first day); two areas also without the adjustment (the plain estimate from the
last pre-period day, the same looks), to show what the adjustment buys and costs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import polars as pl

from farm_platform.report.effect_frame import treatment_effect_frame
from farm_platform.report.effect_stats import add_decisions
from farm_platform.report.effect_trend import trend_adjusted_frame
from farm_platform_dev.simulate import FarmConfig, true_position_day
from farm_platform_dev.simulate.dynamics import population_effect

# (layout, analysed within its blocks)
LAYOUT_CASES = (
    ("two-areas", False),
    ("randomised", False),
    ("blocks", True),
    ("blocks", False),
)
LAYOUT_NAMES = ("two-areas", "randomised", "blocks")


def pre_period_cases(
    pre_days: int, layouts: Sequence[str] = LAYOUT_NAMES
) -> list[tuple[str, bool, bool]]:
    """(layout, analysed within its blocks, trend-adjusted): LAYOUT_CASES without a
    pre-period; with one, two areas plain and trend-adjusted, and the randomised layouts
    trend-adjusted (what the report decides on). Only the `layouts` named."""
    if not pre_days:
        cases = [(layout, blocked, False) for layout, blocked in LAYOUT_CASES]
    else:
        cases = [("two-areas", False, False)] + [
            (layout, blocked, True) for layout, blocked in LAYOUT_CASES
        ]
    return [case for case in cases if case[0] in layouts]


# A farm's true grades, shared by the cases that score the same farm (two areas plain and
# adjusted, blocks blocked and Welch): the simulation is half of a case's time.
@functools.lru_cache(maxsize=4096)
def _farm_rows(config: FarmConfig) -> pl.DataFrame:
    return true_position_day(config)


def layout_effects(
    config: FarmConfig, estimand: list[float], blocked_analysis: bool, adjusted: bool = False
) -> pl.DataFrame:
    """One farm's looks, each decided by the headline's rule as the report that first
    shows it would (no trial events: a look's rows are final when shown), beside the
    estimand of its look. With a pre-period: the trend-adjusted looks (`adjusted`) or the
    plain estimate from the last pre-period day, both numbered from treatment's first day."""
    rows = _farm_rows(config)
    if not blocked_analysis:
        rows = rows.with_columns(block=pl.lit(None, dtype=pl.String))
    if adjusted:
        trend = trend_adjusted_frame(rows, config.dates[config.pre_days])
        effect = trend.filter(pl.col("period") == "treatment").drop(
            "period", "treatment_start", "days_from_treatment_start"
        )
    else:
        effect = treatment_effect_frame(
            rows.filter(pl.col("date") >= config.dates[max(config.pre_days - 1, 0)])
        )
    decided = add_decisions(effect, diseases=5)
    return decided.with_columns(
        decision=pl.col("sequential_significant"),
        decided_effect=pl.col("effect"),
        seed=pl.lit(config.seed),
        true_effect=pl.lit(config.effect),
        estimand=pl.col("days_since_start").map_elements(
            lambda k: estimand[k], return_dtype=pl.Float64
        ),
    )


def run_layouts(
    seeds: int,
    positions: int,
    days: int,
    effects: tuple[float, ...],
    shares: list[float],
    summarize: Callable[[str, pl.DataFrame], list[tuple[str, ...]]],
    unit: float,
    pre_days: int = 0,
    layouts: Sequence[str] = LAYOUT_NAMES,
) -> list[tuple[str, ...]]:
    """Every layout case at every gradient share (of `unit`, the medicine's effect per day),
    printed by `summarize` (effect_recovery.summarize_cases: coverage, bias and false or
    right-way 'conclusive' trials, with their standard errors), each row with the mean
    standard error of the last day's estimate added (what an analysis costs in power: the
    positions it needs grow with its square); returns those rows. `pre_days`: days before
    treatment (then `days` more from it), the cases as pre_period_cases names them for
    `layouts`."""
    table: list[tuple[str, ...]] = []
    for share in shares:
        for layout, blocked, adjusted in pre_period_cases(pre_days, layouts):
            label = f"{layout}{'' if blocked or layout != 'blocks' else ' (Welch)'}"
            if pre_days:
                label += f", {pre_days} pre-days, " + ("trend-adjusted" if adjusted else "plain")
            label += f", gradient {share:.0%}"
            frames = []
            for effect in effects:
                # Look k is k days after the last untreated day (the first date, or the last
                # pre-period day), with both arms alike on it: the same estimand either way.
                estimand = [float(x) for x in population_effect(effect, days + (pre_days > 0))]
                for seed in range(seeds):
                    config = FarmConfig(
                        positions=positions,
                        days=days + pre_days,
                        seed=seed,
                        effect=effect,
                        layout=layout,
                        gradient=share * unit,
                        pre_days=pre_days,
                    )
                    frames.append(layout_effects(config, estimand, blocked, adjusted))
            results = pl.concat(frames, how="diagonal_relaxed")
            table += [
                (*row, _last_day_std_error(results, float(row[1])))
                for row in summarize(label, results)
            ]
    return table


def _last_day_std_error(results: pl.DataFrame, effect: float) -> str:
    """Under `effect`: the mean standard error of each disease's last-day estimate, and in
    brackets the standard deviation of those estimates over the farms, which it should
    match when the interval is right (a bias, not a variance, then explains poor coverage)."""
    rows = results.filter(pl.col("true_effect").round(6) == round(effect, 6))
    last = rows.filter(pl.col("date") == pl.col("date").max().over("seed", "disease_type"))
    errors = last.drop_nulls("std_error")
    return f"{errors['std_error'].mean():.4f} ({errors['effect'].std():.4f})"
