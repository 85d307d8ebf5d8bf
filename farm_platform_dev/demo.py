"""`farm-platform demo`: the main job end to end on a local stack.

Local emulators → a simulated farm uploaded to the bucket (GCS notifications plus drone
controller messages, so every image is announced twice) → the real `dagster-daemon` with
its sensors → graded rows in a DuckDB warehouse → a per-day, per-area summary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl
from dagster import AssetKey

from farm_platform.admin.configured import configured_registry
from farm_platform.config import (
    DAGSTER_HOME,
    FARM_BATCH_QUIET_SECONDS,
    FARM_FIELD_MAP,
    FARM_REPORTS,
    FARM_SENSOR_INTERVAL_SECONDS,
    FARM_TRIAL_START_DATE,
    FARM_WAREHOUSE,
    WORKSPACE_FILE,
    process_environment,
)
from farm_platform.report.data import load_report_data
from farm_platform.report.headline import design_line, overall_answer, summary_lines
from farm_platform.resources.field_map import read_field_map
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.simulate import DroneMessagePublisher, FarmConfig, write_farm

# How the demo prints its tables.
TABLE_STYLE = {
    "tbl_rows": 100,
    "tbl_cols": 20,
    "tbl_width_chars": 140,
    "float_precision": 2,
    "tbl_hide_dataframe_shape": True,
    "tbl_hide_column_data_types": True,
}


def _clear_workdir(workdir: Path) -> None:
    """The previous demo's state gone, its stack (kept with --keep) stopped first."""
    if workdir.exists():
        if (workdir / "stack").exists():
            from farm_platform_dev.stack import stack_down

            stack_down(workdir / "stack")
        shutil.rmtree(workdir)


def _demo_environment(
    stack: Any, config: FarmConfig, workdir: Path, warehouse_url: str, field_map: Path
) -> dict[str, str]:
    """The settings the demo's daemon and runs take."""
    return {
        **stack.environment(),
        FARM_WAREHOUSE: warehouse_url,
        DAGSTER_HOME: str(workdir / "dagster"),
        # The demo farm's own field map: the tracked dbt seed is the real farm's.
        FARM_FIELD_MAP: str(field_map),
        # On disk, so the report outlives the emulated bucket.
        FARM_REPORTS: str(workdir / "reports"),
        # The trial begins on the simulated farm's first day: the UI's day partitions
        # are then the farm's days, not a year of "Missing" ones before it.
        FARM_TRIAL_START_DATE: config.start_date.isoformat(),
        FARM_SENSOR_INTERVAL_SECONDS: "5",
        # The simulated farm uploads in one burst before the daemon starts: its days
        # are quiet at once, and need not wait the 5 s a real flight's upload gets.
        FARM_BATCH_QUIET_SECONDS: "1",
    }


def _print_report(
    warehouse: WarehouseResource, report: str, report_day: dt.date, workdir: Path
) -> None:
    """The report's answer beside the simulated truth."""
    print(f"\n[demo] report: {report}")
    data = load_report_data(warehouse, report_day, configured_registry())
    print(f"[demo] {overall_answer(data)}")
    print(f"[demo] {design_line(data)}")
    print("[demo] treatment effect (treated minus control, change in mean grade since day 1):")
    for line in summary_lines(data):
        print(f"  {line}")
    truth = pl.read_parquet(workdir / "ground_truth" / "effect.parquet")
    print("[demo] simulated truth (realized difference in differences of the true grades):")
    for row in truth.sort("disease_type").iter_rows(named=True):
        print(f"  {row['disease_type']}: {row['realized_did']:+.3f}")


def _print_browse_hint(environment: dict[str, str], workdir: Path, keep: bool) -> None:
    """How to open the Dagster UI on this demo."""
    if keep:
        command = " ".join(f"{name}={shlex.quote(value)}" for name, value in environment.items())
        print(
            "\nThe demo's local stack is still up. Open the Dagster UI on this demo with:\n"
            f"  env {command} {Path(sys.executable).with_name('dagster')} dev -w {WORKSPACE_FILE}"
            f"\nStop the stack afterwards: farm-platform stack down --state-dir {workdir / 'stack'}"
        )
    else:
        print("\nTo browse a demo in the Dagster UI: .venv/bin/farm-platform demo --keep")


def _simulate_farm(config: FarmConfig, stack: Any, field_map: Path, workdir: Path) -> None:
    """The simulated farm's photos into the stack's bucket, and its drone messages."""
    print(
        f"[demo] simulating {config.positions} positions × {config.days} days "
        f"(seed {config.seed}, true effect {config.effect}/day) into {stack.bucket_url()}"
    )
    publisher = DroneMessagePublisher(stack.project)
    summary = write_farm(
        config, stack.bucket_url(), field_map, publisher, str(workdir / "ground_truth")
    )
    print(
        f"[demo] uploaded {summary.images} photos ({summary.leaves} leaves); "
        f"{summary.published} drone messages + {summary.images} storage notifications"
    )


def run_demo(
    config: FarmConfig,
    workdir: Path,
    timeout_seconds: float = 900.0,
    keep: bool = False,
    model_server: bool = False,
) -> int:
    """Run the demo; with `keep`, its local stack stays up afterwards (detached, state in
    `workdir/stack`) and a command that opens the Dagster UI on it, as printed, is shown.
    With `model_server`, the runs grade on a model server beside the stack."""
    from dagster import DagsterInstance

    from farm_platform.admin.instance import prepare_dagster_home
    from farm_platform_dev.daemon import DaemonProcess, PipelineFailed, wait_for_photos
    from farm_platform_dev.local_stack import LocalStack
    from farm_platform_dev.stack import stack_up

    started = time.monotonic()
    workdir = workdir.resolve()
    _clear_workdir(workdir)
    dagster_home = workdir / "dagster"
    # A demo is watched: its run queue is polled every 1 s and its sensors tick every 5 s
    # (below), so each run starts seconds sooner. A long-lived instance keeps Dagster's
    # defaults (dagster.yaml), which cost less while it idles.
    prepare_dagster_home(dagster_home, quick_polling=True)
    warehouse_url = f"duckdb:///{workdir / 'warehouse.duckdb'}"
    expected = config.positions * config.days

    print(
        "[demo] starting the local Pub/Sub and GCS emulators"
        + (" and a model server" if model_server else "")
        + f" in {workdir}"
    )
    with contextlib.ExitStack() as cleanup:
        if keep:
            stack = stack_up(workdir / "stack", model_server=model_server)
        else:
            stack = cleanup.enter_context(LocalStack(model_server=model_server))
        if stack.oip_url:
            print(f"[demo] the runs grade on the model server at {stack.oip_url}")
        field_map = workdir / "positions.csv"
        environment = _demo_environment(stack, config, workdir, warehouse_url, field_map)
        cleanup.enter_context(process_environment(environment))
        _simulate_farm(config, stack, field_map, workdir)
        print("[demo] running dagster-daemon: drone_image_sensor → day runs → warehouse")
        with (
            DaemonProcess(dagster_home, environment, workdir / "daemon.log") as daemon,
            DagsterInstance.from_config(str(dagster_home)) as instance,
        ):
            warehouse = WarehouseResource(url=warehouse_url)
            try:
                wait_for_photos(
                    instance,
                    warehouse,
                    expected,
                    timeout_seconds,
                    daemon,
                    progress=lambda done, total: print(f"[demo] graded {done}/{total} images"),
                )
            except PipelineFailed as exc:
                print(f"[demo] FAILED: {exc}")
                return 1
            runs = instance.get_runs_count()
            print(
                f"\n[demo] graded in {time.monotonic() - started:.0f} s: {expected} images in "
                f"{runs} Dagster runs; warehouse {warehouse.duckdb_path}\n"
            )
            with pl.Config(**TABLE_STYLE):
                print(daily_area_summary(warehouse, field_map))
            report_day = config.start_date + dt.timedelta(days=config.days - 1)
            print(f"\n[demo] queued the daily report job for {report_day}: dbt build, report")
            report = launch_report_run(report_day, instance, environment, daemon)
            if report is None:
                return 1

    _print_report(warehouse, report, report_day, workdir)
    print(f"\n[demo] done in {time.monotonic() - started:.0f} s")
    _print_browse_hint(environment, workdir, keep)
    return 0


def launch_report_run(
    day: dt.date, instance: Any, environment: dict[str, str], daemon: Any, timeout: float = 600
) -> str | None:
    """Queue the daily report job for `day` (as its schedule would) and wait for it.

    Returns the report's path, or None if the run failed.
    """
    run_id = str(uuid.uuid4())
    subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "job",
            "launch",
            "-w",
            str(WORKSPACE_FILE),
            "-l",
            "farm_platform_analytics",
            "-j",
            "daily_effectiveness_report",
            "--run-id",
            run_id,
            "--tags",
            json.dumps({"dagster/partition": day.isoformat()}),
        ],
        env={**os.environ, **environment},
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + timeout
    while True:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            break
        if time.monotonic() > deadline or not daemon.alive():
            print(f"[demo] FAILED: report run {run_id} did not finish\n{daemon.log_tail()}")
            return None
        time.sleep(1)
    if not run.is_success:
        print(f"[demo] FAILED: report run {run_id} ended {run.status.value}; see it in the UI")
        return None
    event = instance.get_latest_materialization_event(AssetKey("effectiveness_report"))
    return str(event.asset_materialization.metadata["report"].value)


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
