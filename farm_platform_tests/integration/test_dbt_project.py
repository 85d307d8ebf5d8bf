"""The dbt project itself: the profile built from FARM_WAREHOUSE, bad input that fails the
build (a grade off the scale, an unknown area in the field map), and the dbt unit tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from dbt_farm import (
    Farm,
    dbt_build,
    farm_fixture,  # noqa: F401 (the fixture `farm`)
    load_warehouse,
)

from farm_platform.analytics.dbt_env import dbt_output, warehouse_relation_prefix, write_dbt_profile
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.farm import dbt_workdir

# --------------------------------------------------------------------------- corrupt data


def test_a_grade_outside_the_scale_fails_the_build(farm: Farm, tmp_path: Path) -> None:
    project = dbt_workdir(farm.positions, tmp_path / "project")
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    corrupt = farm.disease_grades.head(1).with_columns(
        pl.lit("disease_1").alias("disease_type"),
        pl.lit("disease_1_grader").alias("disease_model_id"),
        pl.lit(7).alias("predicted_grade"),
    )
    load_warehouse(url, farm, extra_grades=corrupt)
    build = dbt_build(project, url)
    assert not build.success
    failed = build.failed()
    assert any(name.startswith("in_range_stg_disease_grades_predicted_grade") for name in failed)
    assert len(failed) == 1, failed
    # Nothing downstream of the bad grades is built.
    assert build.statuses["model.farm.treatment_effect"] == "skipped"


def test_an_unknown_area_in_the_field_map_fails_the_build(farm: Farm, tmp_path: Path) -> None:
    positions = farm.positions.with_columns(
        pl.when(pl.col("position_id") == "T3")
        .then(pl.lit("sprayed"))
        .otherwise(pl.col("area"))
        .alias("area")
    )
    project = dbt_workdir(positions, tmp_path / "project")
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    load_warehouse(url, farm)
    build = dbt_build(project, url)
    assert not build.success
    failed = build.failed()
    assert any(name.startswith("source_accepted_values_farm_positions_area") for name in failed), (
        failed
    )
    assert build.statuses["model.farm.daily_severity"] == "skipped"


# --------------------------------------------------------------------------- dbt_env


def test_dbt_profile_for_duckdb(tmp_path: Path) -> None:
    output = dbt_output(f"duckdb:///{tmp_path / 'farm.duckdb'}")
    assert (output["type"], output["path"], output["schema"]) == (
        "duckdb",
        str(tmp_path / "farm.duckdb"),
        "main",
    )
    # README's form, three slashes then the absolute path, and SQLAlchemy's four: both are
    # the same absolute file for dbt and for the warehouse resource, wherever they run.
    for url in ("duckdb:///srv/farm/farm.duckdb", "duckdb:////srv/farm/farm.duckdb"):
        assert dbt_output(url)["path"] == "/srv/farm/farm.duckdb"
        assert WarehouseResource(url=url).duckdb_path == Path("/srv/farm/farm.duckdb")
    assert warehouse_relation_prefix("duckdb:///srv/farm/farm.duckdb") == "farm.main"


def test_dbt_profile_for_postgres(tmp_path: Path) -> None:
    url = "postgresql://farm:s%40cret@db.example:6543/warehouse?sslmode=require"
    output = dbt_output(url)
    assert {k: v for k, v in output.items() if k != "threads"} == {
        "type": "postgres",
        "host": "db.example",
        "port": 6543,
        "user": "farm",
        "password": "s@cret",
        "dbname": "warehouse",
        "sslmode": "require",
        "schema": "public",
    }
    defaults = dbt_output("postgres://farm@127.0.0.1/farm")
    assert (defaults["port"], defaults["password"], defaults["sslmode"]) == (5432, "", "prefer")
    assert warehouse_relation_prefix(url) == "warehouse.public"
    # Written once, readable by its owner only: it holds the password, as the URL does.
    profile = write_dbt_profile(url, tmp_path / "profile") / "profiles.yml"
    assert json.loads(profile.read_text())["farm"]["outputs"]["warehouse"] == output
    assert profile.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "url",
    ["sqlite:///farm.db", "", "duckdb://", "duckdb:///:memory:", "postgresql://host-only"],
)
def test_dbt_profile_rejects_unsupported_urls(url: str) -> None:
    with pytest.raises(ValueError, match="FARM_WAREHOUSE"):
        dbt_output(url)


def test_dbt_env_does_not_import_dbt() -> None:
    import subprocess
    import sys

    code = "import sys, farm_platform.analytics.dbt_env; print('dbt' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
