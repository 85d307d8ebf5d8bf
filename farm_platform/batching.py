"""Grouping new image partitions into few Dagster runs.

One run per image would pay seconds of process start-up per image, so the sensor asks for
partition-key *ranges*. A range over date × position partitions is a rectangle (dates
start..end × positions start..end, positions in their registration order), so the new
images are tiled into rectangles that contain only new images, each capped in size so a
run stays minutes long.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from farm_platform.layout import ImageKey


@dataclass(frozen=True)
class PartitionRectangle:
    """Consecutive dates × positions consecutive in registration order."""

    first_date: dt.date
    last_date: dt.date
    positions: tuple[str, ...]

    @property
    def keys(self) -> list[ImageKey]:
        days = (self.last_date - self.first_date).days + 1
        return [
            ImageKey(position, self.first_date + dt.timedelta(days=offset))
            for offset in range(days)
            for position in self.positions
        ]

    @property
    def size(self) -> int:
        return ((self.last_date - self.first_date).days + 1) * len(self.positions)

    @property
    def first(self) -> ImageKey:
        return ImageKey(self.positions[0], self.first_date)

    @property
    def last(self) -> ImageKey:
        return ImageKey(self.positions[-1], self.last_date)


def plan_rectangles(
    keys: Iterable[ImageKey], position_order: Sequence[str], max_images: int
) -> list[PartitionRectangle]:
    """Tile `keys` into rectangles of at most `max_images` that cover exactly `keys`."""
    if max_images < 1:
        raise ValueError("max_images must be at least 1")
    index = {position: i for i, position in enumerate(position_order)}
    unknown = {key.position_id for key in keys} - index.keys()
    if unknown:
        raise ValueError(f"positions {sorted(unknown)} are not registered partitions")

    positions_by_date: dict[dt.date, set[int]] = defaultdict(set)
    for key in keys:
        positions_by_date[key.date].add(index[key.position_id])

    # Strips: one date, a run of positions with consecutive registration indices.
    dates_by_strip: dict[tuple[int, int], list[dt.date]] = defaultdict(list)
    for date, indices in positions_by_date.items():
        for low, high in _consecutive_runs(sorted(indices)):
            dates_by_strip[(low, high)].append(date)

    rectangles = []
    for (low, high), dates in sorted(dates_by_strip.items()):
        positions = tuple(position_order[low : high + 1])
        for first, last in _consecutive_dates(sorted(dates)):
            rectangles.extend(_split(PartitionRectangle(first, last, positions), max_images))
    return sorted(rectangles, key=lambda r: (r.first_date, index[r.positions[0]]))


def _consecutive_runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _consecutive_dates(dates: Sequence[dt.date]) -> list[tuple[dt.date, dt.date]]:
    ordinals = _consecutive_runs([date.toordinal() for date in dates])
    return [(dt.date.fromordinal(a), dt.date.fromordinal(b)) for a, b in ordinals]


def _split(rectangle: PartitionRectangle, max_images: int) -> list[PartitionRectangle]:
    width = len(rectangle.positions)
    if width > max_images:
        # Wider than a run: one date at a time, positions in chunks.
        pieces = []
        days = (rectangle.last_date - rectangle.first_date).days + 1
        for offset in range(days):
            date = rectangle.first_date + dt.timedelta(days=offset)
            for start in range(0, width, max_images):
                chunk = rectangle.positions[start : start + max_images]
                pieces.append(PartitionRectangle(date, date, chunk))
        return pieces
    days_per_run = max_images // width
    pieces = []
    first = rectangle.first_date
    while first <= rectangle.last_date:
        last = min(rectangle.last_date, first + dt.timedelta(days=days_per_run - 1))
        pieces.append(PartitionRectangle(first, last, rectangle.positions))
        first = last + dt.timedelta(days=1)
    return pieces
