"""Does the report recover the medicine's effect, and how often does it cry wolf?

    python benchmarks/effect_recovery.py [--seeds 200] [--positions 12] [--days 5]
                                         [--effect 0.15] [--pipeline-seeds 0]
                                         [--no-effect-only] [--layouts [SHARE ...]]
                                         [--cases plain switch-restart switch-no-backfill
                                          switch-backfill late-photos dropout-informative
                                          dropout-random]

The estimand is the POPULATION effect: the expected difference in differences of mean true
grade (treated minus control, each position from its own first day) on new farms with the
simulator's parameters, `farm_platform_dev.simulate.dynamics.population_effect`. It is not the
difference in differences of the same leaves' true grades, which shares the farm's
position-to-position luck with the estimate and so makes any interval look right.

For every seed, a farm with the effect and one without go through the fast path: the true
grades of the leaves in view (no rendering, perfect detector and graders) and the
treatment_effect estimator in polars (`effect_frame.treatment_effect_frame`, shown equal to
the dbt model by test_dbt_layouts.py::test_the_benchmark_fast_path_gives_dbt_numbers), then the
report's decision rules (`effect_stats.add_decisions`). Grading error is therefore left
out; `--pipeline-seeds K` also runs K seeds per effect through the real detector, graders
and dbt (about a minute each) and scores their last day against the same estimand.

Printed: coverage of the 95 % interval and bias per effect; the share of farms whose
always-valid intervals cover the estimand on every disease-day; and how often each rule
calls "significant" per disease-day, per report (any disease on one day) and per trial
(any disease on any day: a reader who checks daily and stops at the first call). Under no
effect those are false-positive rates; under the effect, power (calls in the right
direction only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import tempfile
import warnings
from pathlib import Path

import polars as pl
from docs_table import add_write_docs_flag, write_docs
from effect_cases import CASES, case_effects, farm_rows

from farm_platform.report.effect_frame import treatment_effect_frame
from farm_platform.report.effect_stats import add_decisions
from farm_platform_dev.simulate import FarmConfig, true_position_day
from farm_platform_dev.simulate.dynamics import population_effect

RULES = {
    "fixed 95 % per disease-day": "significant",
    "Holm across diseases, per day": "holm_significant",
    "alpha spending over days (headline)": "sequential_significant",
}


def farm_effects(config: FarmConfig, estimand: list[float]) -> pl.DataFrame:
    """Every disease-day's estimate and decisions on one simulated farm, beside the
    estimand of its day (`estimand[k]`: k days after the first)."""
    effects = add_decisions(treatment_effect_frame(true_position_day(config)))
    return effects.with_columns(
        seed=pl.lit(config.seed),
        true_effect=pl.lit(config.effect),
        estimand=pl.col("days_since_start").map_elements(
            lambda k: estimand[k], return_dtype=pl.Float64
        ),
    )


def _rate(hits: pl.Series) -> str:
    """A share with its Monte Carlo standard error."""
    n, p = hits.len(), float(hits.cast(pl.Float64).mean() or 0.0)
    return f"{100 * p:5.1f} % ± {100 * math.sqrt(p * (1 - p) / n):.1f}"


def _calls(results: pl.DataFrame, column: str) -> pl.DataFrame:
    """Per row: the rule called it. Under an effect, only calls that treated heal faster
    count (power); under none, any call is a false positive."""
    call = pl.col(column).fill_null(False)
    right_way = (pl.col("true_effect") == 0) | (pl.col("effect") < 0)
    return results.with_columns(called=call & right_way)


def summarize(results: pl.DataFrame) -> list[tuple[str, ...]]:
    last_day = results.filter(pl.col("date") == pl.col("date").max().over("seed", "true_effect"))
    covered = (pl.col("ci_low") <= pl.col("estimand")) & (pl.col("estimand") <= pl.col("ci_high"))
    print("\nEstimate vs the population effect (95 % interval of each disease-day)")
    for effect, rows in results.group_by("true_effect", maintain_order=True):
        last = last_day.filter(pl.col("true_effect") == effect[0])
        error = last["effect"] - last["estimand"]
        print(
            f"  true effect {effect[0]:.2f}/day: estimand on the last day "
            f"{last['estimand'][0]:+.4f} grade; coverage all days "
            f"{_rate(rows.select(covered).to_series())}, last day "
            f"{_rate(last.select(covered).to_series())}; last-day bias {error.mean():+.4f} "
            f"(± {error.std() / math.sqrt(error.len()):.4f}), mean |error| {error.abs().mean():.4f}"
        )
    seq_covered = (pl.col("sequential_ci_low") <= pl.col("estimand")) & (
        pl.col("estimand") <= pl.col("sequential_ci_high")
    )
    print("\nAlways-valid simultaneous intervals: farms covered on EVERY disease-day")
    for effect, rows in results.group_by("true_effect", maintain_order=True):
        per_farm = rows.group_by("seed").agg(seq_covered.fill_null(True).all()).to_series(1)
        print(f"  true effect {effect[0]:.2f}/day: {_rate(per_farm)}")

    print("\nCalled 'significant' (no effect: false positives; effect: power, right way only)")
    header = f"  {'rule':38s} {'effect':>6s} {'per disease-day':>16s} "
    print(header + f"{'per report':>16s} {'per trial (daily reader)':>26s}")
    table = []
    for name, column in RULES.items():
        for effect, rows in results.group_by("true_effect", maintain_order=True):
            called = _calls(rows, column)
            per_report = called.group_by("seed", "date").agg(pl.col("called").any()).to_series(2)
            per_trial = called.group_by("seed").agg(pl.col("called").any()).to_series(1)
            print(
                f"  {name:38s} {effect[0]:6.2f} {_rate(called['called']):>16s} "
                f"{_rate(per_report):>16s} {_rate(per_trial):>26s}"
            )
            rates = (_rate(called["called"]), _rate(per_report), _rate(per_trial))
            table.append((name, f"{effect[0]:.2f}", *rates))
    effect_rows = _calls(results.filter(pl.col("true_effect") != 0), "sequential_significant")
    if effect_rows.height:
        first = (
            effect_rows.filter(pl.col("called"))
            .group_by("seed", "disease_type")
            .agg(pl.col("days_since_start").min())
        )
        pairs = effect_rows.select("seed", "disease_type").unique().height
        when = f", on day {first['days_since_start'].mean():.2f} on average" if first.height else ""
        print(
            f"\nHeadline rule under the effect: {first.height} of {pairs} (farm, disease) "
            f"pairs called by the last day{when}"
        )
    return table


def summarize_cases(case: str, results: pl.DataFrame) -> list[tuple[str, ...]]:
    """Per effect: last-day coverage and bias (each disease's last estimated day), and the
    share of trials with a false (no effect) or right-way (effect) decision that stands."""
    last = results.filter(pl.col("date") == pl.col("date").max().over("seed", "disease_type"))
    covered = (pl.col("ci_low") <= pl.col("estimand")) & (pl.col("estimand") <= pl.col("ci_high"))
    table = []
    for effect, rows in results.group_by("true_effect", maintain_order=True):
        day = last.filter(pl.col("true_effect") == effect[0])
        error = day["effect"] - day["estimand"]
        call = pl.col("decision").fill_null(False) & (
            (pl.col("true_effect") == 0) | (pl.col("decided_effect") < 0)
        )
        per_trial = rows.with_columns(called=call).group_by("seed").agg(pl.col("called").any())
        kind = "false 'conclusive'" if effect[0] == 0 else "right-way 'conclusive'"
        print(
            f"  {case:20s} effect {effect[0]:.2f}/day: last-day coverage "
            f"{_rate(day.select(covered).to_series())}, bias {error.mean():+.4f} "
            f"(± {error.std() / math.sqrt(error.len()):.4f}); trials with a {kind} decision "
            f"{_rate(per_trial['called'])}",
            flush=True,
        )
        bias = f"{error.mean():+.4f} ± {error.std() / math.sqrt(error.len()):.4f}"
        table.append((case, f"{effect[0]:.2f}", _rate(day.select(covered).to_series()), bias))
        table[-1] += (f"{kind}: {_rate(per_trial['called'])}",)
    return table


def pipeline_last_day(seeds: int, config: FarmConfig, estimand: list[float]) -> None:
    """Through the real detector, graders and dbt: last-day coverage of the estimand."""
    from farm_platform_dev.farm import reported_vs_true_effect

    rows = []
    with tempfile.TemporaryDirectory(prefix="farm-effect-") as workdir:
        for seed in range(seeds):
            farm = FarmConfig(
                positions=config.positions, days=config.days, seed=seed, effect=config.effect
            )
            rows.append(reported_vs_true_effect(farm, Path(workdir) / str(seed)))
    frame = pl.concat(rows).with_columns(estimand=pl.lit(estimand[-1]))
    covered = (frame["ci_low"] <= frame["estimand"]) & (frame["estimand"] <= frame["ci_high"])
    error = frame["effect"] - frame["estimand"]
    print(
        f"  through the real models, effect {config.effect:.2f}/day, {seeds} seeds: last-day "
        f"coverage {_rate(covered)}, bias {error.mean():+.4f} "
        f"(± {error.std() / math.sqrt(error.len()):.4f}), "
        f"called significant {_rate(frame['significant'])}",
        flush=True,
    )


def write_layouts_docs(args: argparse.Namespace, table: list[tuple[str, ...]], setup: str) -> None:
    """The --layouts table into its section: effect_recovery-layouts, with a pre-period
    effect_recovery-layouts-preP, with a subset of the layouts their names appended."""
    columns = ["layout, gradient", "effect/day", "last-day coverage", "bias", "trials"]
    name = "effect_recovery-layouts" + (f"-pre{args.pre_days}" if args.pre_days else "")
    if len(args.layout_names) < 3:
        name += "-" + "-".join(sorted(args.layout_names))
    note = setup + (f" {args.pre_days} pre-treatment days first." if args.pre_days else "")
    write_docs(name, [*columns, "last-day std error (sd of estimates)"], table, note=note)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--positions", type=int, default=12)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--effect", type=float, default=FarmConfig().effect)
    parser.add_argument("--pipeline-seeds", type=int, default=0)
    parser.add_argument(
        "--no-effect-only", action="store_true", help="only the farms without an effect"
    )
    parser.add_argument(
        "--cases",
        nargs="*",
        choices=CASES,
        help="score these trial events report by report instead of the plain run",
    )
    parser.add_argument(
        "--layouts",
        nargs="*",
        type=float,
        metavar="SHARE",
        help="score the design cases (two areas, randomised, randomised in blocks with the "
        "blocked and the Welch analysis) under a progression gradient of each SHARE of "
        "--effect between the areas' centres (e.g. --layouts 0 0.2 0.6)",
    )
    parser.add_argument(
        "--pre-days",
        type=int,
        default=0,
        help="with --layouts: days photographed before treatment begins (3 or more), "
        "scored with and without the trend adjustment; --days are then the treated days",
    )
    parser.add_argument(
        "--layout-names",
        nargs="+",
        choices=("two-areas", "randomised", "blocks"),
        default=["two-areas", "randomised", "blocks"],
        help="with --layouts: score only these layouts (their own docs table)",
    )
    add_write_docs_flag(parser)
    return parser


def main() -> int:
    args = parser().parse_args()
    setup = f"{args.seeds} seeds per effect, {args.positions} positions, {args.days} days."
    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)

    print(
        f"{dt.date.today()}: {args.seeds} seeds per effect, {args.positions} positions, "
        f"{args.days} days, 5 diseases; fast path (true grades, no rendering)"
    )
    if args.layouts is not None:
        from effect_layouts import run_layouts

        effects = (0.0,) if args.no_effect_only else (args.effect, 0.0)
        shares = args.layouts or [0.0, 0.2, 0.6]
        table = run_layouts(
            args.seeds,
            args.positions,
            args.days,
            effects,
            shares,
            summarize_cases,
            args.effect,
            args.pre_days,
            args.layout_names,
        )
        if args.write_docs:
            write_layouts_docs(args, table, setup)
        return 0
    if args.cases:
        run_cases(args, setup)
        return 0
    frames = []
    for effect in (0.0,) if args.no_effect_only else (args.effect, 0.0):
        estimand = [float(x) for x in population_effect(effect, args.days)]
        for seed in range(args.seeds):
            config = FarmConfig(positions=args.positions, days=args.days, seed=seed, effect=effect)
            frames.append(farm_effects(config, estimand))
        if args.pipeline_seeds:
            config = FarmConfig(positions=args.positions, days=args.days, effect=effect)
            pipeline_last_day(args.pipeline_seeds, config, estimand)
    if frames:
        table = summarize(pl.concat(frames))
        if args.write_docs:
            columns = ["rule", "effect/day", "per disease-day", "per report", "per trial"]
            write_docs("effect_recovery", columns, table, note=setup)
    return 0


def run_cases(args: argparse.Namespace, setup: str) -> None:
    """--cases: each trial event scored report by report."""
    frames: dict[str, list[pl.DataFrame]] = {case: [] for case in args.cases}
    for effect in (0.0,) if args.no_effect_only else (args.effect, 0.0):
        estimand = [float(x) for x in population_effect(effect, args.days)]
        for seed in range(args.seeds):
            config = FarmConfig(positions=args.positions, days=args.days, seed=seed, effect=effect)
            rows = farm_rows(config)
            for case in args.cases:
                frames[case].append(case_effects(case, rows, config, estimand))
    table = []
    for case, case_frames in frames.items():
        table += summarize_cases(case, pl.concat(case_frames, how="diagonal_relaxed"))
    if args.write_docs:
        columns = ["case", "effect/day", "last-day coverage", "bias", "trials decided"]
        write_docs("effect_recovery-cases", columns, table, note=setup)


if __name__ == "__main__":
    raise SystemExit(main())
