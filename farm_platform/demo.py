"""`farm-platform demo`: the main job end to end on a local stack.

Local emulators → a simulated farm uploaded to the bucket (GCS notifications plus drone
controller messages, so every image is announced twice) → the real `dagster-daemon` with
its sensors → graded rows in a DuckDB warehouse → a per-day, per-area summary.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import polars as pl

from farm_platform import settings
from farm_platform.assets.keys import GRADES_BY_DISEASE
from farm_platform.field_map import field_map_path, read_field_map
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform.simulate import DroneMessagePublisher, FarmConfig, write_farm


def run_demo(config: FarmConfig, workdir: Path, timeout_seconds: float = 900.0) -> int:
    from dagster import DagsterInstance

    from farm_platform.daemon import (
        DaemonProcess,
        PipelineFailed,
        prepare_dagster_home,
        wait_for_partitions,
    )
    from farm_platform.stack import LocalStack

    started = time.monotonic()
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    dagster_home = workdir / "dagster"
    prepare_dagster_home(dagster_home)
    warehouse_url = f"duckdb:///{workdir / 'warehouse.duckdb'}"
    expected = config.positions * config.days

    print(f"[demo] starting the local Pub/Sub and GCS emulators in {workdir}")
    with LocalStack() as stack:
        environment = {
            **stack.environment(),
            settings.FARM_WAREHOUSE: warehouse_url,
            settings.DAGSTER_HOME: str(dagster_home),
        }
        os.environ.update(environment)
        print(
            f"[demo] simulating {config.positions} positions × {config.days} days "
            f"(seed {config.seed}, true effect {config.effect}/day) into {stack.bucket_url()}"
        )
        publisher = DroneMessagePublisher(stack.project)
        summary = write_farm(
            config, stack.bucket_url(), field_map_path(), publisher, str(workdir / "ground_truth")
        )
        print(
            f"[demo] uploaded {summary.images} photos ({summary.leaves} leaves); "
            f"{summary.published} drone messages + {summary.images} storage notifications"
        )
        print("[demo] running dagster-daemon: drone_image_sensor → batched runs → warehouse")
        with (
            DaemonProcess(dagster_home, environment, workdir / "daemon.log") as daemon,
            DagsterInstance.from_config(str(dagster_home)) as instance,
        ):
            try:
                wait_for_partitions(
                    instance,
                    list(GRADES_BY_DISEASE.values()),
                    expected,
                    timeout_seconds,
                    daemon,
                    progress=lambda done, total: print(f"[demo] graded {done}/{total} images"),
                )
            except PipelineFailed as exc:
                print(f"[demo] FAILED: {exc}")
                return 1
            runs = instance.get_runs_count()

    warehouse = WarehouseResource(url=warehouse_url)
    print(
        f"\n[demo] done in {time.monotonic() - started:.0f} s: {expected} images in {runs} "
        f"Dagster runs; warehouse {warehouse.duckdb_path}\n"
    )
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_hide_dataframe_shape=True):
        print(daily_area_summary(warehouse, field_map_path()))
    print(
        "\nOpen the Dagster UI on this run's instance:\n"
        f"  DAGSTER_HOME={dagster_home} dagster dev -w {dagster_home / 'workspace.yaml'}"
    )
    return 0


def daily_area_summary(warehouse: WarehouseResource, positions_csv: Path) -> pl.DataFrame:
    """Per date and area: images, leaves and the mean predicted grade of each disease."""
    areas = pl.DataFrame(
        [(p.position_id, p.area) for p in read_field_map(positions_csv).values()],
        schema=["position_id", "area"],
        orient="row",
    )
    grades = warehouse.query(
        "SELECT position_id, date, leaf_crop_idx, disease_type, predicted_grade FROM disease_grades"
    ).join(areas, on="position_id")
    per_disease = (
        grades.group_by("date", "area")
        .agg(
            pl.col("position_id").n_unique().alias("images"),
            (pl.struct("position_id", "leaf_crop_idx").n_unique()).alias("leaves"),
        )
        .join(
            grades.pivot(
                on="disease_type",
                index=["date", "area"],
                values="predicted_grade",
                aggregate_function="mean",
            ),
            on=["date", "area"],
        )
    )
    return per_disease.sort("date", "area")
