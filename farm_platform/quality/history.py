"""What the checks read back from the warehouse and the bucket (no Dagster, no GE)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

ONE_DAY = dt.timedelta(days=1)


def leaf_counts(
    warehouse: Any, cropper: tuple[str, str], first: dt.date, last: dt.date
) -> pl.DataFrame:
    """position_id, date, leaves: every readable photo from `first` − 1 day to `last`."""
    return warehouse.query(
        "SELECT images.position_id, images.date, count(crops.leaf_crop_idx) AS leaves"
        " FROM drone_images AS images LEFT JOIN leaf_crops AS crops"
        " ON crops.position_id = images.position_id AND crops.date = images.date"
        " AND crops.cropper_model_id = %s AND crops.cropper_model_version = %s"
        " WHERE images.error IS NULL AND images.date BETWEEN %s AND %s"
        " GROUP BY images.position_id, images.date",
        [cropper[0], cropper[1], first - ONE_DAY, last],
    ).pipe(_typed, leaves=pl.Int64())


def mean_grades(
    warehouse: Any,
    disease_type: str,
    grader: tuple[str, str],
    cropper: tuple[str, str],
    first: dt.date,
    last: dt.date,
) -> pl.DataFrame:
    """position_id, date, mean_grade of one disease (given versions), `first` − 1 day .. `last`."""
    return warehouse.query(
        "SELECT position_id, date, avg(CAST(predicted_grade AS DOUBLE PRECISION)) AS mean_grade"
        " FROM disease_grades WHERE disease_type = %s"
        " AND disease_model_id = %s AND disease_model_version = %s"
        " AND cropper_model_id = %s AND cropper_model_version = %s"
        " AND date BETWEEN %s AND %s GROUP BY position_id, date",
        [disease_type, *grader, *cropper, first - ONE_DAY, last],
    ).pipe(_typed, mean_grade=pl.Float64())


def _typed(frame: pl.DataFrame, **value: pl.DataType) -> pl.DataFrame:
    schema = {"position_id": pl.String(), "date": pl.Date(), **value}
    if frame.is_empty():
        return pl.DataFrame(schema=schema)
    return frame.cast(schema)


def crop_exists_checker(filesystem: Any) -> Callable[[Sequence[str]], list[bool]]:
    """`uris -> exists?`, one listing per folder (a photo's crops share one folder)."""

    def exists(uris: Sequence[str]) -> list[bool]:
        by_folder: dict[str, set[str]] = defaultdict(set)
        paths = [filesystem._strip_protocol(uri) for uri in uris]
        listed: dict[str, set[str]] = {}
        for path in paths:
            by_folder[path.rsplit("/", 1)[0]].add(path)
        for folder in by_folder:
            try:
                listed[folder] = {
                    filesystem._strip_protocol(p) for p in filesystem.ls(folder, detail=False)
                }
            except (FileNotFoundError, OSError):
                listed[folder] = set()
        return [path in listed[path.rsplit("/", 1)[0]] for path in paths]

    return exists
