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
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from dagster import DagsterInstance, RunsFilter
from docs_table import add_write_docs_flag, write_docs

from farm_platform import config, config_values
from farm_platform.images.run_tags import DRONE_IMAGE_SENSOR, PHOTOS_TAG
from farm_platform.images.sensors import TICK_TAG, claim_run_request
from farm_platform.ingest.arrivals import ArrivalQueue
from farm_platform.ingest.tick import IngestCursor, IngestSettings, ingest_tick
from farm_platform.layout import ImageKey, bucket_filesystem, join
from farm_platform.quality.suites import MIN_IMAGE_SIDE
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.field_map import FieldMapResource, write_field_map
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform.resources.pubsub import PubSubResource
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import sensor_ticks
from farm_platform_dev.postgres import PostgresServer, fresh_database
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

DAY = dt.date(2026, 9, 1)
LOCATION = "farm_platform"
# Epoch with milliseconds, pid, database: log lines are matched to ticks by time.
LOG_LINE_PREFIX = "%n [%p] %d "
LOG_LINE = re.compile(r"^(?P<epoch>\d+\.\d+) \[(?P<pid>\d+)\] (?P<db>\S*) LOG:  (?P<text>.*)$")
STATEMENT = re.compile(
    r"^duration: (?P<ms>[\d.]+) ms  "
    r"(?:statement|parse [^:]*|bind [^:]*|execute [^:]*): (?P<sql>.*)$"
)
PULLED = re.compile(r"pulled (\d+) messages \((\d+)/s\)")
# The claim's SELECT and the record's, as their statements begin.
CLAIM_SELECT = "SELECT position_id, date, min(received_at)"
RECORD_SELECT = "SELECT position_id, date, generation, requested_at"


@dataclass(frozen=True)
class Logged:
    """A statement PostgreSQL logged, with its server time, or a connection, with the time
    from its arrival to its authorization (the password exchange)."""

    epoch: float
    database: str
    sql: str | None  # None: a connection
    seconds: float


@dataclass
class Tick:
    """One ended tick of the sensor, with what the instance and PostgreSQL say of it."""

    start: float
    end: float
    runs: int = 0
    photos: int = 0
    pulled: int = 0
    # When the daemon stored the evaluation's result (the tick's cursor and reserved runs),
    # before it created the runs; None for a tick without runs.
    evaluated: float | None = None
    # The sensor's own measure of ingest_tick (its log line: pulled N at R/s).
    ingest_seconds: float | None = None
    # Statement shape -> server seconds on the warehouse during the tick.
    warehouse: dict[str, float] = field(default_factory=dict)
    warehouse_connections: int = 0
    # On the Dagster database while the tick's runs were created (any process's).
    dagster_statements: int = 0
    dagster_seconds: float = 0.0
    dagster_connections: int = 0
    dagster_connecting: float = 0.0
    event_inserts: int = 0

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def creating_runs(self) -> float:
        return self.end - self.evaluated if self.evaluated else 0.0

    @property
    def evaluation(self) -> float:
        return self.seconds - self.creating_runs

    def warehouse_seconds(self, prefix: str = "") -> float:
        return sum(s for shape, s in self.warehouse.items() if shape.startswith(prefix))


class Timed:
    """An object whose method calls are timed (start, end, name), for a probe's split."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.calls: list[tuple[float, float, str]] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.target, name)
        if not callable(value):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.calls.append((started, time.perf_counter(), name))

        return timed

    def seconds(self, *names: str, until: float = float("inf")) -> float:
        """Wall time covered by calls of `names` (all, if none) up to `until`: overlapping
        calls from threads count once."""
        spans = sorted(
            (s, min(e, until))
            for s, e, name in self.calls
            if (not names or name in names) and s < until
        )
        covered, reached = 0.0, float("-inf")
        for start, end in spans:
            if end > reached:
                covered += end - max(start, reached)
                reached = end
        return covered


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def statement_shape(sql: str) -> str:
    """A statement's first words, parameters folded, as its key."""
    sql = re.sub(r"\$\d+(, \$\d+)*", "$n", sql)
    return " ".join(sql.split()[:7])


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


def photo_runs(instance: DagsterInstance) -> list[Any]:
    records = instance.get_run_records(RunsFilter(tags={"dagster/partition": DAY.isoformat()}))
    return [r for r in records if PHOTOS_TAG in r.dagster_run.tags]


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


def log_statements(server: PostgresServer, on: bool) -> None:
    """Every statement on `farm` and `dagster` logged with its duration, and every
    connection (new connections take it up: each Dagster and warehouse call opens one)."""
    with psycopg.connect(server.database_url("farm"), autocommit=True) as connection:
        if on:
            connection.execute(f"ALTER SYSTEM SET log_line_prefix = '{LOG_LINE_PREFIX}'")
            connection.execute("ALTER SYSTEM SET log_connections = on")
        else:
            connection.execute("ALTER SYSTEM RESET log_connections")
        for database in ("farm", "dagster"):
            setting = "SET log_min_duration_statement = 0" if on else "RESET ALL"
            connection.execute(f"ALTER DATABASE {database} {setting}")
        connection.execute("SELECT pg_reload_conf()")


def read_log(log_path: Path, offset: int) -> list[Logged]:
    """The statements and connections PostgreSQL logged past `offset`."""
    with log_path.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    found = []
    received: dict[str, float] = {}
    for line in text.splitlines():
        if not (match := LOG_LINE.match(line)):
            continue  # a statement's continuation line
        epoch, message = float(match["epoch"]), match["text"]
        if message.startswith("connection received:"):
            received[match["pid"]] = epoch
        elif message.startswith("connection authorized:"):
            setup = epoch - received.pop(match["pid"], epoch)
            found.append(Logged(epoch, match["db"], None, setup))
        elif statement := STATEMENT.match(message):
            seconds = float(statement["ms"]) / 1000
            found.append(Logged(epoch, match["db"], statement["sql"], seconds))
    return found


def describe_ticks(
    instance: DagsterInstance, raw_ticks: Sequence[Any], logged: Sequence[Logged]
) -> list[Tick]:
    runs = {r.dagster_run.run_id: r for r in photo_runs(instance)}
    ticks = []
    for raw in raw_ticks:
        tick = Tick(start=raw.timestamp, end=raw.end_timestamp or raw.timestamp)
        mine = [runs[run_id] for run_id in raw.run_ids if run_id in runs]
        tick.runs = len(mine)
        tick.photos = sum(int(r.dagster_run.tags[PHOTOS_TAG]) for r in mine)
        stored = f"UPDATE job_ticks SET selector_id='{raw.selector_id}', status='STARTED'"
        if mine:
            tick.evaluated = next(
                (
                    entry.epoch
                    for entry in logged
                    if tick.start <= entry.epoch <= tick.end
                    and (entry.sql or "").startswith(stored)
                ),
                # Without the log line: the first run's creation (its plan fetched already).
                min(r.create_timestamp.timestamp() for r in mine),
            )
            # "N new, D dup, X dead-lettered of P": P messages pulled.
            tick.pulled = int(mine[0].dagster_run.tags[TICK_TAG].rsplit(" of ", 1)[1])
        elif raw.skip_reason and (match := PULLED.search(raw.skip_reason)):
            tick.pulled = int(match[1])
        if raw.log_key:
            captured = instance.compute_log_manager.get_log_data(raw.log_key)
            match = PULLED.search((captured.stderr or b"").decode(errors="replace"))
            if match and int(match[2]):
                tick.ingest_seconds = int(match[1]) / int(match[2])
        for entry in logged:
            if not tick.start <= entry.epoch <= tick.end:
                continue
            if entry.database == "farm":
                if entry.sql is None:
                    tick.warehouse_connections += 1
                else:
                    shape = statement_shape(entry.sql)
                    tick.warehouse[shape] = tick.warehouse.get(shape, 0.0) + entry.seconds
            elif entry.database == "dagster" and entry.epoch >= (tick.evaluated or tick.end):
                if entry.sql is None:
                    tick.dagster_connections += 1
                    tick.dagster_connecting += entry.seconds
                else:
                    tick.dagster_statements += 1
                    tick.dagster_seconds += entry.seconds
                    tick.event_inserts += entry.sql.startswith("INSERT INTO event_logs")
        ticks.append(tick)
    return ticks


def tick_probe(
    server: PostgresServer, info: StackInfo, environment: dict[str, str], since: float
) -> dict[str, float]:
    """One full tick's `ingest_tick` in this process, what it calls timed: the subscription
    is sought back to `since`, before the day was announced (every announcement is delivered
    again); the queue is a scratch database's (a day's first tick: every photo new)."""
    positions_started = time.perf_counter()
    positions = list(FieldMapResource(path=environment[config.FARM_FIELD_MAP]).positions())
    field_map_seconds = time.perf_counter() - positions_started
    pubsub = PubSubResource(project=info.project)
    pubsub.seek(dt.datetime.fromtimestamp(since, dt.UTC))
    timed_pubsub = Timed(pubsub)
    bucket = Timed(BucketResource(url=environment[config.FARM_BUCKET]))
    scratch = WarehouseResource(url=fresh_database(server.url, "tick_probe"))
    # A tick's queue checks the schema once, as every tick's does; creating it is not a tick's.
    scratch.create_schema()
    warehouse = Timed(scratch)
    queue = ArrivalQueue(warehouse)  # type: ignore[arg-type]
    policy = IngestPolicyResource.from_environment()
    started = time.perf_counter()
    outcome = ingest_tick(
        IngestCursor(),
        timed_pubsub,  # type: ignore[arg-type]
        bucket,  # type: ignore[arg-type]
        queue,
        lambda: positions,
        IngestSettings.from_policy(policy),
    )
    ended = time.perf_counter()
    ingest = ended - started
    started = time.perf_counter()
    summary = outcome.stats.run_tag()
    requests = [claim_run_request(claim, policy, summary) for claim in outcome.claims]
    run_requests = time.perf_counter() - started
    pubsub.acknowledge(queue.held_ack_ids())
    return {
        "pulled": outcome.stats.pulled,
        "new": outcome.stats.new_images,
        "runs": len(requests),
        "ingest": ingest,
        "pull": timed_pubsub.seconds("pull"),
        "ack": timed_pubsub.seconds("acknowledge", "extend_deadline"),
        # Lookups past the tick's budget go on after it returns: only its part counts.
        "lookups": bucket.seconds("info", until=ended),
        "warehouse": warehouse.seconds(),
        "field_map": field_map_seconds,
        "run_requests": run_requests,
    }


def claim_probe(server: PostgresServer, photos: int, max_photos: int) -> dict[str, float]:
    """The production `ArrivalQueue.claim` with all `photos` of the day waiting, on a
    scratch database of the same server: its SELECT of waiting photos and its UPDATEs."""
    from farm_platform.ingest.arrivals import Arrival
    from farm_platform.resources.pubsub import PulledMessage

    warehouse = Timed(WarehouseResource(url=fresh_database(server.url, "claim_probe")))
    queue = ArrivalQueue(warehouse)  # type: ignore[arg-type]
    now = dt.datetime.now(dt.UTC)
    arrivals = [
        Arrival(
            ImageKey(position_id(index), DAY),
            "1",
            f"gs://farm-images/{position_id(index)}/{DAY}/image.png",
            PulledMessage(f"probe-{index}", str(index), now.isoformat(), b"", {}),
        )
        for index in range(photos)
    ]
    queue.record(arrivals, now)
    warehouse.calls.clear()
    # The day is quiet (no busy date): every waiting photo is claimed.
    claims = queue.claim(max_photos, dt.timedelta(hours=1), now, busy_dates=set())
    return {
        "claims": len(claims),
        "select": warehouse.seconds("query"),
        "update": warehouse.seconds("execute"),
    }


def connection_probe(dagster_url: str, count: int = 20) -> float:
    """Seconds to open and close one connection to the Dagster database as dagster-postgres
    does (psycopg2, password over TCP: a SCRAM exchange each time)."""
    import psycopg2

    started = time.perf_counter()
    for _ in range(count):
        psycopg2.connect(dagster_url).close()
    return (time.perf_counter() - started) / count


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
            queue = ArrivalQueue(WarehouseResource(url=environment[config.FARM_WAREHOUSE]))
            result["pending_after"] = queue.pending_count()

            result["tick_probe"] = tick_probe(server, info, environment, announced)
            result["claim_probe"] = claim_probe(server, photos, run_max_photos)
            result["connection_seconds"] = connection_probe(dagster_url)
        finally:
            instance.dispose()
    return result


def report(result: dict[str, Any]) -> None:
    photos: int = result["photos"]
    ticks: list[Tick] = result["ticks"]
    runs: int = result["runs"]
    seconds = [t.seconds for t in ticks]
    busy = sum(seconds)
    wall = ticks[-1].end - ticks[0].start
    settings = IngestSettings.from_policy(IngestPolicyResource.from_environment())
    interval = config_values.sensor_interval_seconds()
    print(
        f"\n{photos} photos of one day announced at once; the sensor every {interval} s, at "
        f"most {settings.max_messages_per_tick} messages a tick, runs of "
        f"{result['run_max_photos']} photos"
    )
    print(
        f"ticks to drain them: {len(ticks)}, the last one confirming the last claims "
        f"({wall:.0f} s from the first tick's start to its end, {busy:.0f} s of it in ticks)"
    )
    print(
        f"per tick: {statistics.median(seconds):.1f} s median, "
        f"{percentile(seconds, 0.95):.1f} s p95, {max(seconds):.1f} s max; on average "
        f"{photos / len(ticks):.0f} photos and {runs / len(ticks):.1f} runs created a tick"
    )
    print(
        f"sensor: {busy / photos * 1000:.2f} s of ticks per 1,000 photos "
        f"({wall / photos * 1000:.2f} s of wall time: a tick starts {interval} s after the "
        f"last one did, or when it ends if later)"
    )

    print(
        "\n tick      s  pulled  photos  runs  evaluation  ingest  warehouse  claim  record"
        "  creating runs  connections  event rows"
    )
    for number, t in enumerate(ticks, 1):
        ingest = f"{t.ingest_seconds:6.1f}" if t.ingest_seconds is not None else "     -"
        print(
            f" {number:4d} {t.seconds:6.1f} {t.pulled:7d} {t.photos:7d} {t.runs:5d} "
            f"{t.evaluation:11.1f}  {ingest}  {t.warehouse_seconds():9.2f}  "
            f"{t.warehouse_seconds(CLAIM_SELECT):5.3f}  {t.warehouse_seconds(RECORD_SELECT):6.3f}"
            f"  {t.creating_runs:13.1f}  {t.dagster_connections:11d}  {t.event_inserts:10d}"
        )
    print(
        "(seconds; evaluation: to the daemon storing its result; ingest: ingest_tick, by the "
        "sensor's log; warehouse, claim, record: PostgreSQL's time in the warehouse's "
        "statements, the claim's and the record's SELECT; creating runs: from then to the "
        "tick's end, with the Dagster database's connections and event-log INSERTs in it)"
    )

    full = [t for t in ticks if t.pulled >= settings.max_messages_per_tick]
    sample = full or ticks
    n = len(sample)

    def mean(value: Callable[[Tick], float]) -> float:
        return sum(value(t) for t in sample) / n

    tick_s, creating = mean(lambda t: t.seconds), mean(lambda t: t.creating_runs)
    evaluation, ingest = mean(lambda t: t.evaluation), mean(lambda t: t.ingest_seconds or 0.0)
    made = mean(lambda t: t.runs)
    per_run = creating / made if made else 0.0
    connections = mean(lambda t: t.dagster_connections) / made if made else 0.0
    authenticating = mean(lambda t: t.dagster_connecting) / made if made else 0.0
    statements = mean(lambda t: t.dagster_seconds) / made if made else 0.0
    opening = result["connection_seconds"]
    events: dict[str, int] = result["run_events"]
    kinds = ", ".join(f"{count / runs:.0f} {kind}" for kind, count in events.items())
    if full:
        full_tick = f"{settings.max_messages_per_tick} messages"
        print(f"\na full tick ({full_tick}; mean of {n}): {tick_s:.1f} s")
    else:
        print(f"\na tick (none was full; mean of all {n}): {tick_s:.1f} s")
    print(
        f"  Dagster creating its {made:.1f} runs: {creating:.2f} s ({creating / tick_s:.0%}), "
        f"{per_run:.2f} s a run. A run is {sum(events.values()) / runs:.0f} event-log rows "
        f"({kinds}) and its run row; dagster-postgres opens a connection per write (no "
        f"pool): {connections:.0f} connections a run, {connections * opening:.2f} s at "
        f"{opening * 1000:.1f} ms to open one (probe; {authenticating:.2f} s of it "
        f"PostgreSQL's password exchange), {statements:.2f} s in its statements; the rest is "
        f"the daemon's Python and the execution plan from the code server"
    )
    warehouse = mean(lambda t: t.warehouse_seconds())
    warehouse_connections = mean(lambda t: t.warehouse_connections)
    print(
        f"  the sensor's evaluation: {evaluation:.2f} s ({evaluation / tick_s:.0%}); "
        f"ingest_tick {ingest:.2f} s of it (its warehouse statements {warehouse:.2f} s on "
        f"{warehouse_connections:.0f} connections); outside ingest_tick {evaluation - ingest:.2f}"
        f" s (the field map's read, the run requests, gRPC, the daemon storing the tick)"
    )
    probe = result["tick_probe"]
    rest = probe["ingest"] - probe["pull"] - probe["ack"] - probe["lookups"] - probe["warehouse"]
    print(
        f"  probe, one full tick's ingest_tick in this process ({probe['pulled']:.0f} pulled, "
        f"{probe['runs']:.0f} runs): {probe['ingest']:.2f} s = Pub/Sub pulls "
        f"{probe['pull']:.2f} s + acknowledge and deadline calls {probe['ack']:.2f} s + bucket "
        f"lookups {probe['lookups']:.2f} s + warehouse calls {probe['warehouse']:.2f} s + "
        f"parsing and the rest {rest:.2f} s; besides: the field map's read "
        f"{probe['field_map']:.2f} s, building the run requests {probe['run_requests']:.2f} s"
    )
    shapes: dict[str, float] = defaultdict(float)
    for t in ticks:
        for shape, spent in t.warehouse.items():
            shapes[shape] += spent
    print("warehouse statements over the drain, by shape (PostgreSQL's seconds):")
    for shape, total in sorted(shapes.items(), key=lambda item: -item[1])[:6]:
        print(f"  {total:6.2f} s  {shape}")
    claim = result["claim_probe"]
    claim_in_ticks = max(t.warehouse_seconds(CLAIM_SELECT) for t in ticks)
    print(
        f"claim query: at most {claim_in_ticks * 1000:.0f} ms in a tick of the drain; with "
        f"all {photos} photos waiting (probe, from this process): its SELECT "
        f"{claim['select']:.2f} s, the UPDATE of its {claim['claims']:.0f} claims "
        f"{claim['update']:.2f} s"
    )

    run_events = sum(events.values())
    print(
        f"\nDagster event-log rows: {result['events']} written during the drain, "
        f"{result['events'] / photos:.4f} per photo ({run_events} of them the sensor's runs'); "
        f"runs: {runs}, {runs / photos:.5f} per photo ({photos / runs:.0f} photos a run). "
        f"The runs' own events when they execute: benchmarks/scale_out.py's figure"
    )
    print(f"photos still pending in the arrival queue: {result['pending_after']}")


def docs_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The drain's headline figures, for docs/benchmarks.md."""
    photos, ticks = result["photos"], result["ticks"]
    seconds = [t.seconds for t in ticks]
    return [
        ("photos of one day announced at once", f"{photos:,}"),
        ("ticks to drain them", str(len(ticks))),
        (
            "seconds per tick: median / p95 / max",
            f"{statistics.median(seconds):.1f} / "
            f"{percentile(seconds, 0.95):.1f} / {max(seconds):.1f}",
        ),
        ("seconds of sensor per 1,000 photos", f"{sum(seconds) / photos * 1000:.2f}"),
        ("Dagster event-log rows per photo", f"{result['events'] / photos:.4f}"),
        ("runs per photo", f"{result['runs'] / photos:.5f}"),
        ("photos still pending after the drain", str(result["pending_after"])),
    ]


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
