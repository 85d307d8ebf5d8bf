"""The medicine's effect through photos unlike the training data (issue 25, item 4).

    python benchmarks/eval_family_effect.py [--seeds 1] [--positions 12] [--days 4]
                                            [--effect 0.15]

The same simulated trial (positions, days, disease dynamics, true effect) is drawn twice,
by the training renderer (`dev/simulate`) and by the evaluation family
(`dev/eval_render.py`, never trained on), and each goes through the real detector,
graders and dbt in this process (`dev.farm.reported_vs_true_effect`). Printed per family
and disease: the last day's reported effect and 95 % interval beside the estimand (the
population effect, `dynamics.population_effect`, as in benchmarks/effect_recovery.py),
then per family the mean error (bias), mean |error| and the share of intervals covering
the estimand. A few seeds are a rough figure: with one seed, coverage is k of 5 diseases.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import polars as pl
from docs_table import add_write_docs_flag, write_docs

from farm_platform_dev.eval_render import eval_farm_photos
from farm_platform_dev.farm import reported_vs_true_effect
from farm_platform_dev.simulate import FarmConfig
from farm_platform_dev.simulate.dynamics import population_effect

FAMILIES = {"training renderer": None, "evaluation family": eval_farm_photos}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--positions", type=int, default=12)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--effect", type=float, default=0.15)
    add_write_docs_flag(parser)
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    estimand = float(population_effect(args.effect, args.days)[-1])
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in range(args.seeds):
            config = FarmConfig(
                positions=args.positions, days=args.days, seed=seed, effect=args.effect
            )
            for family, photos in FAMILIES.items():
                started = time.perf_counter()
                frame = reported_vs_true_effect(
                    config, Path(workdir) / f"{seed}-{family.split()[0]}", photos
                )
                rows.append(frame.with_columns(family=pl.lit(family), seed=pl.lit(seed)))
                print(f"seed {seed}, {family}: {time.perf_counter() - started:.0f} s")
    frame = pl.concat(rows).with_columns(
        estimand=pl.lit(estimand),
        error=pl.col("effect") - estimand,
        covered=(pl.col("ci_low") <= estimand) & (estimand <= pl.col("ci_high")),
    )
    print(
        f"\n{args.positions} positions x {args.days} days, true effect {args.effect}/day: "
        f"estimand on the last day {estimand:+.4f} grade"
    )
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=160):
        print(
            frame.select(
                "family", "seed", "disease_type", "effect", "ci_low", "ci_high", "error", "covered"
            )
        )
        summary = frame.group_by("family", maintain_order=True).agg(
            bias=pl.col("error").mean(),
            mean_abs_error=pl.col("error").abs().mean(),
            covered=pl.col("covered").sum(),
            intervals=pl.len(),
            width_min=(pl.col("ci_high") - pl.col("ci_low")).min(),
            width_max=(pl.col("ci_high") - pl.col("ci_low")).max(),
        )
        print(summary)
    if args.write_docs:
        write_docs(
            "eval_family_effect",
            ["photos", "bias", "mean \\|error\\|", "95 % interval covers", "interval width"],
            [
                (
                    r["family"],
                    f"{r['bias']:+.3f}",
                    f"{r['mean_abs_error']:.3f}",
                    f"{r['covered']} / {r['intervals']}",
                    f"{r['width_min']:.2f}–{r['width_max']:.2f}",
                )
                for r in summary.iter_rows(named=True)
            ],
            note=f"{args.positions} positions × {args.days} days, {args.seeds} seed(s) × 5 "
            f"diseases per family; estimand on the last day {estimand:+.3f} grade.",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
