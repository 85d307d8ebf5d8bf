"""Image partitions: date × position (DESIGN.md, Data flow).

Positions are a dynamic dimension: the sensor registers them from the field map, in
field-map order, so that a day's photos of neighbouring positions form one contiguous
partition range that a single run can process.
"""

from __future__ import annotations

import datetime as dt
import os

from dagster import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
)

from farm_platform.layout import ImageKey, parse_date

DATE_DIMENSION = "date"
POSITION_DIMENSION = "position"
# First day of the trial's calendar; photos dated earlier are dead-lettered.
FARM_TRIAL_START_DATE = "FARM_TRIAL_START_DATE"
DEFAULT_TRIAL_START_DATE = "2026-01-01"
# Dagster's documented run tags for a run over a partition-key range.
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def trial_start_date() -> dt.date:
    return parse_date(os.environ.get(FARM_TRIAL_START_DATE, DEFAULT_TRIAL_START_DATE))


position_partitions = DynamicPartitionsDefinition(name=POSITION_DIMENSION)
# end_offset=1: today's photos are valid partitions as soon as they land.
date_partitions = DailyPartitionsDefinition(start_date=trial_start_date().isoformat(), end_offset=1)
image_partitions = MultiPartitionsDefinition(
    {DATE_DIMENSION: date_partitions, POSITION_DIMENSION: position_partitions}
)


def valid_dates(today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The first and last date that are image partitions today."""
    return trial_start_date(), today or dt.datetime.now(dt.UTC).date()


def image_partition_key(key: ImageKey) -> MultiPartitionKey:
    return MultiPartitionKey({DATE_DIMENSION: key.date_str, POSITION_DIMENSION: key.position_id})


def image_key(partition_key: str | MultiPartitionKey) -> ImageKey:
    if not isinstance(partition_key, MultiPartitionKey):
        partition_key = image_partitions.get_partition_key_from_str(partition_key)
    dimensions = partition_key.keys_by_dimension
    return ImageKey(dimensions[POSITION_DIMENSION], parse_date(dimensions[DATE_DIMENSION]))


def partition_range_tags(first: ImageKey, last: ImageKey) -> dict[str, str]:
    """Run tags for one run over the image partitions from `first` to `last`: the dates
    between theirs × the positions between theirs in registration order."""
    return {
        PARTITION_RANGE_START_TAG: str(image_partition_key(first)),
        PARTITION_RANGE_END_TAG: str(image_partition_key(last)),
    }
