"""How often does the report recover the simulated effect? Figures over many seeds.

    python benchmarks/effect_recovery.py [--seeds 10] [--positions 12] [--days 5]

For every seed, a farm with the true effect (0.15/day) and one with none go through the
real detector, graders and dbt (farm_platform.dev.farm). Printed, per effect: the share
of (seed, disease) pairs whose 95 % interval covers the realized truth (the difference in
differences of the true grades), the share reported significant (power when the effect
is real, false-positive rate when it is zero), and the mean estimation error.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import polars as pl

from farm_platform.dev.farm import reported_vs_true_effect
from farm_platform.dev.simulate import FarmConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--positions", type=int, default=12)
    parser.add_argument("--days", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)

    rows = []
    with tempfile.TemporaryDirectory(prefix="farm-effect-") as workdir:
        for effect in (0.15, 0.0):
            for seed in range(args.seeds):
                config = FarmConfig(
                    positions=args.positions, days=args.days, seed=seed, effect=effect
                )
                frame = reported_vs_true_effect(config, Path(workdir) / f"{effect}-{seed}")
                rows.append(frame.with_columns(true_effect=pl.lit(effect), seed=pl.lit(seed)))
                print(f"effect {effect} seed {seed}: done", flush=True)
    results = pl.concat(rows).with_columns(
        covered=(pl.col("ci_low") <= pl.col("realized_did"))
        & (pl.col("realized_did") <= pl.col("ci_high")),
        error=pl.col("effect") - pl.col("realized_did"),
    )
    summary = results.group_by("true_effect").agg(
        pl.len().alias("seed_disease_pairs"),
        pl.col("covered").mean().alias("interval_covers_truth"),
        pl.col("significant").mean().alias("reported_significant"),
        pl.col("error").mean().alias("mean_error"),
        pl.col("error").abs().mean().alias("mean_abs_error"),
    )
    with pl.Config(tbl_width_chars=140, float_precision=3):
        print(summary.sort("true_effect", descending=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
