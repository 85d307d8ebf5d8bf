"""The drone-image sensor at scale: one day of --photos photos, instance on PostgreSQL.

    python benchmarks/sensor_at_scale.py [--photos 50000] [--run-max-photos 2000]
                                         [--bucket local|emulator]

Issue 23: the sensor's tick time and Dagster events per photo at 50,000 photos of one day.
Prints how many ticks of `drone_image_sensor` drain the day; per tick its seconds (median,
p95, max, from the start and end the instance's tick history records), photos and runs
created; seconds of sensor per 1,000 photos; where a tick's time goes; the claim query's
time with every photo waiting; and Dagster event-log rows and runs per photo.

Real here:
- the production topology of `stack up --production` (farm_platform_dev.production):
  PostgreSQL for the Dagster instance (dagster-postgres: runs, event logs, sensor ticks)
  and for the warehouse; the image code location on its own gRPC code server; the real
  `dagster-daemon` evaluating the real `drone_image_sensor` (farm_platform.ingest.tick and
  farm_platform.ingest.arrivals) at the shipped interval, tick limits and batch size; the
  webserver, Redis and the Celery workers, idle beside it as in production;
- the Pub/Sub emulator: the sensor pulls every announcement from `drone_image`, holds and
  acknowledges them; it looks each photo's object up in the bucket, records the arrivals
  in the PostgreSQL warehouse and claims batches, and Dagster creates a run per claim.

Shortcuts, and why:
- the bucket (--bucket local, the default) is a local folder (`file://`), and each photo
  is announced by a drone-controller message, the contract's other form, published to the
  Pub/Sub emulator. On fake-gcs-server (--bucket emulator: uploads through its API, its
  OBJECT_FINALIZE notifications) uploading is quick (~350 photos/s), but the lookups are
  not: gcsfs's `info()` sends a prefix listing beside each object GET, and the emulator's
  filesystem backend walks every object of the bucket for a listing (57 ms at 2,000
  objects), so past a few thousand photos its lookups measure the emulator. Cloud Storage
  answers a listing without walking the bucket. On the local bucket a lookup is a stat:
  the lookup share printed here is a floor of what Cloud Storage's round trips cost;
- runs do not execute: the instance's QueuedRunCoordinator has `max_concurrent_runs: 0`
  (Dagster's setting that stops any run from launching), so every run the sensor requests
  stays QUEUED. A tick still includes Dagster creating the run records and their planned
  events, as in production. What the runs cost when they execute, their events included,
  is benchmarks/scale_out.py's figure, not this one's;
- no model-server replica: nothing is graded;
- the day is announced while the sensor is stopped (`dagster sensor stop`), then the
  sensor is started: it drains a backlog, each tick taking its most
  (IngestSettings.max_messages_per_tick). That is a tick's worst case, and a day
  announced faster than ticks take it;
- every photo is the same simulated 64×64 PNG (the smallest side the runs' checks accept):
  the sensor reads an object's metadata, never its content;
- while the sensor drains, PostgreSQL logs every statement and connection of the `farm`
  and `dagster` databases with its duration (`log_min_duration_statement = 0` on both;
  Dagster and the warehouse open a connection per call, so every process picks it up).
  That splits a tick's database time; the log costs a little of that time itself;
- probes, timed in this process on the same servers with the production classes: one
  `ingest_tick` of a full tick's messages (the subscription sought back) on a scratch
  database, split by what it calls (Pub/Sub, bucket lookups, warehouse; the rest is
  parsing and glue); the field map's read; building the run requests; opening a Dagster
  storage connection; and `ArrivalQueue.claim` with every photo of the day waiting at once
  (a drain never has that: each tick claims its full batches).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from dagster import DagsterInstance
from docs_table import add_write_docs_flag, write_docs
from sensor_scale_log import DAY, describe_ticks, log_statements, photo_runs, read_log
from sensor_scale_probes import claim_probe, connection_probe, tick_probe
from sensor_scale_report import docs_rows, report

from farm_platform import config
from farm_platform.images.run_tags import DRONE_IMAGE_SENSOR, PHOTOS_TAG
from farm_platform.ingest.arrivals import ArrivalQueue
from farm_platform.layout import ImageKey, bucket_filesystem, join
from farm_platform.quality.suites import MIN_IMAGE_SIDE
from farm_platform.resources.field_map import write_field_map
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import sensor_ticks
from farm_platform_dev.postgres import PostgresServer
from farm_platform_dev.production import (
    PG_PASSWORD,
    Production,
    dead_processes,
    production_down,
    production_up,
    read_production,
    throwaway_credentials,
)
from farm_platform_dev.simulate import FarmConfig, field_map, simulate_images
from farm_platform_dev.simulate.farm import position_id
from farm_platform_dev.simulate.publish import DroneMessagePublisher, captured_at
from farm_platform_dev.stack import StackInfo, stack_down, stack_up

LOCATION = "farm_platform"


def toggle_sensor(running: bool, production: Production, environment: dict[str, str]) -> None:
    """`dagster sensor start|stop`, as an operator would, against the topology's workspace."""
    command = [str(Path(sys.executable).with_name("dagster")), "sensor"]
    command += ["start" if running else "stop", DRONE_IMAGE_SENSOR]
    command += ["-w", str(production.workspace), "-l", LOCATION]
    subprocess.run(
        command, env={**os.environ, **environment}, check=True, capture_output=True, timeout=300
    )


def wait_until(
    condition: Callable[[], bool], timeout: float, state_dir: Path, what: str, poll: float = 1.0
) -> None:
    """Poll `condition`; raise if the daemon died or `timeout` passed first."""
    deadline = time.monotonic() + timeout
    while not condition():
        state = read_production(state_dir)
        if state is None or "daemon" in dead_processes(state, state_dir):
            tail = (state_dir / "daemon.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"dagster-daemon is gone while waiting for {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def ended_ticks(instance: DagsterInstance, sensor: str, after: float = 0.0) -> list[Any]:
    from dagster._core.scheduler.instigation import TickStatus

    ticks = sensor_ticks(instance, sensor, limit=100_000)
    return sorted(
        (t for t in ticks if t.status != TickStatus.STARTED and t.timestamp >= after),
        key=lambda t: t.timestamp,
    )


def announce_day(info: StackInfo, bucket_url: str, photos: int) -> float:
    """Put the day's photos in the bucket and announce each on `drone_image`; seconds.

    On the GCS emulator, an upload through its API is the announcement (its OBJECT_FINALIZE
    notification); on a local folder bucket, each photo gets a drone-controller message."""
    png = next(
        iter(simulate_images(FarmConfig(positions=1, days=1, image_size=MIN_IMAGE_SIDE)))
    ).png
    fs, root = bucket_filesystem(bucket_url)
    local = bucket_url.startswith("file://")
    publisher = DroneMessagePublisher(info.project) if local else None
    started = time.perf_counter()
    for first in range(0, photos, 1000):
        indexes = range(first, min(photos, first + 1000))
        keys = [ImageKey(position_id(index), DAY) for index in indexes]
        # gcsfs uploads a dict's objects concurrently (64 requests in flight).
        fs.pipe({join(root, key.relative_path()): png for key in keys}, batch_size=64)
        if publisher is None:
            continue
        for index, key in zip(indexes, keys, strict=True):
            when = captured_at(key, index)
            publisher.publish(join(bucket_url, key.relative_path()), key, "bench", when)
    if publisher is not None:
        publisher.flush()
    return time.perf_counter() - started


def scalar(url: str, sql: str, parameters: Sequence[Any] = ()) -> Any:
    with psycopg.connect(url) as connection:
        row = connection.execute(sql, list(parameters)).fetchone()
        assert row is not None
        return row[0]


def requested_photos(dagster_url: str) -> int:
    """Photos in the sensor's runs so far: straight from the run tags, since loading the
    runs (each with its photo list) at every poll would take CPU from the daemon."""
    return int(
        scalar(
            dagster_url,
            "SELECT coalesce(sum(value::int), 0) FROM run_tags WHERE key = %s",
            [PHOTOS_TAG],
        )
    )


def measure(photos: int, run_max_photos: int, bucket: str, state_dir: Path) -> dict[str, Any]:
    info = stack_up(state_dir)
    bucket_url = f"file://{state_dir / 'bucket'}" if bucket == "local" else info.bucket_url()
    write_field_map(
        field_map(FarmConfig(positions=photos, days=1, start_date=DAY)),
        state_dir / "positions.csv",
    )
    settings = {
        **info.environment(),
        config.FARM_BUCKET: bucket_url,
        config.FARM_RUN_MAX_PHOTOS: str(run_max_photos),
    }
    started = time.perf_counter()
    production = production_up(
        state_dir, settings, replicas=0, max_concurrent_runs=0, runs_per_day=1
    )
    password = os.environ[PG_PASSWORD]
    environment = {
        **settings,
        **production.environment(quote(password, safe="")),
        config.FARM_FIELD_MAP: str(state_dir / "positions.csv"),
    }
    server = PostgresServer(base=state_dir / "postgres", password=password, port=production.pg_port)
    dagster_url = server.database_url("dagster")
    result: dict[str, Any] = {"photos": photos, "run_max_photos": run_max_photos}
    with config.process_environment(environment):
        instance = DagsterInstance.from_config(str(production.dagster_home))
        try:
            # The daemon is up once both image sensors have ticked (the model sensor's run
            # of the models' versions is created then, and stays queued like every run).
            wait_until(
                lambda: (
                    bool(ended_ticks(instance, DRONE_IMAGE_SENSOR))
                    and bool(ended_ticks(instance, "model_registry_sensor"))
                ),
                600,
                state_dir,
                "the daemon's first ticks",
            )
            print(f"   topology up in {time.perf_counter() - started:.0f} s", flush=True)
            toggle_sensor(False, production, environment)
            announced = time.time()
            result["announce_seconds"] = announce_day(info, bucket_url, photos)
            print(
                f"   {photos} photos into the bucket and announced in "
                f"{result['announce_seconds']:.1f} s, the sensor stopped",
                flush=True,
            )

            result.update(drain(instance, server, production, environment, state_dir, photos))
            queue = ArrivalQueue(WarehouseResource(url=environment[config.FARM_WAREHOUSE]))
            result["pending_after"] = queue.pending_count()

            result["tick_probe"] = tick_probe(server, info, environment, announced)
            result["claim_probe"] = claim_probe(server, photos, run_max_photos)
            result["connection_seconds"] = connection_probe(dagster_url)
        finally:
            instance.dispose()
    return result


def drain(
    instance: DagsterInstance,
    server: PostgresServer,
    production: Production,
    environment: dict[str, str],
    state_dir: Path,
    photos: int,
) -> dict[str, Any]:
    """Start the stopped sensor on the announced day and wait until every photo has its run
    and the tick after the last claims confirmed them: the ticks (with the statement log
    of the drain), runs and event-log rows."""
    dagster_url = server.database_url("dagster")
    result: dict[str, Any] = {}
    events_before = int(scalar(dagster_url, "SELECT count(*) FROM event_logs"))
    log_path = state_dir / "postgres" / "postgres.log"
    log_statements(server, on=True)
    offset = log_path.stat().st_size
    sensor_started = time.time()
    toggle_sensor(True, production, environment)
    wait_until(
        lambda: requested_photos(dagster_url) >= photos,
        300 + photos * 0.05,
        state_dir,
        "every photo's run",
        # Its queries land in the log too: few of them.
        poll=2.0,
    )
    last_run = max(photo_runs(instance), key=lambda r: r.create_timestamp).dagster_run

    def tick_of_last_run() -> Any:
        ticks = ended_ticks(instance, DRONE_IMAGE_SENSOR, sensor_started)
        return next((t for t in ticks if last_run.run_id in t.run_ids), None)

    # Runs are created inside their tick: it may not have ended yet.
    wait_until(lambda: tick_of_last_run() is not None, 120, state_dir, "the last tick")
    last_tick = tick_of_last_run()
    # The next tick confirms the last claims (their messages are acknowledged).
    wait_until(
        lambda: any(
            t.timestamp > last_tick.timestamp
            for t in ended_ticks(instance, DRONE_IMAGE_SENSOR, sensor_started)
        ),
        120,
        state_dir,
        "the tick that confirms the last claims",
    )
    toggle_sensor(False, production, environment)
    log_statements(server, on=False)
    events_after = int(scalar(dagster_url, "SELECT count(*) FROM event_logs"))

    raw = ended_ticks(instance, DRONE_IMAGE_SENSOR, sensor_started)
    confirming = next(t for t in raw if t.timestamp > last_tick.timestamp)
    raw = [t for t in raw if t.timestamp <= confirming.timestamp]
    result["ticks"] = describe_ticks(instance, raw, read_log(log_path, offset))
    run_ids = [r.dagster_run.run_id for r in photo_runs(instance)]
    result["runs"] = len(run_ids)
    result["events"] = events_after - events_before
    with psycopg.connect(dagster_url) as connection:
        result["run_events"] = dict(
            connection.execute(
                "SELECT dagster_event_type, count(*) FROM event_logs"
                " WHERE run_id = ANY(%s) GROUP BY 1 ORDER BY 2 DESC",
                [run_ids],
            ).fetchall()
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=50_000)
    parser.add_argument("--run-max-photos", type=int, default=config.DEFAULT_RUN_MAX_PHOTOS)
    parser.add_argument(
        "--bucket",
        choices=["local", "emulator"],
        default="local",
        help="local: a folder bucket, drone-controller messages; emulator: uploads to "
        "fake-gcs-server and its notifications (its lookups slow down as the bucket grows)",
    )
    add_write_docs_flag(parser)
    args = parser.parse_args()
    throwaway_credentials()
    started = time.perf_counter()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="farm-sensor-scale-") as workdir:
        state_dir = Path(workdir)
        state_dir.chmod(0o755)  # PostgreSQL runs as another user
        try:
            result = measure(args.photos, args.run_max_photos, args.bucket, state_dir)
        finally:
            production_down(state_dir)
            stack_down(state_dir)
    report(result)
    print(
        f"\n(whole benchmark {time.perf_counter() - started:.0f} s; load average "
        f"{os.getloadavg()[0]:.1f})"
    )
    if args.write_docs:
        write_docs("sensor_at_scale", ["figure", "value"], docs_rows(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
