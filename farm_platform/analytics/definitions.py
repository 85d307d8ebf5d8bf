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
from farm_platform.resources.environment import environment_fields
from farm_platform.resources.field_map import FieldMapResource
from farm_platform.resources.model_registry import ModelRegistryResource
from farm_platform.resources.report_store import ReportStoreResource
from farm_platform.resources.trial_calendar import TrialCalendarResource
from farm_platform.resources.warehouse import WarehouseResource

# Name the location's missing settings before anything is built from them.
config.require_for_location("farm_platform_analytics", (config.FARM_BUCKET, config.FARM_WAREHOUSE))

# Read once, here: the dbt profile and the storage names of the dbt assets come from the
# warehouse the inference assets write. The resource keeps the EnvVar, so the UI shows the
# variable's name, not the URL (which may hold a password).
warehouse_url = EnvVar(config.FARM_WAREHOUSE).get_value() or ""
# The trial's calendar (FARM_TRIAL_START_DATE, FARM_TRIAL_TIMEZONE, FARM_TREATMENT_START),
# read once here: the partitions, the schedule and the dbt build use the same values.
trial_calendar = TrialCalendarResource.from_environment()
calendar = trial_calendar.calendar()

defs = Definitions(
    assets=[
        positions,
        build_dbt_models(warehouse_relation_prefix(warehouse_url)),
        build_effectiveness_report(calendar.day_partitions()),
    ],
    jobs=[daily_report_job],
    schedules=[build_daily_report_schedule(calendar.timezone)],
    resources={
        "dbt": DbtCliResource(
            project_dir=farm_dbt_project,
            profiles_dir=str(dbt_profiles_dir(warehouse_url)),
            dbt_executable=DBT_EXECUTABLE,
        ),
        "warehouse": WarehouseResource(url=EnvVar(config.FARM_WAREHOUSE)),
        "field_map": FieldMapResource(path=str(config.field_map_path())),
        # The report names the active graders' diseases and their evaluations.
        "models": ModelRegistryResource(**environment_fields(ModelRegistryResource)),
        "trial_calendar": trial_calendar,
        "reports": ReportStoreResource(
            bucket_url=EnvVar(config.FARM_BUCKET),
            reports_url=EnvVar(config.FARM_REPORTS) if os.environ.get(config.FARM_REPORTS) else "",
        ),
    },
    # The report follows the dbt build, and dbt runs in its own process anyway: a step
    # process each (the default) only added two interpreter starts to every report run.
    executor=in_process_executor,
)
