"""Scale-out of the production topology: k runs of one day at once on k model replicas.

    python benchmarks/scale_out.py [--k 1 2 4 8] [--photos-per-run 12] [--batch-ms 200]

For each k, a fresh production topology (`stack up --production`: PostgreSQL instance and
warehouse, code servers, daemon, Redis and the Celery workers) with k model-server replicas
and k runs of a day allowed at once. The replicas emulate a remote accelerator (`models
serve --emulate-batch-ms`): one batch at a time each, held for at least --batch-ms, the real
outputs computed inside, so that the accelerator's time, not this machine's two cores, is
what more replicas add. One day of k × --photos-per-run photos is announced at once and
batched into runs of --photos-per-run (the sensor's claims), graded on the replicas (the
client spreads requests over them).

Prints per k: photos/s from the first upload to the last photo graded, the scaling
efficiency throughput(k) / (k × throughput(1)), where the runs' wall time went (queued and
starting, running), and Dagster events per photo; then the bottleneck the figures point at.
The photos are rendered before the clock starts (drones make them, not the platform).
It also counts the CPU seconds the machine spent in that window, in all and per process of
the topology (each with the run workers and the rest it started; the emulators, which stand
in for Cloud Storage and Pub/Sub, are the machine's remainder), and the ceiling the
topology's CPU puts on efficiency: with c CPU seconds per photo at k = 1 and `cores` cores,
no k can pass `cores / c` photos/s, so efficiency(k) ≤ cores / (c · k · thr(1)).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from dagster import DagsterInstance, RunsFilter
from docs_table import add_write_docs_flag, write_docs

from farm_platform import config
from farm_platform.images.run_tags import PHOTOS_TAG
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import wait_for_photos
from farm_platform_dev.production import (
    credentials,
    production_down,
    production_up,
    read_production,
    throwaway_credentials,
)
from farm_platform_dev.simulate import (
    DroneMessagePublisher,
    FarmConfig,
    simulate_images,
    write_farm,
)
from farm_platform_dev.stack import stack_down, stack_up

DAY = dt.date(2026, 9, 1)


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and everything it started: the live ones' own and reaped
    children's times (a reaped process's time is in its parent's children times)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def _cpu_by_role(state_dir: Path) -> dict[str, float]:
    """CPU seconds so far of each process of the topology, replicas and workers summed."""
    state = read_production(state_dir) or {"pids": {}}
    by_role: dict[str, float] = {}
    for key, pid in state["pids"].items():
        role = key.split(":", 1)[0] if key.startswith(("model_server", "worker")) else key
        by_role[role] = by_role.get(role, 0.0) + _tree_cpu_seconds(int(pid))
    return by_role


def _busy_cpu_seconds() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def measure(k: int, photos_per_run: int, batch_ms: float, workdir: Path) -> dict[str, Any]:
    state_dir = workdir / f"k{k}"
    info = stack_up(state_dir)
    try:
        settings = {
            **info.environment(),
            config.FARM_SENSOR_INTERVAL_SECONDS: "5",
            config.FARM_RUN_MAX_PHOTOS: str(photos_per_run),
            config.FARM_RUN_TIMEOUT_SECONDS: "900",
        }
        production = production_up(
            state_dir,
            settings,
            replicas=k,
            max_concurrent_runs=k,
            quick_polling=True,
            replica_batch_ms=batch_ms,
        )
        environment = {
            **settings,
            **production.environment(credentials()[0]),
            config.FARM_FIELD_MAP: str(state_dir / "positions.csv"),
        }
        warehouse = WarehouseResource(url=environment[config.FARM_WAREHOUSE])
        photos = k * photos_per_run
        farm = FarmConfig(positions=photos, days=1, start_date=DAY, seed=11)
        # Rendered before the clock: drones, not the platform, make the photos.
        images = list(simulate_images(farm))
        with config.process_environment(environment):
            instance = DagsterInstance.from_config(str(production.dagster_home))
            try:
                # The daemon records the models first; the clock starts at the first upload.
                wait_for_photos(instance, warehouse, 0, 300)
                cpu_before, busy_before = _cpu_by_role(state_dir), _busy_cpu_seconds()
                started = time.perf_counter()
                publisher = DroneMessagePublisher(info.project)
                write_farm(
                    farm,
                    info.bucket_url(),
                    state_dir / "positions.csv",
                    publisher,
                    truth_url=str(state_dir / "truth"),
                    images=images,
                )
                wait_for_photos(instance, warehouse, photos, 3600, poll_seconds=0.5)
                seconds = time.perf_counter() - started
                busy = _busy_cpu_seconds() - busy_before
                cpu_after = _cpu_by_role(state_dir)
                cpu = {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}
                runs = [
                    record
                    for record in instance.get_run_records(RunsFilter())
                    if PHOTOS_TAG in record.dagster_run.tags
                ]
                events = sum(len(instance.all_logs(r.dagster_run.run_id)) for r in runs)
                queued = sum(r.start_time - r.create_timestamp.timestamp() for r in runs)
                running = sum(r.end_time - r.start_time for r in runs)
            finally:
                instance.dispose()
    finally:
        production_down(state_dir)
        stack_down(state_dir)
    return {
        "k": k,
        "photos": photos,
        "runs": len(runs),
        "seconds": seconds,
        "photos_per_s": photos / seconds,
        "queued_s_per_run": queued / len(runs),
        "running_s_per_run": running / len(runs),
        "events_per_photo": events / photos,
        "cpu_s_per_photo": busy / photos,
        "topology_cpu_s_per_photo": sum(cpu.values()) / photos,
        "cores_busy": busy / seconds,
        "cpu_s_per_photo_by_role": {role: cpu[role] / photos for role in sorted(cpu)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--photos-per-run", type=int, default=12)
    parser.add_argument("--batch-ms", type=float, default=200.0)
    add_write_docs_flag(parser)
    args = parser.parse_args()
    table = []
    throwaway_credentials()
    rows = []
    cores = psutil.cpu_count()
    with tempfile.TemporaryDirectory(prefix="farm-scale-out-") as workdir:
        Path(workdir).chmod(0o755)  # PostgreSQL runs as another user
        for k in args.k:
            print(f"== k = {k}: {k} runs of one day at once, {k} replicas", flush=True)
            rows.append(measure(k, args.photos_per_run, args.batch_ms, Path(workdir)))
            row = rows[-1]
            base = rows[0]["photos_per_s"] / rows[0]["k"]
            print(
                f"   {row['photos']} photos in {row['runs']} runs, {row['seconds']:.1f} s: "
                f"{row['photos_per_s']:.2f} photos/s, efficiency "
                f"{row['photos_per_s'] / (row['k'] * base):.2f}; per run "
                f"{row['queued_s_per_run']:.1f} s queued and starting, "
                f"{row['running_s_per_run']:.1f} s running; "
                f"{row['events_per_photo']:.1f} Dagster events per photo",
                flush=True,
            )
            ceiling = cores / (rows[0]["topology_cpu_s_per_photo"] * row["k"] * base)
            roles = ", ".join(
                f"{role} {value:.2f}" for role, value in row["cpu_s_per_photo_by_role"].items()
            )
            print(
                f"   CPU: {row['cores_busy']:.2f} of {cores} cores busy, "
                f"{row['cpu_s_per_photo']:.2f} CPU s per photo on the machine, "
                f"{row['topology_cpu_s_per_photo']:.2f} in the topology's processes "
                f"({roles}); "
                f"the CPU's ceiling on efficiency here {min(ceiling, 1.0):.2f}",
                flush=True,
            )
            table.append(
                (k, f"{row['photos_per_s']:.2f}", f"{row['photos_per_s'] / (k * base):.2f}")
            )
            table[-1] += (f"{row['queued_s_per_run']:.1f} s / {row['running_s_per_run']:.1f} s",)
            table[-1] += (f"{row['cores_busy']:.2f}", f"{row['topology_cpu_s_per_photo']:.2f}")
            table[-1] += (f"{min(ceiling, 1.0):.2f}",)
    print(
        "\nA run's time that grows with k while the replicas' batch time is fixed is this "
        "machine's: the runs' own CPU (decode, crops, checks, writes) shares two cores."
    )
    if args.write_docs:
        write_docs(
            "scale_out",
            ["k (runs = replicas)", "photos/s", "efficiency `thr(k) / (k·thr(1))`"]
            + ["per run: queued and starting / running", f"cores busy (of {cores})"]
            + ["CPU s per photo in the topology", "the CPU's ceiling on efficiency"],
            table,
            note=f"{args.photos_per_run} photos per run, emulated accelerator batch "
            f"{args.batch_ms:g} ms.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
