"""Cost of one run chunk's warehouse write on DuckDB, and where it goes.

    python benchmarks/warehouse_write.py [--chunks 16] [--photos 64] [--leaves 14]

A chunk's write is what `grading.grade_day` hands `WarehouseResource.replace_many`: the
photos' `drone_images` rows, their `leaf_crops` rows and one `disease_grades` write per
disease (five), each with the scopes it replaces, in one transaction. It prints the
milliseconds per chunk of `replace_many` as the platform calls it, then the same chunk
timed by step on one connection: connect, the tables' DDL, DELETEs, INSERTs, COMMIT and
close (DuckDB checkpoints there). Synthetic rows of the tables' own schemas; no Dagster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from docs_table import add_write_docs_flag, write_docs

from farm_platform.resources.warehouse import WarehouseResource, prepare_writes

DAY = dt.date(2026, 6, 1)
DISEASES = [f"disease_{k}" for k in range(5)]
Write = tuple[str, pl.DataFrame, pl.DataFrame | None]


def chunk_writes(first: int, photos: int, leaves: int) -> list[Write]:
    """One chunk's writes, as a run makes them, for `photos` photos of `leaves` leaves."""
    now = dt.datetime.now(dt.UTC)
    positions = [f"P{first + i:06d}" for i in range(photos)]
    photo_cols = {"position_id": positions, "date": [DAY] * photos}
    leaf_cols = {
        "position_id": [p for p in positions for _ in range(leaves)],
        "date": [DAY] * photos * leaves,
        "leaf_crop_idx": list(range(leaves)) * photos,
    }
    cropper = {"cropper_model_id": "leaf_detector", "cropper_model_version": "v3"}
    images = pl.DataFrame(photo_cols).with_columns(
        image_uri=pl.lit("file:///bucket/photo.png"),
        size_bytes=pl.lit(90_000),
        sha256=pl.lit("0" * 64),
        width=pl.lit(640),
        height=pl.lit(640),
        error=pl.lit(None, pl.String),
        ingested_at=pl.lit(now),
        generation=pl.lit("1"),
        message_id=pl.lit("message"),
        published_at=pl.lit(now),
        dagster_run_id=pl.lit("run"),
    )
    crops = pl.DataFrame(leaf_cols).with_columns(
        x0=pl.lit(1.0),
        y0=pl.lit(1.0),
        x1=pl.lit(40.0),
        y1=pl.lit(20.0),
        score=pl.lit(0.9),
        crop_uri=pl.lit("file:///bucket/crop.png"),
        **{name: pl.lit(value) for name, value in cropper.items()},
    )
    scopes = pl.DataFrame(photo_cols).with_columns(
        **{name: pl.lit(value) for name, value in cropper.items()}
    )
    writes: list[Write] = [("drone_images", images, None), ("leaf_crops", crops, scopes)]
    for disease in DISEASES:
        grader = {
            "disease_type": pl.lit(disease),
            "disease_model_id": pl.lit(f"{disease}_grader"),
            "disease_model_version": pl.lit("v1"),
        }
        grades = pl.DataFrame(leaf_cols).with_columns(
            predicted_grade=pl.lit(1),
            confidence=pl.lit(0.5),
            graded_at=pl.lit(now),
            dagster_run_id=pl.lit("run"),
            **{name: pl.lit(value) for name, value in cropper.items()},
            **grader,
        )
        writes.append(("disease_grades", grades, scopes.with_columns(**grader)))
    return writes


def timed_steps(warehouse: WarehouseResource, writes: Sequence[Write]) -> dict[str, float]:
    """Seconds per step of `replace_many`'s transaction for one chunk (DuckDB), through
    the warehouse's own connect, schema, DELETE and INSERT."""
    steps: dict[str, float] = {}

    def step(name: str, started: float) -> float:
        now = time.perf_counter()
        steps[name] = now - started
        return now

    started = time.perf_counter()
    connection = warehouse._connect_duckdb()
    started = step("connect", started)
    connection.execute("BEGIN TRANSACTION")
    warehouse._ensure_schema(connection)
    started = step("tables' DDL", started)
    merged = prepare_writes(writes)
    started = step("frames", started)
    for table, _, replaced in merged:
        warehouse._delete_scopes(connection, table, replaced)
    started = step("DELETEs", started)
    for table, frame, _ in merged:
        warehouse._insert(connection, table, frame)
    started = step("INSERTs", started)
    connection.execute("COMMIT")
    started = step("COMMIT", started)
    connection.close()
    step("close (checkpoint)", started)
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--photos", type=int, default=64, help="photos per chunk")
    parser.add_argument("--leaves", type=int, default=14, help="leaves per photo")
    add_write_docs_flag(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="farm-warehouse-") as folder:
        warehouse = WarehouseResource(url=f"duckdb:///{Path(folder) / 'warehouse.duckdb'}")
        warehouse.replace_many(chunk_writes(10**6, 1, args.leaves))  # tables exist
        chunks = [
            chunk_writes(i * args.photos, args.photos, args.leaves) for i in range(args.chunks)
        ]
        started, cpu = time.perf_counter(), time.process_time()
        for writes in chunks:
            warehouse.replace_many(writes)
        wall_ms = 1000 * (time.perf_counter() - started) / args.chunks
        cpu_ms = 1000 * (time.process_time() - cpu) / args.chunks
        print(
            f"replace_many, one chunk of {args.photos} photos ({args.leaves} leaves each, "
            f"7 writes): {wall_ms:.1f} ms wall, {cpu_ms:.1f} ms CPU, "
            f"{cpu_ms / args.photos:.2f} ms CPU per photo"
        )
        totals: dict[str, float] = {}
        for index, _ in enumerate(chunks):
            again = chunk_writes(index * args.photos, args.photos, args.leaves)
            for name, seconds in timed_steps(warehouse, again).items():
                totals[name] = totals.get(name, 0.0) + seconds
        print("by step, ms per chunk (the same chunks written again):")
        for name, seconds in totals.items():
            print(f"  {name:20s} {1000 * seconds / args.chunks:7.1f}")
    if args.write_docs:
        rows = [("replace_many, wall", f"{wall_ms:.1f}"), ("replace_many, CPU", f"{cpu_ms:.1f}")]
        rows += [(name, f"{1000 * s / args.chunks:.1f}") for name, s in totals.items()]
        write_docs(
            "warehouse_write",
            [f"a chunk of {args.photos} photos, {args.leaves} leaves each", "ms per chunk"],
            rows,
            note=f"CPU per photo: {cpu_ms / args.photos:.2f} ms.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
