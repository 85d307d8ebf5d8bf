"""The day-partitions definition that image assets, grades and the daily report share.

A photo's identity is (position_id, date) plus its object generation; positions are rows
in every table, never Dagster partitions (docs/contracts.md, Partitions revised 2026-11-25).
"""

from __future__ import annotations

import datetime as dt

from dagster import DailyPartitionsDefinition

from farm_platform.config import trial_start_date, trial_timezone, trial_today


def day_partitions(start: dt.date, timezone: str) -> DailyPartitionsDefinition:
    """Days from `start` on the calendar of `timezone` (an IANA name).

    end_offset=1: today's photos are valid partitions as soon as they land. Days are the
    farm's calendar days (FARM_TRIAL_TIMEZONE): a farm east of UTC photographs "tomorrow"
    while UTC is still on today."""
    return DailyPartitionsDefinition(start_date=start.isoformat(), end_offset=1, timezone=timezone)


def configured_day_partitions() -> DailyPartitionsDefinition:
    """The day partitions FARM_TRIAL_START_DATE and FARM_TRIAL_TIMEZONE give: both code
    locations' definitions call this once when they load (never at import), as do the
    commands and tests that build the asset graph."""
    return day_partitions(trial_start_date(), trial_timezone())


def valid_dates(today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The first and last date that are day partitions today (the farm's today)."""
    return trial_start_date(), today or trial_today()
