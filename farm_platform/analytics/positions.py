"""The `positions` asset: the field map as the warehouse table dbt reads
(`source('farm', 'positions')`).

The field-map file (FARM_FIELD_MAP, by default the shipped dbt_project/seeds/positions.csv)
stays the source of truth, which the ingest sensor reads too; this asset copies it whole
into the warehouse before each dbt build, so the lineage graph shows the models reading it.
"""

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, asset

from farm_platform.resources.field_map import (
    DESIGN_COLUMNS,
    FieldMapResource,
    Position,
    read_field_map,
)
from farm_platform.resources.tables import POSITIONS_TABLE
from farm_platform.resources.warehouse import WarehouseResource


def positions_frame(positions: Path | pl.DataFrame | Iterable[Position]) -> pl.DataFrame:
    """The rows of the `positions` table: from a field-map file (checked as the sensor
    checks it), a frame with the field map's columns, or parsed positions. A map without
    the optional design columns gets them null."""
    if isinstance(positions, Path):
        positions = read_field_map(positions).values()
    if not isinstance(positions, pl.DataFrame):
        rows = [asdict(position) for position in positions]
        positions = pl.DataFrame(rows, schema=POSITIONS_TABLE.polars_schema)
    missing = [column for column in DESIGN_COLUMNS if column not in positions.columns]
    return positions.with_columns(pl.lit(None, pl.String).alias(column) for column in missing)


def write_positions(
    warehouse: WarehouseResource, positions: Path | pl.DataFrame | Iterable[Position]
) -> int:
    """Replace the warehouse's `positions` table with the field map; its row count."""
    frame = positions_frame(positions)
    warehouse.replace_table(POSITIONS_TABLE.name, frame)
    return frame.height


@asset(
    group_name="analytics",
    kinds={"csv", "sql"},
    description="The field map (FARM_FIELD_MAP) copied into the warehouse table `positions`, "
    "which the dbt models read as a source. Edit the file, not the table.",
)
def positions(
    context: AssetExecutionContext, warehouse: WarehouseResource, field_map: FieldMapResource
) -> MaterializeResult:
    rows = write_positions(warehouse, field_map.positions().values())
    context.log.info(f"{rows} position(s) from {field_map.path}")
    return MaterializeResult(metadata={"dagster/row_count": rows, "field_map": field_map.path})
