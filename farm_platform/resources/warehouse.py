"""The warehouse the inference assets write and dbt reads (DESIGN.md, Warehouse tables).

One schema for DuckDB (default, a local file) and PostgreSQL (production), chosen by the
URL in `FARM_WAREHOUSE`: `duckdb:///path/to/farm.duckdb` or `postgresql://user@host/db`.

Writes are idempotent per partition and model versions: rows of the same image written
by the same models are replaced in one transaction; rows of other model versions stay.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from dagster import ConfigurableResource
from pydantic import Field

from farm_platform.settings import duckdb_path

LEAF_CROPS_COLUMNS = {
    "position_id": "TEXT NOT NULL",
    "date": "DATE NOT NULL",
    "leaf_crop_idx": "INTEGER NOT NULL",
    "x0": "DOUBLE PRECISION NOT NULL",
    "y0": "DOUBLE PRECISION NOT NULL",
    "x1": "DOUBLE PRECISION NOT NULL",
    "y1": "DOUBLE PRECISION NOT NULL",
    "score": "DOUBLE PRECISION NOT NULL",
    "crop_uri": "TEXT NOT NULL",
    "cropper_model_id": "TEXT NOT NULL",
    "cropper_model_version": "TEXT NOT NULL",
}
DISEASE_GRADES_COLUMNS = {
    "position_id": "TEXT NOT NULL",
    "date": "DATE NOT NULL",
    "leaf_crop_idx": "INTEGER NOT NULL",
    "disease_type": "TEXT NOT NULL",
    "predicted_grade": "INTEGER NOT NULL",
    "cropper_model_id": "TEXT NOT NULL",
    "cropper_model_version": "TEXT NOT NULL",
    "disease_model_id": "TEXT NOT NULL",
    "disease_model_version": "TEXT NOT NULL",
    "confidence": "DOUBLE PRECISION NOT NULL",
    "graded_at": "TIMESTAMP WITH TIME ZONE NOT NULL",
    "dagster_run_id": "TEXT NOT NULL",
}
# Not in the original design: one row per ingested photo so that coverage (which
# positions were photographed, which image generation was graded) is queryable by dbt.
DRONE_IMAGES_COLUMNS = {
    "position_id": "TEXT NOT NULL",
    "date": "DATE NOT NULL",
    "image_uri": "TEXT NOT NULL",
    "size_bytes": "BIGINT NOT NULL",
    "sha256": "TEXT NOT NULL",
    "width": "INTEGER",
    "height": "INTEGER",
    "error": "TEXT",
    "ingested_at": "TIMESTAMP WITH TIME ZONE NOT NULL",
    "generation": "TEXT",
    "message_id": "TEXT",
    "published_at": "TIMESTAMP WITH TIME ZONE",
    "dagster_run_id": "TEXT NOT NULL",
}


# Every registered model version, so dbt can tell active grades from the others.
MODEL_VERSIONS_COLUMNS = {
    "model_id": "TEXT NOT NULL",
    "version": "TEXT NOT NULL",
    "active": "BOOLEAN NOT NULL",
    "task": "TEXT NOT NULL",
    "disease_type": "TEXT",
    "sha256": "TEXT NOT NULL",
    "recorded_at": "TIMESTAMP WITH TIME ZONE NOT NULL",
}

# Outcome of each data-quality check per partition (farm_platform/quality): dbt holds back
# the (position, date, disease) whose ERROR-severity checks failed.
PARTITION_QUALITY_COLUMNS = {
    "position_id": "TEXT NOT NULL",
    "date": "DATE NOT NULL",
    "asset": "TEXT NOT NULL",
    "check_name": "TEXT NOT NULL",
    "passed": "BOOLEAN NOT NULL",
    "severity": "TEXT NOT NULL",
    "details": "TEXT",
    "checked_at": "TIMESTAMP WITH TIME ZONE NOT NULL",
    "dagster_run_id": "TEXT NOT NULL",
}

# The sensor's durable queue: one row per photo identity (position, date, GCS generation)
# that a valid message announced. It is the de-duplication state (it scales with the
# warehouse, not with the sensor cursor) and says which run a photo was handed to.
IMAGE_ARRIVALS_COLUMNS = {
    "position_id": "TEXT NOT NULL",
    "date": "DATE NOT NULL",
    "generation": "TEXT NOT NULL",
    "image_uri": "TEXT NOT NULL",
    "message_id": "TEXT",
    "published_at": "TIMESTAMP WITH TIME ZONE",
    # The announcing message, so a run can dead-letter it if the photo is unusable.
    "message_data": "TEXT",
    "message_attributes": "TEXT",
    "received_at": "TIMESTAMP WITH TIME ZONE NOT NULL",
    # Set when the sensor hands the photo to a run; requested_at once Dagster stored it.
    "run_key": "TEXT",
    "requested_at": "TIMESTAMP WITH TIME ZONE",
    "attempts": "INTEGER NOT NULL",
}
# Pub/Sub ack ids of messages held until the run they ask for is stored by Dagster.
ARRIVAL_ACKS_COLUMNS = {
    "ack_id": "TEXT NOT NULL",
    "position_id": "TEXT NOT NULL",
    "date": "DATE NOT NULL",
    "generation": "TEXT NOT NULL",
    "pulled_at": "TIMESTAMP WITH TIME ZONE NOT NULL",
}

_POLARS_TYPES = {
    "BOOLEAN": pl.Boolean(),
    "TEXT": pl.String(),
    "DATE": pl.Date(),
    "INTEGER": pl.Int32(),
    "BIGINT": pl.Int64(),
    "DOUBLE PRECISION": pl.Float64(),
    "TIMESTAMP WITH TIME ZONE": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True)
class Table:
    name: str
    columns: dict[str, str]
    primary_key: tuple[str, ...]
    # Writing a frame first deletes the rows that share these columns' values with it.
    replace_scope: tuple[str, ...]
    # Secondary indexes, PostgreSQL only: dbt's incremental builds read a table by `date`
    # (the days to rebuild) and by the write stamp (which days changed). The primary key,
    # which leads with the replace scope's columns, serves the writer's replace-by-photo.
    # DuckDB prunes those scans with its zone maps; an ART index would only slow its writes.
    postgres_indexes: tuple[tuple[str, ...], ...] = ()

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    @property
    def polars_schema(self) -> dict[str, pl.DataType]:
        return {
            name: _POLARS_TYPES[kind.removesuffix(" NOT NULL")]
            for name, kind in self.columns.items()
        }

    def ddl(self) -> str:
        columns = ",\n  ".join(f"{name} {kind}" for name, kind in self.columns.items())
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name} (\n  {columns},\n"
            f"  PRIMARY KEY ({', '.join(self.primary_key)})\n)"
        )

    def index_ddl(self) -> list[str]:
        """CREATE INDEX IF NOT EXISTS statements of `postgres_indexes`."""
        return [
            f"CREATE INDEX IF NOT EXISTS {self.name}_by_{'_'.join(columns)} "
            f"ON {self.name} ({', '.join(columns)})"
            for columns in self.postgres_indexes
        ]


LEAF_CROPS_TABLE = Table(
    "leaf_crops",
    LEAF_CROPS_COLUMNS,
    primary_key=(
        "position_id",
        "date",
        "cropper_model_id",
        "cropper_model_version",
        "leaf_crop_idx",
    ),
    replace_scope=("position_id", "date", "cropper_model_id", "cropper_model_version"),
    postgres_indexes=(("date",),),
)
DISEASE_GRADES_TABLE = Table(
    "disease_grades",
    DISEASE_GRADES_COLUMNS,
    primary_key=(
        "position_id",
        "date",
        "leaf_crop_idx",
        "disease_type",
        "cropper_model_id",
        "cropper_model_version",
        "disease_model_id",
        "disease_model_version",
    ),
    replace_scope=(
        "position_id",
        "date",
        "disease_type",
        "cropper_model_id",
        "cropper_model_version",
        "disease_model_id",
        "disease_model_version",
    ),
    # (graded_at, date): int_changed_days reads the dates of new stamps from the index alone.
    postgres_indexes=(("date",), ("graded_at", "date")),
)
DRONE_IMAGES_TABLE = Table(
    "drone_images",
    DRONE_IMAGES_COLUMNS,
    primary_key=("position_id", "date"),
    replace_scope=("position_id", "date"),
    postgres_indexes=(("date",), ("ingested_at", "date")),
)
MODEL_VERSIONS_TABLE = Table(
    "model_versions",
    MODEL_VERSIONS_COLUMNS,
    primary_key=("model_id", "version"),
    replace_scope=("model_id",),
)
PARTITION_QUALITY_TABLE = Table(
    "partition_quality",
    PARTITION_QUALITY_COLUMNS,
    primary_key=("position_id", "date", "asset", "check_name"),
    replace_scope=("position_id", "date", "asset", "check_name"),
    postgres_indexes=(("date",), ("checked_at", "date")),
)
IMAGE_ARRIVALS_TABLE = Table(
    "image_arrivals",
    IMAGE_ARRIVALS_COLUMNS,
    primary_key=("position_id", "date", "generation"),
    replace_scope=("position_id", "date", "generation"),
)
ARRIVAL_ACKS_TABLE = Table(
    "arrival_acks",
    ARRIVAL_ACKS_COLUMNS,
    primary_key=("ack_id",),
    replace_scope=("ack_id",),
)
TABLES = {
    table.name: table
    for table in (
        IMAGE_ARRIVALS_TABLE,
        ARRIVAL_ACKS_TABLE,
        LEAF_CROPS_TABLE,
        DISEASE_GRADES_TABLE,
        DRONE_IMAGES_TABLE,
        MODEL_VERSIONS_TABLE,
        PARTITION_QUALITY_TABLE,
    )
}


# PostgreSQL warehouses whose secondary indexes this process has made sure of.
_INDEXED_WAREHOUSES: set[str] = set()


class WarehouseError(RuntimeError):
    """The warehouse URL or a frame written to it is wrong."""


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
            connection = self._connect_duckdb()
            try:
                connection.execute("BEGIN TRANSACTION")
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            finally:
                connection.close()
        else:
            import psycopg

            with psycopg.connect(self.url) as connection:
                yield connection

    def _connect_duckdb(self) -> Any:
        import duckdb

        path = self.duckdb_path
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_seconds
        # DuckDB lets one process hold a file open for writing; concurrent runs take turns.
        while True:
            try:
                return duckdb.connect(str(path))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def create_schema(self) -> None:
        """Every table, and on PostgreSQL their secondary indexes."""
        with self.connect() as connection:
            for table in TABLES.values():
                connection.execute(table.ddl())
                if self.dialect == "postgresql":
                    for statement in table.index_ddl():
                        connection.execute(statement)

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
        prepared = []
        for table_name, frame, scopes in writes:
            table = TABLES[table_name]
            missing = set(table.column_names) - set(frame.columns)
            if missing:
                raise WarehouseError(f"frame for {table.name} lacks columns {sorted(missing)}")
            frame = frame.select(table.column_names).cast(table.polars_schema)
            replaced = frame.select(table.replace_scope)
            if scopes is not None:
                replaced = pl.concat(
                    [replaced, scopes.select(table.replace_scope)], how="vertical_relaxed"
                )
            prepared.append((table, frame, replaced.unique()))
        with self.connect() as connection:
            self._ensure_schema(connection)
            self._lock_days(connection, [replaced for _, _, replaced in prepared])
            for table, frame, replaced in prepared:
                self._delete_scopes(connection, table, replaced)
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
        if self.dialect == "postgresql" and self.url not in _INDEXED_WAREHOUSES:
            # Once per process and warehouse, not per write: CREATE INDEX takes a SHARE lock
            # on its table even when the index exists, which would serialize the writers.
            for table in TABLES.values():
                for statement in table.index_ddl():
                    connection.execute(statement)
            _INDEXED_WAREHOUSES.add(self.url)

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


def _frame(
    description: Sequence[Sequence[Any]] | None, rows: list[tuple[Any, ...]]
) -> pl.DataFrame:
    names = [column[0] for column in description or []]
    return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)
