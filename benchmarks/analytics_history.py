"""The history `benchmarks/analytics_scale.py` builds dbt and the report over, generated
inside the warehouse by SQL: the field map, one photo per position and day, its leaf
crops, a grade per leaf and disease, and a passed quality check per photo and asset."""

from __future__ import annotations

import contextlib
import datetime as dt

from farm_platform.resources.warehouse import TABLES, WarehouseResource

DISEASES = 5
# Assets whose checks the image pipeline records per photo (farm_platform/quality).
CHECKED_ASSETS = ("drone_images", "leaf_crops")


def _series(dialect: str, name: str, start: int, stop: int) -> str:
    """A table of integers start..stop-1 in column `name`."""
    if dialect == "duckdb":
        return f"range({start}, {stop}) AS {name}_t({name})"
    return f"generate_series({start}, {stop - 1}) AS {name}_t({name})"


def _position_id() -> str:
    return "'P' || lpad(cast(p AS text), 5, '0')"


def generate_days(
    warehouse: WarehouseResource,
    first_day: str,
    positions: int,
    leaves: int,
    first: int,
    stop: int,
    stamp_now: bool = False,
) -> None:
    """Rows of days first..stop-1 (0 = first_day) in every source table, stamped at noon of
    their day (graded that day, long before the benchmark), or now with `stamp_now`."""
    d = warehouse.dialect
    day = f"(DATE '{first_day}' + cast(d AS integer))"
    stamp = (
        "current_timestamp"
        if stamp_now
        else f"(cast({day} AS TIMESTAMP WITH TIME ZONE) + INTERVAL '12 hours')"
    )
    # Severity from 3 falling by 1 grade per 100 days in control, 2 when treated (odd p),
    # with leaf-to-leaf noise of ±1 grade.
    grade = (
        "cast(least(3, greatest(0, floor(3.4 - d * (1 + mod(p, 2)) / 100.0 + random() * 2 - 1)))"
        " AS integer)"
    )
    statements = [
        f"""INSERT INTO drone_images (position_id, date, image_uri, size_bytes, sha256, width,
            height, error, ingested_at, generation, message_id, published_at, dagster_run_id)
        SELECT {_position_id()}, {day}, 'gs://bench/' || {_position_id()} || '/image.png',
            250000, 'sha', 640, 480, NULL, {stamp}, '1', NULL, NULL, 'bench'
        FROM {_series(d, "p", 0, positions)}, {_series(d, "d", first, stop)}""",
        f"""INSERT INTO leaf_crops (position_id, date, leaf_crop_idx, x0, y0, x1, y1, score,
            crop_uri, cropper_model_id, cropper_model_version)
        SELECT {_position_id()}, {day}, cast(leaf AS integer), 0, 0, 40, 40, 0.9,
            'gs://bench/crop.png', 'leaf_detector', 'v1'
        FROM {_series(d, "p", 0, positions)}, {_series(d, "d", first, stop)},
            {_series(d, "leaf", 0, leaves)}""",
        f"""INSERT INTO disease_grades (position_id, date, leaf_crop_idx, disease_type,
            predicted_grade, cropper_model_id, cropper_model_version, disease_model_id,
            disease_model_version, confidence, graded_at, dagster_run_id)
        SELECT {_position_id()}, {day}, cast(leaf AS integer), 'disease_' || cast(k AS text),
            {grade}, 'leaf_detector', 'v1', 'disease_' || cast(k AS text) || '_grader', 'v1',
            0.8, {stamp}, 'bench'
        FROM {_series(d, "p", 0, positions)}, {_series(d, "d", first, stop)},
            {_series(d, "leaf", 0, leaves)}, {_series(d, "k", 0, DISEASES)}""",
    ]
    for asset in CHECKED_ASSETS:
        statements.append(
            f"""INSERT INTO partition_quality (position_id, date, asset, check_name, passed,
                severity, details, checked_at, dagster_run_id)
            SELECT {_position_id()}, {day}, '{asset}', '{asset}_valid', true, 'ERROR', NULL,
                {stamp}, 'bench'
            FROM {_series(d, "p", 0, positions)}, {_series(d, "d", first, stop)}"""
        )
    warehouse.execute([(sql, []) for sql in statements])


def _model_versions(warehouse: WarehouseResource) -> None:
    rows = [("leaf_detector", "leaf_detector", None)] + [
        (f"disease_{k}_grader", "disease_grader", f"disease_{k}") for k in range(DISEASES)
    ]
    warehouse.execute(
        [
            (
                "INSERT INTO model_versions (model_id, version, active, task, disease_type,"
                " sha256, recorded_at) VALUES (%s, 'v1', true, %s, %s, 'sha',"
                " CAST('2026-01-01 00:00:00+00' AS TIMESTAMP WITH TIME ZONE))",
                [model, task, disease],
            )
            for model, task, disease in rows
        ]
    )


def generate_history(url: str, first_day: str, positions: int, days: int, leaves: int) -> None:
    """Days 0..days-2 of the trial: the history before the benchmark's new day."""
    warehouse = WarehouseResource(url=url)
    warehouse.create_schema()
    _model_versions(warehouse)
    chunk = 30  # days per statement: bounded memory while generating
    if warehouse.dialect == "postgresql":
        # Bulk load without the keys, then build them once (what a restore does).
        _drop_keys(warehouse)
    for first in range(0, days - 1, chunk):
        generate_days(warehouse, first_day, positions, leaves, first, min(first + chunk, days - 1))
    if warehouse.dialect == "postgresql":
        _add_keys(warehouse)


def _drop_keys(warehouse: WarehouseResource) -> None:
    statements = []
    for table in TABLES.values():
        statements.append((f"ALTER TABLE {table.name} DROP CONSTRAINT {table.name}_pkey", []))
        for columns in table.postgres_indexes:
            statements.append((f"DROP INDEX {table.name}_by_{'_'.join(columns)}", []))
    warehouse.execute(statements)


def _add_keys(warehouse: WarehouseResource) -> None:
    statements = []
    for table in TABLES.values():
        statements.append(
            (f"ALTER TABLE {table.name} ADD PRIMARY KEY ({', '.join(table.primary_key)})", [])
        )
        statements += [(sql, []) for sql in table.index_ddl()]
    warehouse.execute(statements)
    with contextlib.closing(autocommit(warehouse.url)) as connection:
        connection.execute("VACUUM ANALYZE")


def autocommit(url: str):  # noqa: ANN202 - a psycopg connection
    import psycopg

    return psycopg.connect(url, autocommit=True)


def first_day_of(days: int) -> str:
    """The trial's first day such that its last day (the benchmark's new day) is yesterday,
    as for the daily schedule: every day of the history was graded (stamped) in the past."""
    return (dt.date.today() - dt.timedelta(days=days)).isoformat()
