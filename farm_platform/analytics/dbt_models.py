"""dbt models as Dagster assets, dbt tests as asset checks (dagster-dbt)."""

import json
from collections.abc import Iterator, Mapping
from typing import Any

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    Config,
)
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)
from pydantic import Field

from farm_platform.analytics.dbt_project import farm_dbt_project
from farm_platform.images.keys import GRADES_BY_DISEASE
from farm_platform.resources.trial_calendar import TrialCalendarResource
from farm_platform.resources.warehouse import WarehouseResource

DISEASE_GRADES_TABLE = AssetKey("disease_grades")
# Where Dagster shows an asset's storage ("Storage" in the UI).
TABLE_NAME = "dagster/table_name"


class FarmDbtTranslator(DagsterDbtTranslator):
    """One lineage graph: the `disease_grades` table is written by five grade assets. Each
    asset's storage names the warehouse's relation, `relation_prefix` (`database.schema`,
    dbt_env.warehouse_relation_prefix): the manifest was parsed without a warehouse."""

    def __init__(self, relation_prefix: str) -> None:
        # The source tests too: the field map's (unique ids, known areas) are checks of
        # the `positions` asset.
        super().__init__(
            settings=DagsterDbtTranslatorSettings(
                enable_asset_checks=True, enable_source_tests_as_checks=True
            )
        )
        self.relation_prefix = relation_prefix

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        relation = spec.metadata.get(TABLE_NAME)
        if relation:
            name = str(relation).rsplit(".", 1)[-1]
            spec = spec.replace_attributes(
                metadata={**spec.metadata, TABLE_NAME: f"{self.relation_prefix}.{name}"}
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


def build_dbt_models(relation_prefix: str) -> AssetsDefinition:
    """The dbt models as assets and their tests as asset checks, their storage named in
    the warehouse whose relations start with `relation_prefix`."""

    @dbt_assets(
        manifest=farm_dbt_project.manifest_path,
        project=farm_dbt_project,
        dagster_dbt_translator=FarmDbtTranslator(relation_prefix),
    )
    def farm_dbt_models(
        context: AssetExecutionContext,
        dbt: DbtCliResource,
        warehouse: WarehouseResource,
        trial_calendar: TrialCalendarResource,
        config: DbtBuildConfig,
    ) -> Iterator[Any]:
        """`dbt build`: the incremental models rebuild only the dates int_changed_days names
        (the new day, and the days a backfill, a late photo or a quality check changed since
        the last complete build); every date on the first build or with `full_refresh`.

        A run of a subset of the dbt assets without analytics_watermark (which depends on
        every incremental model) leaves the watermark where it was: the next complete build
        (the daily schedule's) takes again every day changed since the last complete one."""
        args = ["build", "--full-refresh"] if config.full_refresh else ["build"]
        # dbt's var, the one place trend_adjusted_effect reads the treatment start from when
        # Dagster builds (checked when the definitions load).
        start = trial_calendar.calendar().treatment_start
        if start is not None:
            args += ["--vars", json.dumps({"treatment_start": start.isoformat()})]
        yield from _dbt_build(context, dbt, warehouse, args)

    return farm_dbt_models


def _dbt_build(
    context: AssetExecutionContext,
    dbt: DbtCliResource,
    warehouse: WarehouseResource,
    args: list[str],
) -> Iterator[Any]:
    # On DuckDB, no sensor tick may open the file between two of dbt's connections.
    with warehouse.exclusive_access():
        yield from dbt.cli(args, context=context).stream()
    if warehouse.table_exists("int_changed_days"):
        days = warehouse.query("SELECT date FROM int_changed_days ORDER BY date")["date"]
        context.log.info(
            f"dbt rebuilt {days.len()} day(s) of the incremental models"
            + (f": {', '.join(str(day) for day in days.head(30))}" if days.len() else "")
            + (" …" if days.len() > 30 else "")
        )
