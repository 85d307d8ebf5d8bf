"""The scenarios of benchmarks/photo_cost.py: start a topology, feed it photos, meter it."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bare_model_path import measure_bare_path
from dagster import DagsterInstance
from photo_cost_breakdown import measure_fixed_cost
from photo_cost_meter import (
    CpuMeter,
    LatencyTracker,
    busy_cpu_seconds,
    postgres_sessions,
)
from pipeline_throughput import Platform, image_runs, stage_seconds

from farm_platform import config
from farm_platform.layout import bucket_filesystem
from farm_platform.resources.field_map import write_field_map
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import wait_for_photos
from farm_platform_dev.local_stack import LocalStack
from farm_platform_dev.simulate import FarmConfig, field_map, simulate_images

DAY = dt.date(2026, 6, 1)
EMULATORS = "emulators"


@dataclasses.dataclass(frozen=True)
class Scenario:
    label: str
    photos: int
    interval_s: float  # between two uploads; 0: all at once
    production: bool
    quick_photos: int
    idle_s: float = 30.0  # how long the idle platform is metered first
    # The production topology's PgBouncer (farm_platform_dev.pooler); False: none.
    pooler: bool = True

    def sized(self, quick: bool, photos: int | None) -> Scenario:
        count = photos or (self.quick_photos if quick else self.photos)
        return dataclasses.replace(self, photos=count, idle_s=15.0 if quick else 60.0)


# --quick: a 64-photo burst and a 40-photo (80 s) flight, so that burst and flight with their
# start, idle window, runs and bare path take about 5 minutes on 2 cores.
SCENARIOS = {
    "burst": Scenario("burst, embedded", 2000, 0.0, False, 64),
    "flight": Scenario("flight (1 photo / 2 s), embedded", 900, 2.0, False, 40),
    "production": Scenario("flight (1 photo / 2 s), production topology", 900, 2.0, True, 40),
    # The same without the pooler: every Dagster storage operation a new PostgreSQL session.
    "production-no-pooler": Scenario(
        "flight (1 photo / 2 s), production topology, no pooler", 900, 2.0, True, 40, pooler=False
    ),
}


def bare_cpu_per_photo(pngs: list[bytes], sample: int = 256) -> float:
    """CPU seconds per photo of one pass of the bare model path over (up to `sample` of)
    the photos, loading and warm-up left out: (load + warm-up + 1 + k passes) − (load +
    warm-up + 1 pass), over k passes. A rate: a sample of the photos measures it; a small
    sample gets more passes (k up to 4, about 128 photos' worth), so that a loaded
    machine's noise does not swing it."""
    pngs = pngs[:sample]
    extra = min(4, max(1, -(-128 // len(pngs))))
    cpu = []
    for repeats in (1, 1 + extra):
        started = time.process_time()
        measure_bare_path(pngs, batch_size=32, repeats=repeats)
        cpu.append(time.process_time() - started)
    return (cpu[1] - cpu[0]) / (extra * len(pngs))


def measure(scenario: Scenario, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    workdir.chmod(0o755)
    farm = FarmConfig(positions=scenario.photos, days=1, start_date=DAY, seed=5)
    photos = list(simulate_images(farm))  # drones make the photos, not the platform
    print(f"\n== {scenario.label}: {scenario.photos} photos", flush=True)
    with _topology(scenario, workdir) as (platform, instance, roots, pg_url):
        # The platform's cost while nothing arrives (sensor ticks, the daemon's loops).
        with CpuMeter(roots) as idle_meter:
            time.sleep(scenario.idle_s)
        # A run process still exiting after the models' run is not the idle platform's.
        idle = {
            group: seconds / scenario.idle_s
            for group, seconds in idle_meter.by_group().items()
            if group not in (EMULATORS, "run workers")
        }
        sessions_before = postgres_sessions(pg_url) if pg_url else 0
        tracker = LatencyTracker(platform.warehouse)
        machine_before = busy_cpu_seconds()
        started = time.monotonic()
        with CpuMeter(roots) as meter:
            _feed(platform, photos, scenario.interval_s, tracker)
            deadline = time.monotonic() + 600 + 2 * scenario.photos
            while tracker.poll() < len(photos):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{tracker.poll()} of {len(photos)} photos graded")
                time.sleep(0.5)
            _wait_runs_ended(instance)
        seconds = time.monotonic() - started
        machine = busy_cpu_seconds() - machine_before
        connections = postgres_sessions(pg_url) - sessions_before - 1 if pg_url else None
        figures = _run_figures(instance, meter.by_group(), len(photos))
        runs = max(1, figures["runs"])
        figures["fixed_cost_parts"] = measure_fixed_cost(
            platform.warehouse,
            platform.bucket_url,
            round(len(photos) / runs),
            round(figures["events"] / runs),
        )
    return {
        **figures,
        "photos": len(photos),
        "seconds": seconds,
        "machine_cpu_s": machine,
        "db_connections": connections,
        "idle_cpu_s_per_s": idle,
        "latency_p50_p95": tracker.percentiles(),
        "pngs": [photo.png for photo in photos],
    }


def _feed(platform: Any, photos: list[Any], interval: float, tracker: LatencyTracker) -> None:
    if not interval:
        tracker.uploaded(photo.key.position_id for photo in photos)
        platform.upload(photos)
        return
    next_at = time.monotonic()
    for photo in photos:
        time.sleep(max(0.0, next_at - time.monotonic()))
        tracker.uploaded([photo.key.position_id])
        platform.upload([photo])
        tracker.poll()
        next_at += interval


def _wait_runs_ended(instance: DagsterInstance, seconds: float = 1800) -> None:
    """Rows are committed before a run's checks and last events: wait for its end to
    count them (and its CPU)."""
    deadline = time.monotonic() + seconds
    while any(r.end_time is None for r in image_runs(instance)) and time.monotonic() < deadline:
        time.sleep(0.5)


def _run_figures(instance: DagsterInstance, cpu: dict[str, float], photos: int) -> dict[str, Any]:
    runs = image_runs(instance)
    emulators = cpu.pop(EMULATORS, 0.0)
    events = sum(len(instance.all_logs(r.dagster_run.run_id)) for r in runs)
    outside_op = op_wall = queued = 0.0
    ran = [r for r in runs if r.start_time and r.end_time]  # a canceled run never started
    for record in ran:
        stages = stage_seconds(instance, record.dagster_run.run_id)
        op_wall += stages.get("op_total", 0.0)
        outside_op += record.end_time - record.start_time - stages.get("op_total", 0.0)
        queued += record.start_time - record.create_timestamp.timestamp()
    n = max(1, len(ran))
    return {
        "runs": len(runs),
        "events": events,
        "cpu_s_by_group": cpu,
        "platform_cpu_s": sum(cpu.values()),
        "emulator_cpu_s": emulators,
        "cpu_s_per_run_by_group": {
            g: s / max(1, len(runs)) for g, s in sorted(cpu.items(), key=lambda i: -i[1])
        },
        "run_wall_s": {
            "created → started": queued / n,
            "the op": op_wall / n,
            "in the run, outside the op": outside_op / n,
        },
        "photos_per_run": photos / max(1, len(runs)),
    }


Roots = Callable[[], dict[int, str]]


@contextlib.contextmanager
def _topology(
    scenario: Scenario, workdir: Path
) -> Iterator[tuple[Any, DagsterInstance, Roots, str | None]]:
    if scenario.production:
        with _production(scenario, workdir) as topology:
            yield topology
        return
    local_stack = LocalStack()
    with local_stack as stack:
        platform = Platform(stack, workdir, "embedded", scenario.photos, local=True)
        emulator_pids = [process.pid for process in local_stack._procs]  # noqa: SLF001
        with platform.running() as instance:
            daemon_pid = platform.daemon.process.pid  # type: ignore[union-attr]

            def roots() -> dict[int, str]:
                return {daemon_pid: "daemon", **dict.fromkeys(emulator_pids, EMULATORS)}

            yield platform, instance, roots, None


@contextlib.contextmanager
def _production(
    scenario: Scenario, workdir: Path
) -> Iterator[tuple[Any, DagsterInstance, Roots, str | None]]:
    from farm_platform_dev import production as topology
    from farm_platform_dev import stack as dev_stack

    password = topology.PG_PASSWORD
    topology.throwaway_credentials()
    state_dir = workdir / "state"
    info = dev_stack.stack_up(state_dir)
    farm = FarmConfig(positions=scenario.photos, days=1, start_date=DAY, seed=5)
    write_field_map(field_map(farm), state_dir / "positions.csv")
    try:
        bucket = f"file://{workdir / 'bucket'}"
        settings = {**info.environment(), config.FARM_BUCKET: bucket}
        production = topology.production_up(
            state_dir, settings, replicas=2, max_concurrent_runs=4, pooler=scenario.pooler
        )
        environment = {
            **settings,
            **production.environment(quote(os.environ[password], safe="")),
            config.FARM_FIELD_MAP: str(state_dir / "positions.csv"),
        }
        with config.process_environment(environment):
            platform = _Attached(info.project, bucket, environment[config.FARM_WAREHOUSE])
            with DagsterInstance.from_config(str(production.dagster_home)) as instance:
                # The daemon records the models first; the meter starts after.
                wait_for_photos(instance, platform.warehouse, 0, 300)
                stack_state = dev_stack._read_state(state_dir) or {}  # noqa: SLF001
                emulators = [stack_state.get(k) for k in ("pubsub_pid", "gcs_pid")]

                def roots() -> dict[int, str]:
                    pids = (topology.read_production(state_dir) or {"pids": {}})["pids"]
                    found = {int(pid): key.split(":")[0] for key, pid in pids.items()}
                    return {**found, **{int(p): EMULATORS for p in emulators if p}}

                # PostgreSQL's own sessions: asked of the server, not through the pooler.
                secret = quote(os.environ[password], safe="")
                server = f"postgresql://farm:{secret}@127.0.0.1:{production.pg_port}/farm"
                yield platform, instance, roots, server
    finally:
        topology.production_down(state_dir)
        dev_stack.stack_down(state_dir)


class _Attached:
    """What `Platform.upload` needs, for a topology that something else started."""

    upload = Platform.upload

    def __init__(self, project: str, bucket_url: str, warehouse_url: str) -> None:
        self.project, self.bucket_url, self.local = project, bucket_url, True
        self.fs, self.root = bucket_filesystem(bucket_url)
        self.warehouse = WarehouseResource(url=warehouse_url)
