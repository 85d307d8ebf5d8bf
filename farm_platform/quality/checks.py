"""Dagster side of the data-quality checks: check specs and per-partition evaluations.

The assets call `record()` after writing their rows: it logs one `AssetCheckEvaluation` per
partition and check (like `drone_images`' `readable` check: `AssetCheckResult` cannot carry a
partition in a run over a partition range) and writes the same outcomes to the
`partition_quality` table, which dbt reads to hold back failing partitions. A check that
fails, or that cannot run, never fails the run: it is reported, and a check that could not
run counts as failed so that nothing unchecked reaches the reports.
"""

from __future__ import annotations

import datetime as dt
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    MetadataValue,
)

from farm_platform.layout import ImageKey
from farm_platform.partitions import image_partition_key, image_partitions
from farm_platform.quality.run import (
    ERROR,
    GRADES_VALID,
    IMAGE_QUALITY,
    LEAF_CROPS_VALID,
    LEAVES_VANISHED,
    SEVERITY_JUMP,
    CheckResult,
    Partition,
    PartitionOutcome,
)

_SEVERITY = {"ERROR": AssetCheckSeverity.ERROR, "WARN": AssetCheckSeverity.WARN}


def image_quality_spec(asset: AssetKey) -> AssetCheckSpec:
    return AssetCheckSpec(
        IMAGE_QUALITY,
        asset=asset,
        partitions_def=image_partitions,
        description="Great Expectations suite `drone_images`: the object exists, decodes as an "
        "image, width/height/bytes within bounds.",
    )


def leaf_crops_specs(asset: AssetKey) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            LEAF_CROPS_VALID,
            asset=asset,
            partitions_def=image_partitions,
            blocking=True,
            description="Great Expectations suites `leaf_crops` + `leaf_counts`: 0–20 leaves, "
            "boxes inside the image, scores in [0, 1], crop objects exist, model id/version "
            "present. BLOCKING: a failing partition's grades are held back from dbt and reports.",
        ),
        AssetCheckSpec(
            LEAVES_VANISHED,
            asset=asset,
            partitions_def=image_partitions,
            description="WARNING: the position had leaves yesterday and none today.",
        ),
    ]


def grades_specs(asset: AssetKey) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            GRADES_VALID,
            asset=asset,
            partitions_def=image_partitions,
            blocking=True,
            description="Great Expectations suites `disease_<k>_grades` + `grade_counts`: one "
            "row per crop, grade within the model card's scale, confidence in [0, 1], keys not "
            "null and unique, model versions = the registry's active ones. BLOCKING: a failing "
            "partition is held back from dbt and reports (dbt model held_back_partitions).",
        ),
        AssetCheckSpec(
            SEVERITY_JUMP,
            asset=asset,
            partitions_def=image_partitions,
            description="WARNING: the position's mean grade moved more than the bound "
            "(FARM_MAX_SEVERITY_JUMP) since yesterday.",
        ),
    ]


def run_check(
    run: Callable[[], CheckResult],
    asset: str,
    check_name: str,
    severity: str,
    partitions: Sequence[Partition],
    log: Any,
) -> CheckResult:
    """`run()`, or — when the check itself breaks — a failed result naming the error."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - a broken check must not fail the run
        log.error(f"check {asset}/{check_name} could not run: {traceback.format_exc()}")
        error = f"check could not run: {type(exc).__name__}: {exc}"
        return CheckResult(
            asset=asset,
            check_name=check_name,
            severity=severity,
            outcomes={
                p: PartitionOutcome(
                    passed=False, failed=("check_error",), observed={"error": [error]}
                )
                for p in partitions
            },
        )


def record(context: Any, warehouse: Any, results: Sequence[CheckResult]) -> None:
    """Log every partition's evaluation and store the outcomes in `partition_quality`."""
    checked_at = dt.datetime.now(dt.UTC)
    run_id = context.run.run_id
    for result in results:
        for partition, outcome in sorted(result.outcomes.items()):
            position_id, date = partition
            context.log_event(
                AssetCheckEvaluation(
                    asset_key=AssetKey(result.asset),
                    check_name=result.check_name,
                    passed=outcome.passed,
                    partition=str(image_partition_key(ImageKey(position_id, date))),
                    severity=_SEVERITY[result.severity],
                    metadata={
                        "failed_expectations": MetadataValue.json(list(outcome.failed)),
                        "observed": MetadataValue.json(outcome.observed),
                        "severity": result.severity,
                    },
                )
            )
        failed = result.failed_partitions()
        if failed:
            message = (
                f"{result.asset}/{result.check_name} ({result.severity}) failed on "
                f"{len(failed)} partition(s), e.g. "
                + ", ".join(
                    f"{p} {d}: {', '.join(result.outcomes[(p, d)].failed)}" for p, d in failed[:5]
                )
            )
            (context.log.error if result.severity == ERROR else context.log.warning)(message)
    try:
        import polars as pl

        frames = [result.quality_rows(checked_at, run_id) for result in results]
        if frames:
            warehouse.replace_rows("partition_quality", pl.concat(frames))
    except Exception:  # noqa: BLE001
        context.log.error(f"could not store partition_quality rows: {traceback.format_exc()}")
        raise
