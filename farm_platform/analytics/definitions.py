"""The farm_platform_analytics code location, built in one place."""

import os

from dagster import Definitions, EnvVar, in_process_executor
from dagster_dbt import DbtCliResource

from farm_platform import config
from farm_platform.analytics.dbt_env import (
    DBT_EXECUTABLE,
    dbt_profiles_dir,
    warehouse_relation_prefix,
)
from farm_platform.analytics.dbt_models import build_dbt_models
from farm_platform.analytics.dbt_project import farm_dbt_project
from farm_platform.analytics.positions import positions
from farm_platform.analytics.report import build_effectiveness_report
from farm_platform.analytics.schedules import build_daily_report_schedule, daily_report_job
from farm_platform.partitions import configured_day_partitions
from farm_platform.resources.field_map import FieldMapResource
from farm_platform.resources.report_store import ReportStoreResource
from farm_platform.resources.warehouse import WarehouseResource

# Name the location's missing settings before anything is built from them.
config.require_for_location("farm_platform_analytics", (config.FARM_BUCKET, config.FARM_WAREHOUSE))

# Read once, here: the dbt profile and the storage names of the dbt assets come from the
# warehouse the inference assets write. The resource keeps the EnvVar, so the UI shows the
# variable's name, not the URL (which may hold a password).
warehouse_url = EnvVar(config.FARM_WAREHOUSE).get_value() or ""

defs = Definitions(
    assets=[
        positions,
        build_dbt_models(warehouse_relation_prefix(warehouse_url)),
        # The trial's calendar (FARM_TRIAL_START_DATE, FARM_TRIAL_TIMEZONE), read once here.
        build_effectiveness_report(configured_day_partitions()),
    ],
    jobs=[daily_report_job],
    schedules=[build_daily_report_schedule(config.trial_timezone())],
    resources={
        "dbt": DbtCliResource(
            project_dir=farm_dbt_project,
            profiles_dir=str(dbt_profiles_dir(warehouse_url)),
            dbt_executable=DBT_EXECUTABLE,
        ),
        "warehouse": WarehouseResource(url=EnvVar(config.FARM_WAREHOUSE)),
        "field_map": FieldMapResource(path=str(config.field_map_path())),
        "reports": ReportStoreResource(
            bucket_url=EnvVar(config.FARM_BUCKET),
            reports_url=EnvVar(config.FARM_REPORTS) if os.environ.get(config.FARM_REPORTS) else "",
        ),
    },
    # The report follows the dbt build, and dbt runs in its own process anyway: a step
    # process each (the default) only added two interpreter starts to every report run.
    executor=in_process_executor,
)
