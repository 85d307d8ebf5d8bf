"""Run the suites of `suites.py` over a run's photos; results per photo.

Here a "partition" is one photo, (position_id, date): the unit `partition_quality` keeps
and dbt holds back. A run of the image pipeline covers up to thousands of photos of a day.
Each suite is evaluated once over the run's frame, whose rows are labelled with their
photo, and every unexpected row is attributed to its photo. The suites are compiled
(`farm_platform.quality.compiled`): a run does not import Great Expectations. Per-photo
facts (leaf count, rows per crop, change since yesterday) are validated on a frame with one
row per photo. The outcome is the same as validating every photo on
its own: a photo fails exactly the expectations its rows break. A failure that cannot be
attributed (a null key, an expectation that raised) fails every photo of the run, so a
broken run is never reported clean.

No Dagster API here (only the `partition_quality` schema, from the warehouse module): the
assets log these results as asset check evaluations, and `farm-platform check` asserts on
them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from farm_platform.quality import compiled, suites
from farm_platform.quality.compiled import PARTITION_COLUMN, Failure
from farm_platform.resources.tables import PARTITION_QUALITY_TABLE

ERROR = "ERROR"
WARN = "WARN"
Partition = tuple[str, dt.date]  # (position_id, date)
MAX_OBSERVED_VALUES = 5

# Asset-check names (Dagster) of the suites; one check per asset and suite.
IMAGE_QUALITY = "image_quality"
LEAF_CROPS_VALID = "leaf_crops_valid"
LEAVES_VANISHED = "leaves_vanished"
GRADES_VALID = "grades_valid"
SEVERITY_JUMP = "severity_jump"


@dataclass(frozen=True)
class PartitionOutcome:
    passed: bool
    failed: tuple[str, ...] = ()  # expectation names (suites.py `meta.name`)
    observed: dict[str, list[Any]] = field(default_factory=dict)  # name -> unexpected values


@dataclass(frozen=True)
class CheckResult:
    """One check (asset × suite) over a batch: the outcome of every partition."""

    asset: str
    check_name: str
    severity: str
    outcomes: dict[Partition, PartitionOutcome]

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self.outcomes.values())

    def failed_partitions(self) -> list[Partition]:
        return sorted(p for p, outcome in self.outcomes.items() if not outcome.passed)

    def failed_expectations(self) -> set[str]:
        return {name for outcome in self.outcomes.values() for name in outcome.failed}

    def details(self, partition: Partition) -> str:
        outcome = self.outcomes[partition]
        return json.dumps(
            {"failed": list(outcome.failed), "observed": outcome.observed}, default=str
        )

    def quality_rows(self, checked_at: dt.datetime, run_id: str) -> pl.DataFrame:
        """Rows of the `partition_quality` warehouse table."""
        partitions = sorted(self.outcomes)
        return pl.DataFrame(
            {
                "position_id": [p for p, _ in partitions],
                "date": [d for _, d in partitions],
                "asset": [self.asset] * len(partitions),
                "check_name": [self.check_name] * len(partitions),
                "passed": [self.outcomes[p].passed for p in partitions],
                "severity": [self.severity] * len(partitions),
                "details": [self.details(p) for p in partitions],
                "checked_at": [checked_at] * len(partitions),
                "dagster_run_id": [run_id] * len(partitions),
            },
            schema=PARTITION_QUALITY_TABLE.polars_schema,
        )


# --------------------------------------------------------------------------- validation


def _partition_label(position_id: Any, date: Any) -> str | None:
    if position_id is None or date is None:
        return None
    return f"{position_id}|{date}"


# The suites' evaluator: the compiled suites (no Great Expectations import in a run).
evaluate_suite: Callable[[pl.DataFrame, str, Mapping[str, Any] | None], list[Failure]] = (
    compiled.evaluate
)


def validate(
    frame: pl.DataFrame,
    suite: str,
    partitions: Iterable[Partition],
    parameters: Mapping[str, Any] | None = None,
) -> dict[Partition, PartitionOutcome]:
    """Validate `frame` (columns include position_id, date) against the suite named `suite`
    of `suites.SUITES`, given its `parameters`, per partition."""
    partitions = sorted(set(partitions))
    by_label = {_partition_label(p, d): (p, d) for p, d in partitions}
    failed: dict[Partition, dict[str, list[Any]]] = {p: {} for p in partitions}

    def fail(partition: Partition, name: str, value: Any) -> None:
        values = failed.setdefault(partition, {}).setdefault(name, [])
        if len(values) < MAX_OBSERVED_VALUES and value not in values:
            values.append(value)

    labelled = frame.with_columns(
        pl.concat_str([pl.col("position_id"), pl.lit("|"), pl.col("date").cast(pl.String)]).alias(
            PARTITION_COLUMN
        )
    )
    for failure in evaluate_suite(labelled, suite, parameters):
        attributed = False
        for label, values in failure.rows:
            partition = by_label.get(label)
            if partition is None:
                continue
            fail(partition, failure.name, values or None)
            attributed = True
        if not attributed:
            # Null keys or an expectation that raised: the whole batch fails.
            for partition in partitions:
                fail(partition, failure.name, failure.observed)
    return {
        partition: PartitionOutcome(
            passed=not failed.get(partition),
            failed=tuple(sorted(failed.get(partition, {}))),
            observed=failed.get(partition, {}),
        )
        for partition in partitions
    }


def _merge(*outcomes: dict[Partition, PartitionOutcome]) -> dict[Partition, PartitionOutcome]:
    merged: dict[Partition, PartitionOutcome] = {}
    for outcome_map in outcomes:
        for partition, outcome in outcome_map.items():
            previous = merged.get(partition, PartitionOutcome(passed=True))
            merged[partition] = PartitionOutcome(
                passed=previous.passed and outcome.passed,
                failed=tuple(sorted({*previous.failed, *outcome.failed})),
                observed={**previous.observed, **outcome.observed},
            )
    return merged


def _partition_frame(partitions: Sequence[Partition]) -> pl.DataFrame:
    return pl.DataFrame(
        {"position_id": [p for p, _ in partitions], "date": [d for _, d in partitions]},
        schema={"position_id": pl.String(), "date": pl.Date()},
    )


def _rows_per_partition(partitions: Sequence[Partition], **frames: pl.DataFrame) -> pl.DataFrame:
    """One row per partition and, for each named frame, how many of its rows are in it."""
    counts = _partition_frame(partitions)
    for name, frame in frames.items():
        counts = counts.join(
            frame.group_by("position_id", "date").agg(pl.len().alias(name)),
            on=["position_id", "date"],
            how="left",
        )
    return counts.with_columns(pl.col(name).fill_null(0) for name in frames)


# --------------------------------------------------------------------------- the checks


def check_drone_images(images: pl.DataFrame) -> CheckResult:
    """`images`: drone_images rows plus `exists` (the object was found in the bucket)."""
    partitions = list(zip(images["position_id"], images["date"], strict=True))
    return CheckResult(
        asset="drone_images",
        check_name=IMAGE_QUALITY,
        severity=ERROR,
        outcomes=validate(images, "drone_images", partitions),
    )


def check_leaf_crops(
    crops: pl.DataFrame,
    image_sizes: pl.DataFrame,
    partitions: Sequence[Partition],
    crop_exists: Callable[[Sequence[str]], list[bool]],
) -> CheckResult:
    """`crops`: leaf_crops rows of the batch's readable photos (`partitions`), one detector.

    `image_sizes`: position_id, date, width, height; `crop_exists(uris)` asks the bucket.
    """
    rows = crops.join(
        image_sizes.select("position_id", "date", "width", "height"),
        on=["position_id", "date"],
        how="left",
    ).with_columns(
        crop_exists=pl.Series(crop_exists(crops["crop_uri"].to_list()), dtype=pl.Boolean())
    )
    counts = _rows_per_partition(partitions, leaves=crops)
    return CheckResult(
        asset="leaf_crops",
        check_name=LEAF_CROPS_VALID,
        severity=ERROR,
        outcomes=_merge(
            validate(rows, "leaf_crops", partitions),
            validate(counts, "leaf_counts", partitions),
        ),
    )


def check_disease_grades(
    disease_type: str,
    grades: pl.DataFrame,
    crops: pl.DataFrame,
    partitions: Sequence[Partition],
    scale: Sequence[int],
    grader: tuple[str, str],
    cropper: tuple[str, str],
) -> CheckResult:
    """`grades`: the disease's rows written for `partitions`; `crops`: the crops graded."""
    per_partition = _rows_per_partition(partitions, crops=crops, grade_rows=grades)
    return CheckResult(
        asset=f"{disease_type}_grades",
        check_name=GRADES_VALID,
        severity=ERROR,
        outcomes=_merge(
            validate(
                grades,
                "disease_grades",
                partitions,
                suites.disease_grades_parameters(disease_type, scale, grader, cropper),
            ),
            validate(per_partition, "grade_counts", partitions),
        ),
    )


def check_leaves_vanished(
    leaf_counts: pl.DataFrame, partitions: Sequence[Partition]
) -> CheckResult:
    """`leaf_counts`: position_id, date, leaves for readable photos of the batch's days and
    the day before. A position with leaves yesterday and none today is a WARNING."""
    frame = _with_yesterday(leaf_counts, "leaves", partitions).with_columns(
        vanished=(pl.col("leaves_yesterday") > 0) & (pl.col("leaves") == 0)
    )
    return CheckResult(
        asset="leaf_crops",
        check_name=LEAVES_VANISHED,
        severity=WARN,
        outcomes=validate(frame, "leaves_vanished", partitions),
    )


def check_severity_jump(
    disease_type: str,
    mean_grades: pl.DataFrame,
    partitions: Sequence[Partition],
    max_jump: float = suites.DEFAULT_MAX_SEVERITY_JUMP,
) -> CheckResult:
    """`mean_grades`: position_id, date, mean_grade (this disease, active versions) for the
    batch's days and the day before. A change beyond `max_jump` is a WARNING."""
    frame = _with_yesterday(mean_grades, "mean_grade", partitions).with_columns(
        jump=(pl.col("mean_grade") - pl.col("mean_grade_yesterday")).abs()
    )
    return CheckResult(
        asset=f"{disease_type}_grades",
        check_name=SEVERITY_JUMP,
        severity=WARN,
        outcomes=validate(
            frame, "severity_jump", partitions, suites.severity_jump_parameters(max_jump)
        ),
    )


def _with_yesterday(
    values: pl.DataFrame, column: str, partitions: Sequence[Partition]
) -> pl.DataFrame:
    values = values.select("position_id", "date", column)
    yesterday = values.select(
        "position_id",
        (pl.col("date") + pl.duration(days=1)).alias("date"),
        pl.col(column).alias(f"{column}_yesterday"),
    )
    return (
        _partition_frame(partitions)
        .join(values, on=["position_id", "date"], how="left")
        .join(yesterday, on=["position_id", "date"], how="left")
    )
