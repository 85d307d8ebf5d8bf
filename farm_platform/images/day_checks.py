"""The checks an image run makes over its day: the data-quality suites (defined with Great
Expectations, evaluated compiled) over the day's photos (stored in partition_quality) and
the models' drift checks."""

import time
from collections.abc import Sequence
from typing import Any

from dagster import AssetCheckResult, AssetExecutionContext, AssetKey, AssetMaterialization

from farm_platform.grading.chunks import DayResult, GradingPlan
from farm_platform.images import checks
from farm_platform.images.keys import GRADES_BY_DISEASE, LEAF_CROPS, PARTITION_QUALITY
from farm_platform.quality import history
from farm_platform.quality.validate import GraderBatch, PhotoBatch, validate_photos
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.warehouse import WarehouseResource


def check_day(
    context: AssetExecutionContext,
    day: DayResult,
    plan: GradingPlan,
    bucket: BucketResource,
    warehouse: WarehouseResource,
    max_severity_jump: float,
) -> dict[AssetKey, list[AssetCheckResult]]:
    """Every selected asset's checks over the day's photos, stored in partition_quality."""
    import polars as pl

    started = time.perf_counter()
    date = plan.date
    cropper = (plan.detector_card.id, plan.detector_card.version)
    # Crops this run wrote exist (the write returned); others are asked of the bucket.
    listed = history.crop_exists_checker(bucket.filesystem)

    def crop_exists(uris: Sequence[str]) -> list[bool]:
        unknown = [uri for uri in uris if uri not in day.written_crop_uris]
        found = dict(zip(unknown, listed(unknown), strict=True)) if unknown else {}
        return [uri in day.written_crop_uris or found[uri] for uri in uris]

    def grader_batch(card: Any) -> GraderBatch:
        grader = (card.id, card.version)
        return GraderBatch(
            disease_type=card.disease_type,
            grader=grader,
            scale=tuple(card.grades or ()),
            rows=lambda: day.grade_rows(card.disease_type),
            mean_grades=lambda: history.mean_grades(
                warehouse, card.disease_type, grader, cropper, date, date
            ),
        )

    exists = pl.Series("exists", [photo.exists for photo in day.photos], dtype=pl.Boolean())
    batch = PhotoBatch(
        photos=[(key.position_id, key.date) for key in day.readable_keys],
        cropper=cropper,
        images=day.image_rows().with_columns(exists) if plan.record_images else None,
        crops=day.crop_rows,
        check_crops=plan.detect,
        crop_exists=crop_exists,
        leaf_counts=lambda: history.leaf_counts(warehouse, cropper, date, date),
        graders=[grader_batch(card) for card in plan.grader_cards],
    )
    results = validate_photos(batch, max_severity_jump, context.log.error)
    by_asset = checks.record(context.log, warehouse, results, context.run.run_id)
    context.log_event(
        AssetMaterialization(
            PARTITION_QUALITY,
            partition=context.partition_key,
            metadata={
                "rows": sum(len(result.outcomes) for result in results),
                "failed": sum(len(result.failed_partitions()) for result in results),
            },
        )
    )
    day.clock.add("checks", started)
    return by_asset


def add_drift_checks(
    context: AssetExecutionContext,
    results: dict[AssetKey, list[AssetCheckResult]],
    plan: GradingPlan,
    warehouse: WarehouseResource,
) -> None:
    """The selected drift checks of the day (checks.drift_checks) added to `results`."""
    started = time.perf_counter()
    selected = {(key.asset_key, key.name) for key in context.selected_asset_check_keys}
    graders = {
        GRADES_BY_DISEASE[card.disease_type]: card
        for card in plan.grader_cards
        if (GRADES_BY_DISEASE[card.disease_type], checks.GRADER_DRIFT) in selected
    }
    detect = plan.detect and (LEAF_CROPS, checks.DETECTOR_DRIFT) in selected
    found = checks.drift_checks(
        context.log, warehouse, plan.date, plan.detector_card, graders, detect, context.run.run_id
    )
    for asset, drift_results in found.items():
        results.setdefault(asset, []).extend(drift_results)
    day_clock_note = time.perf_counter() - started
    context.log.debug(f"drift checks took {day_clock_note:.2f} s")
