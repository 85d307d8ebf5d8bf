"""The effect benchmark's design cases (issue 43), run by `effect_recovery.py --layouts`.

The same locations (two areas of a grid, the founding map) under three layouts: two areas
allocated by hand, arms randomised, and arms randomised within pairs of neighbours
(`farm-platform trial design`). A spatial progression gradient runs across the field: the
west area's centre progresses faster than the east's by `share` × the medicine's effect
per day, so under two areas it reads as the medicine working. The blocked layout is scored
twice: with the blocked analysis (within-block differences, what the report does) and
with the unblocked Welch analysis of the same farms, to measure what the blocks buy.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from farm_platform.analytics.effect_frame import treatment_effect_frame
from farm_platform.analytics.effect_stats import add_decisions
from farm_platform.dev.simulate import FarmConfig, true_position_day
from farm_platform.dev.simulate.dynamics import population_effect

# (layout, analysed within its blocks)
LAYOUT_CASES = (
    ("two-areas", False),
    ("randomised", False),
    ("blocks", True),
    ("blocks", False),
)


def layout_effects(
    config: FarmConfig, estimand: list[float], blocked_analysis: bool
) -> pl.DataFrame:
    """One farm's looks, each decided by the headline's rule as the report that first
    shows it would (no trial events: a look's rows are final when shown), beside the
    estimand of its day."""
    rows = true_position_day(config)
    if not blocked_analysis:
        rows = rows.with_columns(block=pl.lit(None, dtype=pl.String))
    decided = add_decisions(treatment_effect_frame(rows), diseases=5)
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
) -> list[tuple[str, ...]]:
    """Every layout case at every gradient share (of `unit`, the medicine's effect per day),
    printed by `summarize` (effect_recovery.summarize_cases: coverage, bias and false or
    right-way 'conclusive' trials, with their standard errors); returns summarize's rows."""
    table: list[tuple[str, ...]] = []
    for share in shares:
        for layout, blocked in LAYOUT_CASES:
            label = f"{layout}{'' if blocked or layout != 'blocks' else ' (Welch)'}"
            label += f", gradient {share:.0%}"
            frames = []
            for effect in effects:
                estimand = [float(x) for x in population_effect(effect, days)]
                for seed in range(seeds):
                    config = FarmConfig(
                        positions=positions,
                        days=days,
                        seed=seed,
                        effect=effect,
                        layout=layout,
                        gradient=share * unit,
                    )
                    frames.append(layout_effects(config, estimand, blocked))
            table += summarize(label, pl.concat(frames, how="diagonal_relaxed"))
    return table
