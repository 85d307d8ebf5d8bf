"""The least Dagster can spend per photo on bookkeeping, against the bare model path.

    python benchmarks/partition_bookkeeping_floor.py [--photos 500] [--count 128]
        [--dagster-postgres-url postgresql+psycopg2://user@host:port/db] [--event-batch-size N]

Issue 4 asks for end-to-end throughput of at least 0.7 × the bare model path, which leaves
orchestration 3/7 of the bare path's time per photo. This measures what Dagster alone
costs per photo when the assets do *no work at all*: seven no-op assets shaped like the
pipeline's (`drone_images`, `leaf_crops`, five grades), one run over one day of photos,
with and without per-partition asset check evaluations (the pipeline has 14 per partition),
under two partitionings: the contract's date × position (one partition per photo, the run
over a partition-key range, as the sensor's runs are) and, for comparison, date partitions
with the photos as rows. Nothing here reads a photo, runs a model or writes a warehouse
row: every millisecond is run creation, planned events, materialization and check events,
and their storage.

It prints Dagster's milliseconds and events per photo, the bare model path's milliseconds
per photo (measured here on simulator photos), and the highest ratio end to end / bare
path that any pipeline could reach with that bookkeeping: bare / (bare + bookkeeping).
"""

import argparse
import datetime as dt
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bare_model_path import measure_bare_path
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    DagsterInstance,
    MaterializeResult,
    materialize,
    multi_asset,
)

from farm_platform.daemon import prepare_dagster_home
from farm_platform.layout import ImageKey
from farm_platform.partitions import (
    POSITION_DIMENSION,
    date_partitions,
    image_partitions,
    partition_range_tags,
)
from farm_platform.validation import QUIET_RUN_CONFIG

ASSET_NAMES = ["drone_images", "leaf_crops", *[f"disease_{k}_grades" for k in range(5)]]
CHECKS_PER_ASSET = 2  # the pipeline's: a blocking/quality check and a day-to-day warning


PARTITIONINGS = {
    # The contract's: one partition per photo, a run over a partition-key range.
    "date × position": image_partitions,
    # The alternative the figures are compared with: one partition per day, photos as rows.
    "date": date_partitions,
}


def noop_assets(partitioning: str, with_checks: bool) -> AssetsDefinition:
    partitions_def = PARTITIONINGS[partitioning]
    prefix = "by_date" if partitions_def is date_partitions else "by_date_position"
    keys = [AssetKey([prefix, name]) for name in ASSET_NAMES]
    check_specs = [
        AssetCheckSpec(f"check_{i}", asset=key, partitions_def=partitions_def)
        for key in keys
        for i in range(CHECKS_PER_ASSET)
    ]

    @multi_asset(
        specs=[AssetSpec(key) for key in keys],
        check_specs=check_specs if with_checks else None,
        partitions_def=partitions_def,
        can_subset=True,
        name=f"noop_pipeline_{prefix}",
    )
    def noop_pipeline(context: AssetExecutionContext) -> Iterator[MaterializeResult]:
        for key in keys:
            yield MaterializeResult(asset_key=key)
            if with_checks:
                for partition in context.partition_keys:
                    for i in range(CHECKS_PER_ASSET):
                        context.log_event(
                            AssetCheckEvaluation(
                                asset_key=key,
                                check_name=f"check_{i}",
                                passed=True,
                                partition=partition,
                            )
                        )

    return noop_pipeline


def bookkeeping_per_photo(
    instance: DagsterInstance, photos: int, partitioning: str, with_checks: bool
) -> tuple[float, float]:
    """Milliseconds and Dagster events per photo of one no-op run over one day of `photos`
    positions."""
    day = dt.date(2026, 6, 1) + dt.timedelta(days=instance.get_runs_count())
    if partitioning == "date":
        tags = {"dagster/partition": day.isoformat()}
    else:
        positions = [f"P{i:04d}" for i in range(photos)]
        instance.add_dynamic_partitions(POSITION_DIMENSION, positions)
        tags = partition_range_tags(ImageKey(positions[0], day), ImageKey(positions[-1], day))
    started = time.perf_counter()
    result = materialize(
        [noop_assets(partitioning, with_checks)],
        instance=instance,
        run_config=QUIET_RUN_CONFIG,
        tags=tags,
    )
    seconds = time.perf_counter() - started
    return 1000 * seconds / photos, len(instance.all_logs(result.run_id)) / photos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=500, help="photos (positions) in the run")
    parser.add_argument("--count", type=int, default=128, help="photos for the bare path")
    parser.add_argument("--dagster-postgres-url", help="Dagster storage in PostgreSQL")
    parser.add_argument("--event-batch-size", type=int, default=0, help="DAGSTER_EVENT_BATCH_SIZE")
    args = parser.parse_args()
    if args.event_batch_size:
        os.environ["DAGSTER_EVENT_BATCH_SIZE"] = str(args.event_batch_size)

    from farm_platform.simulate import render_training_images

    pngs = [sim.png for sim in render_training_images(2000, args.count)]
    bare = measure_bare_path(pngs, batch_size=32, repeats=3)
    bare_ms = bare["ms_per_image"]
    storage = "PostgreSQL" if args.dagster_postgres_url else "SQLite"
    print(
        f"bare model path: {bare_ms:.1f} ms/photo ({bare['images_per_s']:.0f} photos/s); "
        f"Dagster storage: {storage}, DAGSTER_EVENT_BATCH_SIZE={args.event_batch_size}; "
        f"one run over one day of {args.photos} photos, 7 no-op assets"
    )
    print(
        f"{'partitions':>16}{'checks/partition':>18}{'events/photo':>14}{'ms/photo':>10}"
        f"{'ceiling':>9}"
    )
    with tempfile.TemporaryDirectory(prefix="farm-floor-") as home:
        prepare_dagster_home(Path(home), postgres_url=args.dagster_postgres_url)
        with DagsterInstance.from_config(home) as instance:
            for partitioning in PARTITIONINGS:
                for with_checks in (False, True):
                    ms, events = bookkeeping_per_photo(
                        instance, args.photos, partitioning, with_checks
                    )
                    checks = CHECKS_PER_ASSET * len(ASSET_NAMES) if with_checks else 0
                    print(
                        f"{partitioning:>16}{checks:>18}{events:>14.2f}{ms:>10.1f}"
                        f"{bare_ms / (bare_ms + ms):>9.2f}"
                    )
    print("ceiling = bare / (bare + bookkeeping): the best ratio any pipeline could reach")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
