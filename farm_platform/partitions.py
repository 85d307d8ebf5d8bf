"""The one day-partitions definition: image assets, grades and the daily report share it.

A photo's identity is (position_id, date) plus its object generation; positions are rows
in every table, never Dagster partitions (docs/contracts.md, Partitions revised 2026-11-25).
"""

from __future__ import annotations

import datetime as dt

from dagster import DailyPartitionsDefinition

from farm_platform.config import trial_start_date, trial_timezone, trial_today

# end_offset=1: today's photos are valid partitions as soon as they land. Days are the
# farm's calendar days (FARM_TRIAL_TIMEZONE): a farm east of UTC photographs "tomorrow"
# while UTC is still on today.
daily_partitions = DailyPartitionsDefinition(
    start_date=trial_start_date().isoformat(), end_offset=1, timezone=trial_timezone()
)


def valid_dates(today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The first and last date that are day partitions today (the farm's today)."""
    return trial_start_date(), today or trial_today()
