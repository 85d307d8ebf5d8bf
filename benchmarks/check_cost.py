"""What a run's data-quality checks cost: `validate_photos` over one batch, compiled suites
against Great Expectations' own validation.

    python benchmarks/check_cost.py [--positions 32] [--days 2] [--repeat 3] [--write-docs]

Simulates a farm and grades it with the real assets (as `farm-platform check` does), then
runs every check over all its photos as one batch (the assets' `validate_photos`, through
the gate's `run_suites`) and meters this process's CPU seconds (all threads):
- compiled (what a run does): the first batch, then the median of `--repeat` more;
- Great Expectations (the reference the compiled suites are held to): the first batch in
  a process that had not imported it (the import, an ephemeral context, the validations),
  then the median of `--repeat` more (a process that keeps the import).
Both engines must give the same results; the script fails otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from docs_table import add_write_docs_flag, write_docs

from farm_platform_dev import ge_reference
from farm_platform_dev.gate import run_suites, simulate_farm
from farm_platform_dev.gate_cases import Snapshot
from farm_platform_dev.simulate import FarmConfig

DOCS_COLUMNS = ["engine", "photos", "suite evaluations", "first batch CPU s", "next batches CPU s"]


def cpu_seconds(call: Callable[[], object]) -> float:
    started = time.process_time()
    call()
    return time.process_time() - started


def meter(snapshot: Snapshot, repeat: int) -> tuple[float, float, list]:
    """CPU s of the first batch, the median of the next `repeat`, and the results."""
    results: list = []
    first = cpu_seconds(lambda: results.append(run_suites(snapshot)))
    then = statistics.median(cpu_seconds(lambda: run_suites(snapshot)) for _ in range(repeat))
    return first, then, results[0]


def outcomes(results: list) -> list:
    return [(r.asset, r.check_name, r.severity, r.outcomes) for r in results]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=32, help="photos per day")
    parser.add_argument("--days", type=int, default=2, help="days (the batch spans them all)")
    parser.add_argument("--repeat", type=int, default=3, help="batches after the first")
    add_write_docs_flag(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="farm-check-cost-") as workdir:
        config = FarmConfig(positions=args.positions, days=args.days, seed=7)
        snapshot, _, _ = simulate_farm(config, Path(workdir))
    photos = snapshot.images.height
    # drone_images, leaf_crops + leaf_counts, leaves_vanished; per grader: grades, counts, jump
    evaluations = 4 + 3 * len(snapshot.graders)
    assert "great_expectations" not in sys.modules, "measure Great Expectations' import too"
    compiled = meter(snapshot, args.repeat)
    with ge_reference.great_expectations_engine():
        reference = meter(snapshot, args.repeat)
    if outcomes(compiled[2]) != outcomes(reference[2]):
        print("error: the compiled checks and Great Expectations disagree", file=sys.stderr)
        return 1
    rows = [
        (
            "compiled suites (polars)",
            photos,
            evaluations,
            f"{compiled[0]:.2f}",
            f"{compiled[1]:.2f}",
        ),
        ("Great Expectations", photos, evaluations, f"{reference[0]:.2f}", f"{reference[1]:.2f}"),
    ]
    for row in rows:
        print(f"{row[0]:26s} {photos} photos: first batch {row[3]} CPU s, next {row[4]} CPU s")
    if args.write_docs:
        write_docs(
            "check_cost",
            DOCS_COLUMNS,
            rows,
            note="CPU seconds of `validate_photos` over one batch (every check, every photo) "
            "in one process; Great Expectations' first batch includes its import and "
            "ephemeral context, what a fresh process pays for it; the next batches, what a "
            "process that keeps the import pays. Same results from both.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
