"""Dagster side of the data-quality checks: check specs and one result per day partition.

A run grades one day. Each check is evaluated once for the run's photos of that day and
reported as one `AssetCheckResult` of the day partition (linked by Dagster to the
materialization it checked); the failing positions are named in its metadata. The same
outcomes, per (position, date), go to the `partition_quality` table, which dbt reads to
hold back exactly the failing photos: a bad photo never holds back the rest of its day.
So the specs are not `blocking` in Dagster's sense (that would fail the whole day's step).
A check that fails, or that cannot run, never fails the run: it is reported, and a check
that could not run counts as failed so that nothing unchecked reaches the reports.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetSpec,
    DagsterLogManager,
    MetadataValue,
)

from farm_platform.images.keys import IMAGE_PIPELINE, PARTITION_QUALITY
from farm_platform.partitions import daily_partitions
from farm_platform.quality.expectations import (
    ERROR,
    GRADES_VALID,
    IMAGE_QUALITY,
    LEAF_CROPS_VALID,
    LEAVES_VANISHED,
    SEVERITY_JUMP,
    CheckResult,
)
from farm_platform.resources.warehouse import WarehouseResource

_SEVERITY = {"ERROR": AssetCheckSeverity.ERROR, "WARN": AssetCheckSeverity.WARN}


def image_quality_spec(asset: AssetKey) -> AssetCheckSpec:
    return AssetCheckSpec(
        IMAGE_QUALITY,
        asset=asset,
        partitions_def=daily_partitions,
        description="Great Expectations suite `drone_images`: the object exists, decodes as an "
        "image, width/height/bytes within bounds.",
    )


def leaf_crops_specs(asset: AssetKey) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            LEAF_CROPS_VALID,
            asset=asset,
            partitions_def=daily_partitions,
            description="Great Expectations suites `leaf_crops` + `leaf_counts`: 0–20 leaves, "
            "boxes inside the image, scores in [0, 1], crop objects exist, model id/version "
            "present. A failing photo's grades are held back from dbt and reports.",
        ),
        AssetCheckSpec(
            LEAVES_VANISHED,
            asset=asset,
            partitions_def=daily_partitions,
            description="WARNING: the position had leaves yesterday and none today.",
        ),
    ]


def grades_specs(asset: AssetKey) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            GRADES_VALID,
            asset=asset,
            partitions_def=daily_partitions,
            description="Great Expectations suites `disease_<k>_grades` + `grade_counts`: one "
            "row per crop, grade within the model card's scale, confidence in [0, 1], keys not "
            "null and unique, model versions = the registry's active ones. A failing photo is "
            "held back from dbt and reports (dbt model held_back_partitions).",
        ),
        AssetCheckSpec(
            SEVERITY_JUMP,
            asset=asset,
            partitions_def=daily_partitions,
            description="WARNING: the position's mean grade moved more than the bound "
            "(FARM_MAX_SEVERITY_JUMP) since yesterday.",
        ),
    ]


def day_result(result: CheckResult) -> AssetCheckResult:
    """The day's evaluation of one check; failing positions and what they broke as metadata."""
    failed = result.failed_partitions()
    return AssetCheckResult(
        asset_key=AssetKey(result.asset),
        check_name=result.check_name,
        passed=not failed,
        severity=_SEVERITY[result.severity],
        metadata={
            "photos_checked": len(result.outcomes),
            "photos_failed": len(failed),
            "failed_positions": MetadataValue.json(sorted({p for p, _ in failed})),
            "failed_expectations": MetadataValue.json(sorted(result.failed_expectations())),
            "examples": MetadataValue.json(
                {
                    f"{position} {date}": {
                        "failed": list(result.outcomes[(position, date)].failed),
                        "observed": result.outcomes[(position, date)].observed,
                    }
                    for position, date in failed[:5]
                }
            ),
        },
    )


def partition_quality_spec() -> AssetSpec:
    """The `partition_quality` table as an asset of this location: written by the checks
    of every image run (each run logs a materialization of its day), read by dbt."""
    return AssetSpec(
        PARTITION_QUALITY,
        deps=list(IMAGE_PIPELINE),
        group_name="images",
        kinds={"duckdb"},
        partitions_def=daily_partitions,
        description="Outcome of every data-quality check per photo (position, date) and "
        "check: passed or failed, with what failed. Written by image_pipeline's checks; dbt's "
        "held_back_partitions keeps photos that failed an ERROR check out of the reports.",
    )


def record(
    log: DagsterLogManager,
    warehouse: WarehouseResource,
    results: Sequence[CheckResult],
    run_id: str,
) -> list[AssetCheckResult]:
    """Store the outcomes in `partition_quality`, log failures; the day's check results."""
    import polars as pl

    checked_at = dt.datetime.now(dt.UTC)
    for result in results:
        failed = result.failed_partitions()
        if failed:
            message = (
                f"{result.asset}/{result.check_name} ({result.severity}) failed on "
                f"{len(failed)} photo(s), e.g. "
                + ", ".join(
                    f"{p} {d}: {', '.join(result.outcomes[(p, d)].failed)}" for p, d in failed[:5]
                )
            )
            (log.error if result.severity == ERROR else log.warning)(message)
    frames = [result.quality_rows(checked_at, run_id) for result in results if result.outcomes]
    if frames:
        warehouse.replace_rows("partition_quality", pl.concat(frames))
    return [day_result(result) for result in results]
