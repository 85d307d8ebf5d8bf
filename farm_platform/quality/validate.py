"""The one entry to the data-quality checks: every check over one batch of photos.

The image pipeline calls `validate_photos` on the day it just graded, and the quality gate
(`farm-platform check`) calls it on a simulated farm it corrupted on purpose, so the gate
proves exactly what the assets run. What differs between the two is only where the facts
come from (the run's rows, or a warehouse snapshot), which `PhotoBatch` hides.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl

from farm_platform.quality import expectations as checks
from farm_platform.quality.expectations import CheckResult, Partition, PartitionOutcome


@dataclass(frozen=True)
class GraderBatch:
    """One disease's grades in the batch, and the history its jump check compares with."""

    disease_type: str
    grader: tuple[str, str]  # model id, version
    scale: tuple[int, ...]  # the model card's grades
    rows: Callable[[], pl.DataFrame]  # disease_grades rows of the batch
    mean_grades: Callable[[], pl.DataFrame]  # position_id, date, mean_grade; the day before too


@dataclass(frozen=True)
class PhotoBatch:
    """What the checks of a batch of photos look at.

    `photos` are the batch's readable photos, the ones crops and grades are checked for.
    `images` are drone_images rows plus `exists` (None: the batch did not record images,
    so no image check). Crop and grade facts are callables so that a query that breaks
    fails its own check, never the caller.
    """

    photos: Sequence[Partition]
    cropper: tuple[str, str]
    images: pl.DataFrame | None = None
    crops: Callable[[], pl.DataFrame] = pl.DataFrame  # leaf_crops rows the grades refer to
    # False: the batch did not detect leaves (a grades-only run), so no crop checks.
    check_crops: bool = True
    crop_exists: Callable[[Sequence[str]], list[bool]] = lambda uris: [True] * len(uris)
    leaf_counts: Callable[[], pl.DataFrame] | None = None  # position_id, date, leaves
    graders: Sequence[GraderBatch] = field(default_factory=tuple)


def validate_photos(
    batch: PhotoBatch, max_jump: float, log_error: Callable[[str], None]
) -> list[CheckResult]:
    """Every selected check over the batch; a check that cannot run fails its photos."""
    partitions = sorted(batch.photos)
    images = batch.images if batch.images is not None else pl.DataFrame()
    sizes = (
        images.filter(pl.col("error").is_null()).select(
            "position_id", "date", pl.col("width", "height").cast(pl.Int64)
        )
        if images.height
        else pl.DataFrame(
            schema={
                "position_id": pl.String,
                "date": pl.Date,
                "width": pl.Int64,
                "height": pl.Int64,
            }
        )
    )
    results: list[CheckResult] = []
    if batch.images is not None:
        results.append(checks.check_drone_images(batch.images))
    if batch.check_crops:
        crops, leaf_counts = batch.crops, batch.leaf_counts
        assert leaf_counts is not None, "crop checks need the leaf counts"
        results += [
            run_check(
                lambda: checks.check_leaf_crops(crops(), sizes, partitions, batch.crop_exists),
                "leaf_crops",
                checks.LEAF_CROPS_VALID,
                checks.ERROR,
                partitions,
                log_error,
            ),
            run_check(
                lambda: checks.check_leaves_vanished(leaf_counts(), partitions),
                "leaf_crops",
                checks.LEAVES_VANISHED,
                checks.WARN,
                partitions,
                log_error,
            ),
        ]
    for grader in batch.graders:
        results += _grade_checks(batch, grader, partitions, max_jump, log_error)
    return results


def _grade_checks(
    batch: PhotoBatch,
    grader: GraderBatch,
    partitions: list[Partition],
    max_jump: float,
    log_error: Callable[[str], None],
) -> list[CheckResult]:
    asset = f"{grader.disease_type}_grades"
    crops = batch.crops
    return [
        run_check(
            lambda: checks.check_disease_grades(
                grader.disease_type,
                grader.rows(),
                crops(),
                partitions,
                grader.scale,
                grader.grader,
                batch.cropper,
            ),
            asset,
            checks.GRADES_VALID,
            checks.ERROR,
            partitions,
            log_error,
        ),
        run_check(
            lambda: checks.check_severity_jump(
                grader.disease_type, grader.mean_grades(), partitions, max_jump
            ),
            asset,
            checks.SEVERITY_JUMP,
            checks.WARN,
            partitions,
            log_error,
        ),
    ]


def run_check(
    run: Callable[[], CheckResult],
    asset: str,
    check_name: str,
    severity: str,
    partitions: Sequence[Partition],
    log_error: Callable[[str], None],
) -> CheckResult:
    """`run()`, or — when the check itself breaks — a failed result naming the error.

    With no photo to check, a check passes over nothing (and its result says so)."""
    if not partitions:
        return CheckResult(asset=asset, check_name=check_name, severity=severity, outcomes={})
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - a broken check must not fail the run
        log_error(f"check {asset}/{check_name} could not run: {traceback.format_exc()}")
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
