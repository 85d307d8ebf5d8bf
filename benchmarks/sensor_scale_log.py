"""What `benchmarks/sensor_at_scale.py` reads of a drain: PostgreSQL's statement and
connection log (`log_min_duration_statement = 0` while the sensor drains) matched by time
to the sensor ticks the instance recorded."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from dagster import DagsterInstance, RunsFilter

from farm_platform.images.run_tags import PHOTOS_TAG
from farm_platform.images.sensors import TICK_TAG
from farm_platform_dev.postgres import PostgresServer

# Epoch with milliseconds, pid, database: log lines are matched to ticks by time.
DAY = dt.date(2026, 9, 1)
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


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def statement_shape(sql: str) -> str:
    """A statement's first words, parameters folded, as its key."""
    sql = re.sub(r"\$\d+(, \$\d+)*", "$n", sql)
    return " ".join(sql.split()[:7])


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


def photo_runs(instance: DagsterInstance) -> list[Any]:
    records = instance.get_run_records(RunsFilter(tags={"dagster/partition": DAY.isoformat()}))
    return [r for r in records if PHOTOS_TAG in r.dagster_run.tags]
