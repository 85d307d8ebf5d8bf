"""The platform `benchmarks/pipeline_throughput.py` (and benchmarks/photo_cost_run.py) drive:
a fresh DAGSTER_HOME and DuckDB warehouse beside the local stack and the real daemon,
a simulated day's photos uploaded or announced, and what Dagster recorded of its runs."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, RunsFilter

from farm_platform import config as farm_config
from farm_platform.admin.instance import prepare_dagster_home
from farm_platform.images.keys import DRONE_IMAGES
from farm_platform.images.run_tags import PHOTOS_TAG
from farm_platform.layout import bucket_filesystem, join
from farm_platform.resources.field_map import write_field_map
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import UNFINISHED_STATUSES, DaemonProcess
from farm_platform_dev.local_stack import LocalStack
from farm_platform_dev.simulate import FarmConfig, field_map
from farm_platform_dev.simulate.publish import DroneMessagePublisher, captured_at

START = dt.date(2026, 6, 1)


class RunMemorySampler(threading.Thread):
    """Peak RSS of each Dagster run worker (a spawned child of the code server)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb: dict[int, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if b"spawn_main" not in (proc / "cmdline").read_bytes():
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            pid, rss = int(proc.name), int(line.split()[1]) / 1024
                            self.peak_mb[pid] = max(self.peak_mb.get(pid, 0.0), rss)
                except OSError:
                    continue


class Platform:
    """The local stack, a DAGSTER_HOME, a warehouse and a running daemon for one phase."""

    def __init__(
        self,
        stack: LocalStack,
        workdir: Path,
        name: str,
        positions: int,
        local: bool = False,
        run_max_photos: int | None = None,
        inference: dict[str, str] | None = None,
        run_torch_threads: int | None = None,
    ) -> None:
        self.dagster_home = workdir / f"dagster-{name}"
        prepare_dagster_home(self.dagster_home)
        farm = FarmConfig(positions=positions, days=1, start_date=START, seed=5)
        field_map_path = write_field_map(field_map(farm), workdir / f"positions-{name}.csv")
        self.warehouse = WarehouseResource(url=f"duckdb:///{workdir / f'warehouse-{name}.duckdb'}")
        bucket_url = f"file://{workdir / f'bucket-{name}'}" if local else stack.bucket_url()
        self.environment = {
            **stack.environment(),
            farm_config.FARM_BUCKET: bucket_url,
            farm_config.FARM_WAREHOUSE: self.warehouse.url,
            farm_config.FARM_FIELD_MAP: str(field_map_path),
            # Explicit, since os.environ carries one phase's settings into the next.
            **(inference or {farm_config.FARM_INFERENCE: "local"}),
        }
        if run_max_photos:
            self.environment[farm_config.FARM_RUN_MAX_PHOTOS] = str(run_max_photos)
        os.environ.update(self.environment)
        # The runs' torch threads only: the bare path keeps the machine's default.
        daemon_environment = dict(self.environment)
        if run_torch_threads:
            daemon_environment[farm_config.FARM_TORCH_THREADS] = str(run_torch_threads)
        self.daemon = DaemonProcess(self.dagster_home, daemon_environment, workdir / f"{name}.log")
        self.bucket_url = bucket_url
        self.local = local
        self.project = stack.project
        self.fs, self.root = bucket_filesystem(bucket_url)

    def upload(self, photos: list[Any]) -> None:
        """Photos into the bucket; on a local bucket, each announced by a drone message."""
        self.fs.pipe({join(self.root, photo.key.relative_path()): photo.png for photo in photos})
        if self.local:
            publisher = DroneMessagePublisher(self.project)
            for index, photo in enumerate(photos):
                uri = join(self.bucket_url, photo.key.relative_path())
                publisher.publish(uri, photo.key, "bench", captured_at(photo.key, index))
            publisher.flush()

    @contextlib.contextmanager
    def running(self) -> Iterator[DagsterInstance]:
        """The daemon started and its models recorded; on the way out, also after an error,
        the daemon and its run processes stopped: none may go on writing into the
        benchmark's folder."""
        self.daemon.start()
        try:
            with DagsterInstance.from_config(str(self.dagster_home)) as instance:
                # The daemon loads the code location and records the models first.
                deadline = time.monotonic() + 180
                while not instance.get_run_records(RunsFilter()) or instance.get_run_records(
                    RunsFilter(statuses=list(UNFINISHED_STATUSES)), limit=1
                ):
                    if time.monotonic() > deadline:
                        raise RuntimeError(self.daemon.log_tail())
                    time.sleep(1)
                yield instance
        finally:
            self.daemon.stop()


def remove_tree(path: Path, seconds: float = 60.0) -> None:
    """Remove the benchmark's folder, and wait for it: a process a phase stopped may still
    finish a write into it (a killed run worker first completes the system call it is in),
    and a folder that gains a file while it is removed fails with ENOTEMPTY; try again."""
    deadline = time.monotonic() + seconds
    while path.exists():
        try:
            shutil.rmtree(path)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def image_runs(instance: DagsterInstance) -> list[Any]:
    return [
        record
        for record in instance.get_run_records(RunsFilter())
        if PHOTOS_TAG in record.dagster_run.tags
    ]


def stage_seconds(instance: DagsterInstance, run_id: str) -> dict[str, float]:
    for record in instance.fetch_materializations(DRONE_IMAGES, limit=1000).records:
        if record.run_id == run_id:
            metadata = record.asset_materialization.metadata
            return dict(metadata["stage_seconds"].value)
    return {}
