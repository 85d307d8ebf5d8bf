"""The trial's calendar as a Dagster resource: FARM_TRIAL_START_DATE, FARM_TRIAL_TIMEZONE
and FARM_TREATMENT_START.

The definitions read it once when they load: the day partitions and the report's schedule
are built from it, and the sensor's tick (which dates are valid, a photo's local day) and
the dbt build (its var `treatment_start`) read the same values from the resource.
"""

from __future__ import annotations

from typing import ClassVar

from dagster import ConfigurableResource
from pydantic import Field

from farm_platform import config, config_values
from farm_platform.partitions import TrialCalendar
from farm_platform.resources.environment import environment_fields


class TrialCalendarResource(ConfigurableResource):
    """The trial's first day, its time zone and the day treatment begins."""

    VARIABLES: ClassVar[dict[str, str]] = {
        "start_date": config.FARM_TRIAL_START_DATE,
        "timezone": config.FARM_TRIAL_TIMEZONE,
        "treatment_start": config.FARM_TREATMENT_START,
    }

    start_date: str = Field(
        default=config.DEFAULT_TRIAL_START_DATE,
        description="the first day partition (YYYY-MM-DD); earlier photos are dead-lettered",
    )
    timezone: str = Field(
        default=config.DEFAULT_TRIAL_TIMEZONE,
        description="the farm's IANA time zone: a photo's day is its local calendar day",
    )
    treatment_start: str = Field(
        default="", description="the day treatment begins (YYYY-MM-DD); empty: no pre-period"
    )

    def calendar(self) -> TrialCalendar:
        """The fields, checked: ConfigError names the variable of a malformed one."""
        return TrialCalendar(
            config_values.trial_start_date(self.start_date),
            config_values.trial_timezone(self.timezone),
            config_values.treatment_start(self.treatment_start),
        )

    @classmethod
    def from_environment(cls) -> TrialCalendarResource:
        """The resource as the environment sets it, read now (the definitions and commands
        call this once; partitions cannot follow a value that changes later)."""
        return cls(**environment_fields(cls, env_vars=False))
