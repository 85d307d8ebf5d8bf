"""The warehouse tables: columns, keys and what a write replaces (docs/contracts.md).

The inference assets write them and dbt reads them. Every table has a primary key; a
write replaces the rows that share its `replace_scope` (a photo and the models that made
the rows), so no run, retry or backfill doubles a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

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

# Drift checks (farm_platform/quality/drift.py): per day, model version and output feature,
# the population-stability index against the card's reference; the report reads `drifted`.
MODEL_DRIFT_COLUMNS = {
    "date": "DATE NOT NULL",
    "model_id": "TEXT NOT NULL",
    "model_version": "TEXT NOT NULL",
    "feature": "TEXT NOT NULL",
    "statistic": "DOUBLE PRECISION",
    "threshold": "DOUBLE PRECISION",
    "n": "BIGINT NOT NULL",
    "reference_n": "BIGINT NOT NULL",
    "drifted": "BOOLEAN NOT NULL",
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
    # Added 2026-12-07 (retries that back off): no run is handed the photo before
    # `not_before`; its first failed run, the last failure's cause, and when it was
    # dead-lettered (kept, so that `reconcile` can say so, until a replay makes it new).
    "not_before": "TIMESTAMP WITH TIME ZONE",
    "first_failed_at": "TIMESTAMP WITH TIME ZONE",
    "failure": "TEXT",
    "dead_lettered_at": "TIMESTAMP WITH TIME ZONE",
}
# Pub/Sub ack ids of messages held until the run they ask for is stored by Dagster.
ARRIVAL_ACKS_COLUMNS = {
    "ack_id": "TEXT NOT NULL",
    "position_id": "TEXT NOT NULL",
    "date": "DATE NOT NULL",
    "generation": "TEXT NOT NULL",
    "pulled_at": "TIMESTAMP WITH TIME ZONE NOT NULL",
}

# The field map (DESIGN.md, Field map) as dbt reads it: the `positions` asset copies the
# field-map file here whole; `block` and `assignment` are null where the file lacks them.
POSITIONS_COLUMNS = {
    "position_id": "TEXT NOT NULL",
    "area": "TEXT NOT NULL",
    "latitude": "DOUBLE PRECISION NOT NULL",
    "longitude": "DOUBLE PRECISION NOT NULL",
    "dose_ml_per_sqft": "DOUBLE PRECISION NOT NULL",
    "block": "TEXT",
    "assignment": "TEXT",
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
    # On PostgreSQL a write takes a lock on each day it replaces rows of, so that two runs
    # writing one day take turns. The arrival queue's tables are the sensor's own: a tick
    # recording a day's new photos must not wait for a run of that day to commit.
    day_locked: bool = True
    # Columns added after the table first shipped (nullable): an existing warehouse gets
    # them with ALTER TABLE (`WarehouseResource` adds those it lacks).
    added_columns: tuple[str, ...] = ()

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

    def add_column_ddl(self, column: str) -> str:
        return f"ALTER TABLE {self.name} ADD COLUMN IF NOT EXISTS {column} {self.columns[column]}"

    def index_ddl(self) -> list[str]:
        """CREATE INDEX IF NOT EXISTS statements of `postgres_indexes`."""
        return [statement for _, statement in self.indexes()]

    def indexes(self) -> list[tuple[str, str]]:
        """(name, CREATE INDEX IF NOT EXISTS statement) of each of `postgres_indexes`."""
        return [
            (
                name := f"{self.name}_by_{'_'.join(columns)}",
                f"CREATE INDEX IF NOT EXISTS {name} ON {self.name} ({', '.join(columns)})",
            )
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
MODEL_DRIFT_TABLE = Table(
    "model_drift",
    MODEL_DRIFT_COLUMNS,
    primary_key=("date", "model_id", "model_version", "feature"),
    replace_scope=("date", "model_id", "model_version"),
)
IMAGE_ARRIVALS_TABLE = Table(
    "image_arrivals",
    IMAGE_ARRIVALS_COLUMNS,
    primary_key=("position_id", "date", "generation"),
    replace_scope=("position_id", "date", "generation"),
    day_locked=False,
    added_columns=("not_before", "first_failed_at", "failure", "dead_lettered_at"),
)
ARRIVAL_ACKS_TABLE = Table(
    "arrival_acks",
    ARRIVAL_ACKS_COLUMNS,
    primary_key=("ack_id",),
    replace_scope=("ack_id",),
)
POSITIONS_TABLE = Table(
    "positions",
    POSITIONS_COLUMNS,
    primary_key=("position_id",),
    replace_scope=("position_id",),
    day_locked=False,
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
        MODEL_DRIFT_TABLE,
        POSITIONS_TABLE,
    )
}
