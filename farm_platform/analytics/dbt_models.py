"""dbt models as Dagster assets, dbt tests as asset checks (dagster-dbt)."""

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from dagster import AssetDep, AssetExecutionContext, AssetKey, AssetSpec, Config
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)
from pydantic import Field

from farm_platform.analytics.dbt_env import (
    DBT_PROFILES_DIR,
    DBT_PROJECT_DIR,
    dbt_connection,
    dbt_project_for,
    manifest_is_stale,
    parse_dbt_project,
    warehouse_relation_prefix,
)
from farm_platform.config import (
    FARM_BUCKET,
    FARM_WAREHOUSE,
    field_map_path,
    require_for_location,
    treatment_start,
)
from farm_platform.images.keys import GRADES_BY_DISEASE
from farm_platform.resources.warehouse import WarehouseResource

# The first module the analytics location loads: name its missing settings before the
# dbt assets (whose storage names the warehouse) are built.
require_for_location("farm_platform_analytics", (FARM_BUCKET, FARM_WAREHOUSE))

if manifest_is_stale(DBT_PROJECT_DIR):
    parse_dbt_project(DBT_PROJECT_DIR)
dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROFILES_DIR)

DISEASE_GRADES_TABLE = AssetKey("disease_grades")
# Where Dagster shows an asset's storage ("Storage" in the UI).
TABLE_NAME = "dagster/table_name"


class FarmDbtTranslator(DagsterDbtTranslator):
    """One lineage graph: the `disease_grades` table is written by five grade assets. Each
    asset's storage names the warehouse's relation (the manifest was parsed without one)."""

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        relation = spec.metadata.get(TABLE_NAME)
        if relation:
            name = str(relation).rsplit(".", 1)[-1]
            prefix = warehouse_relation_prefix(os.environ[FARM_WAREHOUSE])
            spec = spec.replace_attributes(
                metadata={**spec.metadata, TABLE_NAME: f"{prefix}.{name}"}
            )
        if not any(dep.asset_key == DISEASE_GRADES_TABLE for dep in spec.deps):
            return spec
        deps = [dep for dep in spec.deps if dep.asset_key != DISEASE_GRADES_TABLE]
        deps += [AssetDep(key) for key in GRADES_BY_DISEASE.values()]
        return spec.replace_attributes(deps=deps)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "analytics"


class DbtBuildConfig(Config):
    """How the marts are built: by default incrementally (the days that changed)."""

    full_refresh: bool = Field(
        default=False,
        description="Rebuild every incremental model from all of history "
        "(`dbt build --full-refresh`); the tables come out the same as incremental builds'.",
    )


# No `project=`: dagster-dbt then runs every `dbt.cli` in that project's folder, whatever
# project_dir the resource below names, and the copy holding FARM_FIELD_MAP's seed would
# never be used (the checkout's seed was built instead). What it would add is code
# references in the UI.
@dbt_assets(
    manifest=dbt_project.manifest_path,
    dagster_dbt_translator=FarmDbtTranslator(
        settings=DagsterDbtTranslatorSettings(enable_asset_checks=True)
    ),
)
def farm_dbt_models(
    context: AssetExecutionContext,
    dbt: DbtCliResource,
    warehouse: WarehouseResource,
    config: DbtBuildConfig,
) -> Iterator[Any]:
    """`dbt build`: the incremental models rebuild only the dates int_changed_days names
    (the new day, and the days a backfill, a late photo or a quality check changed since
    the last complete build); every date on the first build or with `full_refresh`.

    A run of a subset of the dbt assets without analytics_watermark (which depends on
    every incremental model) leaves the watermark where it was: the next complete build
    (the daily schedule's) takes again every day changed since the last complete one."""
    args = ["build", "--full-refresh"] if config.full_refresh else ["build"]
    # Validated here (a bad date fails the run naming the setting) and handed to dbt as its
    # var, the one place trend_adjusted_effect reads it from when Dagster builds.
    start = treatment_start()
    if start is not None:
        args += ["--vars", json.dumps({"treatment_start": start.isoformat()})]
    # profiles.yml reads the connection from variables derived from FARM_WAREHOUSE; the
    # positions seed is the field map the image location uses (FARM_FIELD_MAP).
    # On DuckDB, no sensor tick may open the file between two of dbt's connections.
    with (
        dbt_connection(warehouse.url),
        dbt_project_for(field_map_path()) as project_dir,
        warehouse.exclusive_access(),
    ):
        if project_dir != DBT_PROJECT_DIR:
            dbt = DbtCliResource(
                project_dir=str(project_dir),
                profiles_dir=str(project_dir),
                dbt_executable=dbt.dbt_executable,
            )
        yield from dbt.cli(args, context=context).stream()
    if warehouse.table_exists("int_changed_days"):
        days = warehouse.query("SELECT date FROM int_changed_days ORDER BY date")["date"]
        context.log.info(
            f"dbt rebuilt {days.len()} day(s) of the incremental models"
            + (f": {', '.join(str(day) for day in days.head(30))}" if days.len() else "")
            + (" …" if days.len() > 30 else "")
        )
