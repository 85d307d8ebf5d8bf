"""What the settings configure, for commands and scripts outside Dagster (Dagster code has
them from its resources: `models`, `trial_calendar`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from farm_platform import config
from farm_platform.ml.registry import ModelRegistry

if TYPE_CHECKING:
    from dagster import DailyPartitionsDefinition


def configured_registry(models_dir: Path | str | None = None) -> ModelRegistry:
    """The registry in `models_dir` (a command's --models-dir), else in FARM_MODELS_DIR (the
    repository's models/ when unset); weights read from a bucket kept in FARM_MODELS_CACHE."""
    return ModelRegistry(models_dir or config.models_dir(), config.models_cache_dir())


def configured_day_partitions() -> DailyPartitionsDefinition:
    """The day partitions FARM_TRIAL_START_DATE and FARM_TRIAL_TIMEZONE give, as the code
    locations build them when their definitions load."""
    from farm_platform.resources.trial_calendar import TrialCalendarResource

    return TrialCalendarResource.from_environment().calendar().day_partitions()
