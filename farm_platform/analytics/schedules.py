"""The daily report: dbt marts and yesterday's effectiveness report, every morning."""

import datetime as dt

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from farm_platform.analytics.report import EFFECTIVENESS_REPORT
from farm_platform.images.run_tags import ANALYTICS_QUEUE, CELERY_QUEUE_TAG

daily_report_job = define_asset_job(
    "daily_effectiveness_report",
    # The `analytics` group: the field map's table and the dbt models (their tests too).
    selection=AssetSelection.groups("analytics") | AssetSelection.assets(EFFECTIVENESS_REPORT),
    description="The field map into the warehouse, dbt build (models and tests), then the "
    "effectiveness report of one day.",
)


def build_daily_report_schedule(timezone: str) -> ScheduleDefinition:
    """The daily report's schedule on the farm's clock, `timezone` (FARM_TRIAL_TIMEZONE,
    read once when the definitions load)."""
    return schedule(
        job=daily_report_job,
        cron_schedule="0 6 * * *",
        # 06:00 on the farm's clock, for the farm's yesterday.
        execution_timezone=timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        name="daily_report_schedule",
        # The UI shows this on the schedule's page, which otherwise names no day at all.
        description=(
            "Every morning at 06:00 on the farm's clock (FARM_TRIAL_TIMEZONE): the dbt build "
            "and the effectiveness report of the farm's yesterday, which is the run's day "
            "partition."
        ),
    )(daily_report_request)


def daily_report_request(context: ScheduleEvaluationContext) -> RunRequest:
    yesterday = (context.scheduled_execution_time - dt.timedelta(days=1)).date().isoformat()
    return RunRequest(
        run_key=yesterday,
        partition_key=yesterday,
        tags={CELERY_QUEUE_TAG: ANALYTICS_QUEUE},
    )
