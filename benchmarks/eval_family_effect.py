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

from farm_platform.dev.eval_render import eval_farm_photos
from farm_platform.dev.farm import reported_vs_true_effect
from farm_platform.dev.simulate import FarmConfig
from farm_platform.dev.simulate.dynamics import population_effect

FAMILIES = {"training renderer": None, "evaluation family": eval_farm_photos}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--positions", type=int, default=12)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--effect", type=float, default=0.15)
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
        print(
            frame.group_by("family", maintain_order=True).agg(
                bias=pl.col("error").mean(),
                mean_abs_error=pl.col("error").abs().mean(),
                coverage=pl.col("covered").mean(),
                intervals=pl.len(),
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
