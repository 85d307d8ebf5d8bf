"""The day-partitions definition that image assets, grades and the daily report share, and
the trial's calendar it is built from.

A photo's identity is (position_id, date) plus its object generation; positions are rows
in every table, never Dagster partitions (docs/contracts.md, Partitions revised 2026-11-25).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dagster import DailyPartitionsDefinition

from farm_platform import config


def day_partitions(start: dt.date, timezone: str) -> DailyPartitionsDefinition:
    """Days from `start` on the calendar of `timezone` (an IANA name).

    end_offset=1: today's photos are valid partitions as soon as they land. Days are the
    farm's calendar days (FARM_TRIAL_TIMEZONE): a farm east of UTC photographs "tomorrow"
    while UTC is still on today."""
    return DailyPartitionsDefinition(start_date=start.isoformat(), end_offset=1, timezone=timezone)


@dataclass(frozen=True)
class TrialCalendar:
    """The trial's days: its first day on the farm's calendar (an IANA time zone), and the
    day treatment begins (None: no pre-period). The `trial_calendar` resource's values,
    checked (`TrialCalendarResource.calendar`); the defaults are the settings' defaults."""

    start: dt.date = dt.date.fromisoformat(config.DEFAULT_TRIAL_START_DATE)
    timezone: str = config.DEFAULT_TRIAL_TIMEZONE
    treatment_start: dt.date | None = None

    def today(self) -> dt.date:
        """Today's date on the farm's calendar."""
        from zoneinfo import ZoneInfo

        return dt.datetime.now(ZoneInfo(self.timezone)).date()

    def valid_dates(self, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
        """The first and last date that are day partitions today (the farm's today)."""
        return self.start, today or self.today()

    def day_partitions(self) -> DailyPartitionsDefinition:
        return day_partitions(self.start, self.timezone)
