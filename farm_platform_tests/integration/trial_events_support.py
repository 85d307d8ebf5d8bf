"""What the tests of trials that do not go to plan share (test_trial_events_*.py): the
diseases' names, a warehouse on DuckDB or PostgreSQL, the report's data of a build, and a
farm with some of its photos left out.

The farm is dbt_farm.py's synthetic farm (7 + 7 positions, 4 days, a known effect of −0.5
grade a day on disease_0); each test changes one thing about it and checks the marts and
the report's words against expectations computed from the rows written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from dbt_farm import (
    LAST_DAY,
    Build,
    Farm,
)

from farm_platform.admin.configured import configured_registry
from farm_platform.report.data import (
    load_report_data,
)
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.postgres import fresh_database

NAMES = {"disease_0": "brown spot", "disease_3": "vein streak"}


@contextlib.contextmanager
def trial_warehouse(db: str, tmp: Path, request: pytest.FixtureRequest, name: str) -> Iterator[str]:
    if db == "duckdb":
        yield f"duckdb:///{tmp / 'warehouse.duckdb'}"
        return
    yield fresh_database(request.getfixturevalue("postgres_url"), name)


def trial_report(build: Build, day=LAST_DAY):
    return load_report_data(
        WarehouseResource(url=build.url), day, configured_registry(), disease_names=NAMES
    )


def photos_kept(farm: Farm, keep) -> Farm:
    def rows(frame: pl.DataFrame) -> pl.DataFrame:
        mask = [keep(p, d) for p, d in frame.select("position_id", "date").iter_rows()]
        return frame.filter(pl.Series(mask, dtype=pl.Boolean))

    return Farm(
        farm.positions, rows(farm.drone_images), rows(farm.leaf_crops), rows(farm.disease_grades)
    )
