"""The warehouse the inference assets write and dbt reads; its tables are in `tables.py`.

One schema for DuckDB (default, a local file) and PostgreSQL (production), chosen by the
URL in `FARM_WAREHOUSE`: `duckdb:///path/to/farm.duckdb` or `postgresql://user@host/db`.

Writes are idempotent per partition and model versions: rows of the same image written
by the same models are replaced in one transaction; rows of other model versions stay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from dagster import ConfigurableResource
from pydantic import Field

from farm_platform.config import duckdb_path
from farm_platform.resources.tables import TABLES, Table
from farm_platform.resources.warehouse_connections import (
    WarehouseError,
    connect_duckdb,
    duckdb_batch,
    duckdb_batch_connection,
    file_turn,
    postgres_connection,
    postgres_session,
    rollback_duckdb,
)

__all__ = ["WarehouseError", "WarehouseResource", "prepare_writes"]

# The key of a day's grading lock (`day_grading_lock`); not the key of the per-day
# transaction lock of the writes (`_lock_days`), which a run holding this one takes too.
DAY_GRADING_LOCK_PREFIX = "farm_day_grading:"

# Warehouses whose added columns (and on PostgreSQL secondary indexes) this process has
# made sure of.
_MIGRATED_WAREHOUSES: set[str] = set()


class WarehouseResource(ConfigurableResource):
    """Tables of crops and grades in DuckDB (`duckdb:///path`) or PostgreSQL (`postgresql://…`)."""

    url: str = Field(description="duckdb:///path/to/file.duckdb or postgresql://user@host:port/db")
    lock_timeout_seconds: float = Field(
        default=120.0,
        description="How long to wait for a DuckDB file another process holds open.",
    )

    @property
    def dialect(self) -> str:
        if self.url.startswith("duckdb://"):
            return "duckdb"
        if self.url.startswith(("postgresql://", "postgres://")):
            return "postgresql"
        raise WarehouseError(
            f"FARM_WAREHOUSE={self.url!r} is not supported: use duckdb:///path/to/farm.duckdb "
            "or postgresql://user@host:port/database"
        )

    @property
    def duckdb_path(self) -> Path:
        return duckdb_path(self.url)

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """A DB-API connection inside a transaction, committed on success."""
        if self.dialect == "duckdb":
            with self.exclusive_access():
                batched = duckdb_batch_connection(self.duckdb_path)
                connection = batched or self._connect_duckdb()
                try:
                    connection.execute("BEGIN TRANSACTION")
                    try:
                        yield connection
                    except BaseException:
                        rollback_duckdb(connection)
                        raise
                    # A COMMIT that fails (a full disk) has ended the transaction itself:
                    # no ROLLBACK after it, whose "no transaction is active" would be
                    # reported in place of the real cause.
                    connection.execute("COMMIT")
                finally:
                    if batched is None:
                        connection.close()
        else:
            with postgres_connection(self.url) as connection:
                yield connection

    @contextlib.contextmanager
    def exclusive_access(self) -> Iterator[None]:
        """On DuckDB, this process's turn at the file: the platform's processes take turns
        through a lock file beside it, waiting up to `lock_timeout_seconds`. A tool that
        opens the file itself (dbt) runs inside this so that no sensor tick grabs the file
        between two of its connections. Nothing to do on PostgreSQL."""
        if self.dialect != "duckdb":
            yield
            return
        path = self.duckdb_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_turn(path.with_name(path.name + ".lock"), self.lock_timeout_seconds):
            yield

    def _connect_duckdb(self) -> Any:
        return connect_duckdb(self.duckdb_path, self.lock_timeout_seconds)

    def session(self) -> contextlib.AbstractContextManager[None]:
        """While inside, `connect` reuses one PostgreSQL connection per thread (a run's
        statements then pay for one connection, not one each); nothing on DuckDB, whose
        file the platform's processes take turns at statement by statement."""
        if self.dialect != "postgresql":
            return contextlib.nullcontext()
        return postgres_session(self.url)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """While inside, this thread's `connect` calls share one connection, each still its
        own transaction: on DuckDB this process keeps the file's turn throughout (so no
        network call belongs inside: a run's writes wait for it); on PostgreSQL, `session`."""
        if self.dialect != "duckdb":
            return postgres_session(self.url)
        self.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb_batch(self.duckdb_path, self.lock_timeout_seconds)

    @contextlib.contextmanager
    def day_grading_lock(
        self, date: dt.date, exclusive: bool, waiting: Callable[[], None] | None = None
    ) -> Iterator[bool]:
        """Hold the day's grading lock while inside: on PostgreSQL a session advisory lock
        on a connection of its own, shared (the sensor's runs: their claimed photos are
        disjoint, so they grade side by side) or exclusive (a run of the whole day or of
        hand-picked photos: alone, after the shared holders leave; PostgreSQL queues later
        shared requests behind it, so it is not starved). A run process that dies drops its
        connection, and PostgreSQL releases the lock. `waiting` is called once when the
        lock is not free at once. Yields whether a lock is held: on DuckDB there is none
        (one writer, and one run per day, dagster.yaml's tag limit)."""
        if self.dialect != "postgresql":
            yield False
            return
        import psycopg

        key = f"{DAY_GRADING_LOCK_PREFIX}{date.isoformat()}"
        mode = "" if exclusive else "_shared"
        with psycopg.connect(self.url, autocommit=True) as connection:
            taken = connection.execute(
                f"SELECT pg_try_advisory_lock{mode}(hashtext(%s))", [key]
            ).fetchone()
            if not (taken and taken[0]):
                if waiting is not None:
                    waiting()
                connection.execute(f"SELECT pg_advisory_lock{mode}(hashtext(%s))", [key])
            try:
                yield True
            finally:
                with contextlib.suppress(psycopg.Error):
                    connection.execute(f"SELECT pg_advisory_unlock{mode}(hashtext(%s))", [key])

    def create_schema(self) -> None:
        """Every table, and on PostgreSQL their secondary indexes."""
        with self.connect() as connection:
            for table in TABLES.values():
                connection.execute(table.ddl())
            _add_missing_columns(connection)
            if self.dialect == "postgresql":
                _create_missing_indexes(connection)

    def replace_rows(
        self, table_name: str, frame: pl.DataFrame, scopes: pl.DataFrame | None = None
    ) -> int:
        """Write `frame`, first deleting the rows that share its partition and model versions.

        `scopes` (columns: the table's replace scope) names what is being replaced when it
        is more than the frame shows, e.g. an image that has no leaves any more.
        """
        self.replace_many([(table_name, frame, scopes)])
        return frame.height

    def replace_many(self, writes: Sequence[tuple[str, pl.DataFrame, pl.DataFrame | None]]) -> None:
        """Several `replace_rows` in one transaction: a photo's rows in every table appear
        (and replace the old ones) together or not at all."""
        prepared = prepare_writes(writes)
        with self.connect() as connection:
            self._ensure_schema(connection)
            self._lock_days(
                connection, [replaced for table, _, replaced in prepared if table.day_locked]
            )
            for table, frame, replaced in prepared:
                self._delete_scopes(connection, table, replaced)
                if frame.height:
                    self._insert(connection, table, frame)

    def replace_table(self, table_name: str, frame: pl.DataFrame) -> None:
        """Every row of the table replaced by `frame`, in one transaction: a reader sees
        the old rows or the new ones."""
        ((table, frame, _),) = prepare_writes([(table_name, frame, None)])
        with self.connect() as connection:
            self._ensure_schema(connection)
            connection.execute(f"DELETE FROM {table.name}")
            if frame.height:
                self._insert(connection, table, frame)

    def execute(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run write statements (`%s` placeholders) in one transaction."""
        with self.connect() as connection:
            self._ensure_schema(connection)
            for sql, parameters in statements:
                if self.dialect == "duckdb":
                    connection.execute(sql.replace("%s", "?"), list(parameters))
                else:
                    with connection.cursor() as cursor:
                        cursor.execute(sql, parameters)

    def _lock_days(self, connection: Any, scopes: Sequence[pl.DataFrame]) -> None:
        """On PostgreSQL, two runs replacing rows of the same day take turns (a transaction
        lock per day, in date order). DuckDB's one writer per file already serializes."""
        if self.dialect != "postgresql":
            return
        days = sorted({d for frame in scopes if "date" in frame.columns for d in frame["date"]})
        with connection.cursor() as cursor:
            for day in days:
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"farm_day:{day.isoformat()}"]
                )

    def _ensure_schema(self, connection: Any) -> None:
        for table in TABLES.values():
            connection.execute(table.ddl())
        if self.url not in _MIGRATED_WAREHOUSES:
            # Once per process and warehouse, not per write.
            _add_missing_columns(connection)
            if self.dialect == "postgresql":
                _create_missing_indexes(connection)
            _MIGRATED_WAREHOUSES.add(self.url)

    def delete_partitions(self, table_name: str, scopes: pl.DataFrame) -> None:
        """Delete the rows matching each row of `scopes` (columns: the table's replace scope)."""
        table = TABLES[table_name]
        with self.connect() as connection:
            connection.execute(table.ddl())
            self._delete_scopes(connection, table, scopes.select(table.replace_scope).unique())

    def _delete_scopes(self, connection: Any, table: Table, scopes: pl.DataFrame) -> None:
        """Delete the rows matching any row of `scopes`: one join, not a statement (and a
        table scan) per scope."""
        if not scopes.height:
            return
        columns = table.replace_scope
        matches = " AND ".join(f"{table.name}.{c} = replaced_scopes.{c}" for c in columns)
        if self.dialect == "duckdb":
            connection.register("replaced_scopes", scopes.select(columns).to_arrow())
            connection.execute(f"DELETE FROM {table.name} USING replaced_scopes WHERE {matches}")
            return
        kinds = ", ".join(f"{c} {table.columns[c].removesuffix(' NOT NULL')}" for c in columns)
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TEMPORARY TABLE replaced_scopes ({kinds}) ON COMMIT DROP")
            with cursor.copy(f"COPY replaced_scopes ({', '.join(columns)}) FROM STDIN") as copy:
                for row in scopes.select(columns).iter_rows():
                    copy.write_row(row)
            cursor.execute(f"DELETE FROM {table.name} USING replaced_scopes WHERE {matches}")
            cursor.execute("DROP TABLE replaced_scopes")

    def _insert(self, connection: Any, table: Table, frame: pl.DataFrame) -> None:
        columns = ", ".join(table.column_names)
        if self.dialect == "duckdb":
            # The view lives as long as this short-lived connection; unregistering inside a
            # failed transaction would raise and hide the real error.
            connection.register("incoming_rows", frame.to_arrow())
            connection.execute(
                f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM incoming_rows"
            )
        else:
            with (
                connection.cursor() as cursor,
                cursor.copy(f"COPY {table.name} ({columns}) FROM STDIN") as copy,
            ):
                for row in frame.iter_rows():
                    copy.write_row(row)

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> pl.DataFrame:
        """Run a read query (use `%s` placeholders) and return a polars frame."""
        with self.connect() as connection:
            if self.dialect == "duckdb":
                cursor = connection.execute(sql.replace("%s", "?"), list(parameters))
                return _frame(cursor.description, cursor.fetchall())
            with connection.cursor() as cursor:
                cursor.execute(sql, parameters)
                return _frame(cursor.description, cursor.fetchall())

    def table_exists(self, table_name: str) -> bool:
        frame = self.query(
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = %s",
            [table_name],
        )
        return bool(frame["n"][0])


def _add_missing_columns(connection: Any) -> None:
    """Give a warehouse made by an older release the columns added since. Only those that
    are missing: ALTER TABLE locks its table (on PostgreSQL, against readers too) even when
    the column exists."""
    existing = set(
        connection.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()"
        ).fetchall()
    )
    for table in TABLES.values():
        for column in table.added_columns:
            if (table.name, column) not in existing:
                connection.execute(table.add_column_ddl(column))


def _create_missing_indexes(connection: Any) -> None:
    """Create the PostgreSQL indexes that do not exist yet. Only those: CREATE INDEX takes a
    SHARE lock on its table even when the index exists, and waits behind any write queued
    on it, so a run starting beside a long write (another run's commit) would wait for it."""
    existing = {
        row[0]
        for row in connection.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        ).fetchall()
    }
    for table in TABLES.values():
        for name, statement in table.indexes():
            if name not in existing:
                connection.execute(statement)


def _frame(
    description: Sequence[Sequence[Any]] | None, rows: list[tuple[Any, ...]]
) -> pl.DataFrame:
    names = [column[0] for column in description or []]
    return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)


def prepare_writes(
    writes: Sequence[tuple[str, pl.DataFrame, pl.DataFrame | None]],
) -> list[tuple[Table, pl.DataFrame, pl.DataFrame]]:
    """Each table's rows and the scopes they replace (theirs and the writes' `scopes`).

    The writes of one table become one DELETE and one INSERT: a statement costs ~4 ms on
    DuckDB whatever its size, and a run's chunk makes seven writes, five of them grades
    (benchmarks/warehouse_write.py). Writes of one table must not share a primary key."""
    frames: dict[str, list[pl.DataFrame]] = {}
    replaced: dict[str, list[pl.DataFrame]] = {}
    for table_name, frame, scopes in writes:
        table = TABLES[table_name]
        missing = set(table.column_names) - set(frame.columns)
        if missing:
            raise WarehouseError(f"frame for {table.name} lacks columns {sorted(missing)}")
        frame = frame.select(table.column_names).cast(table.polars_schema)
        frames.setdefault(table_name, []).append(frame)
        replaced.setdefault(table_name, []).append(frame.select(table.replace_scope))
        if scopes is not None:
            replaced[table_name].append(scopes.select(table.replace_scope))
    return [
        (
            TABLES[name],
            pl.concat(frames[name]),
            pl.concat(replaced[name], how="vertical_relaxed").unique(),
        )
        for name in frames
    ]
