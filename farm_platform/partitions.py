"""The one day-partitions definition: image assets, grades and the daily report share it.

A photo's identity is (position_id, date) plus its object generation; positions are rows
in every table, never Dagster partitions (DESIGN.md, Partitions revised 2026-11-25).
"""

from __future__ import annotations

import datetime as dt
import os

from dagster import DailyPartitionsDefinition

from farm_platform.layout import parse_date

# First day of the trial's calendar; photos dated earlier are dead-lettered.
FARM_TRIAL_START_DATE = "FARM_TRIAL_START_DATE"
DEFAULT_TRIAL_START_DATE = "2026-01-01"


def trial_start_date() -> dt.date:
    return parse_date(os.environ.get(FARM_TRIAL_START_DATE, DEFAULT_TRIAL_START_DATE))


# end_offset=1: today's photos are valid partitions as soon as they land.
daily_partitions = DailyPartitionsDefinition(
    start_date=trial_start_date().isoformat(), end_offset=1
)


def valid_dates(today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The first and last date that are day partitions today."""
    return trial_start_date(), today or dt.datetime.now(dt.UTC).date()
