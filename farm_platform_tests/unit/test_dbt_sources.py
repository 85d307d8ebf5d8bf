"""The column types that sources.yml declares, which the staging models cast to
(dbt_project/macros/typed_columns.sql), are the warehouse's (farm_platform/resources/
tables.py): a column added, dropped or retyped in one is caught before dbt builds on it.
"""

from __future__ import annotations

import yaml

from farm_platform.config import REPO_ROOT
from farm_platform.resources.tables import TABLES

SOURCES = REPO_ROOT / "dbt_project" / "models" / "sources.yml"


def _typed_sources() -> dict[str, dict[str, str]]:
    (farm,) = yaml.safe_load(SOURCES.read_text())["sources"]
    return {
        table["name"]: {column["name"]: column["data_type"] for column in table["columns"]}
        for table in farm["tables"]
        if any("data_type" in column for column in table["columns"])
    }


def test_the_staged_sources_declare_the_warehouse_columns_and_types():
    typed = _typed_sources()
    assert set(typed) == {
        "disease_grades",
        "leaf_crops",
        "drone_images",
        "model_versions",
        "partition_quality",
    }
    for name, columns in typed.items():
        warehouse = {
            column: declaration.lower().removesuffix(" not null")
            for column, declaration in TABLES[name].columns.items()
        }
        assert list(columns.items()) == list(warehouse.items()), name
