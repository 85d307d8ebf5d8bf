"""The farm_platform_analytics code location, built in one place."""

import os

from dagster import Definitions, EnvVar, in_process_executor
from dagster_dbt import DbtCliResource

from farm_platform import config
from farm_platform.analytics.dbt_env import DBT_EXECUTABLE
from farm_platform.analytics.dbt_models import dbt_project, farm_dbt_models
from farm_platform.analytics.report import effectiveness_report
from farm_platform.analytics.schedules import daily_report_job, daily_report_schedule
from farm_platform.resources.report_store import ReportStoreResource
from farm_platform.resources.warehouse import WarehouseResource

defs = Definitions(
    assets=[farm_dbt_models, effectiveness_report],
    jobs=[daily_report_job],
    schedules=[daily_report_schedule],
    resources={
        "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE),
        "warehouse": WarehouseResource(url=EnvVar(config.FARM_WAREHOUSE)),
        "reports": ReportStoreResource(
            bucket_url=EnvVar(config.FARM_BUCKET),
            reports_url=EnvVar(config.FARM_REPORTS) if os.environ.get(config.FARM_REPORTS) else "",
        ),
    },
    # The report follows the dbt build, and dbt runs in its own process anyway: a step
    # process each (the default) only added two interpreter starts to every report run.
    executor=in_process_executor,
)
