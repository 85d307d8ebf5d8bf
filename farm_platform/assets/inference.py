"""`leaf_crops` and `disease_<k>_grades`: detector and graders over a batch of images.

One op computes all six assets because they share the expensive part (reading and
decoding the photos); it is subsettable, so a single grade asset can be re-materialized
alone (a new grader version re-grades the stored crops without re-running the detector).
torch is imported inside the op: loading the code location must not pay for it.
"""

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from typing import Any

import polars as pl
from dagster import AssetExecutionContext, AssetSpec, MaterializeResult, MetadataValue, multi_asset

from farm_platform.assets.images import IMAGE_BACKFILL_POLICY
from farm_platform.assets.keys import (
    DETECTOR_MODEL_ID,
    DISEASE_BY_GRADES,
    DRONE_IMAGES,
    GRADES_BY_DISEASE,
    LEAF_CROPS,
    MODEL_ASSETS,
)
from farm_platform.layout import ImageKey
from farm_platform.partitions import image_key, image_partitions
from farm_platform.quality import checks, history
from farm_platform.quality import run as quality
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.models import ModelRegistryResource
from farm_platform.resources.warehouse import LEAF_CROPS_TABLE, WarehouseResource

# Bound of the day-to-day change of a position's mean grade before `severity_jump` warns.
FARM_MAX_SEVERITY_JUMP = "FARM_MAX_SEVERITY_JUMP"

INFERENCE_SPECS = [
    AssetSpec(
        LEAF_CROPS,
        deps=[DRONE_IMAGES, MODEL_ASSETS[DETECTOR_MODEL_ID]],
        group_name="inference",
        kinds={"pytorch", "duckdb"},
        description="Leaves found by the detector: boxes, scores and crop PNGs in the bucket.",
    ),
    *[
        AssetSpec(
            grades_key,
            deps=[LEAF_CROPS, MODEL_ASSETS[f"{disease}_grader"]],
            group_name="inference",
            kinds={"pytorch", "duckdb"},
            description=f"Severity grade of {disease} for every leaf crop (disease_grades table).",
        )
        for disease, grades_key in GRADES_BY_DISEASE.items()
    ],
]


INFERENCE_CHECK_SPECS = [
    *checks.leaf_crops_specs(LEAF_CROPS),
    *[spec for key in GRADES_BY_DISEASE.values() for spec in checks.grades_specs(key)],
]


@multi_asset(
    specs=INFERENCE_SPECS,
    check_specs=INFERENCE_CHECK_SPECS,
    partitions_def=image_partitions,
    backfill_policy=IMAGE_BACKFILL_POLICY,
    can_subset=True,
    name="grade_leaves",
)
def grade_leaves(
    context: AssetExecutionContext,
    bucket: BucketResource,
    warehouse: WarehouseResource,
    models: ModelRegistryResource,
) -> Iterator[MaterializeResult]:
    from farm_platform.ml import inference

    registry = models.registry()
    detector_card = registry.detector()
    keys = [image_key(partition_key) for partition_key in context.partition_keys]
    images, unreadable = _decode_images(bucket, keys, inference)
    for key, error in unreadable.items():
        context.log.warning(f"skipping {key.position_id} {key.date_str}: {error}")
    readable_keys = [key for key, _ in images]
    partitions = [(key.position_id, key.date) for key in readable_keys]
    cropper = (detector_card.id, detector_card.version)
    # The (photo, cropper) scopes whose leaf_crops and disease_grades rows this run replaces.
    crop_scopes = _scopes(readable_keys, detector_card.id, detector_card.version)

    if LEAF_CROPS in context.selected_asset_keys:
        detector = inference.load_detector(detector_card, registry)
        crop_rows, crops = inference.crop_leaves(images, detector, detector_card, bucket.root)
        inference.write_crops(crop_rows, crops, bucket.filesystem)
        warehouse.replace_rows(
            "leaf_crops",
            crop_rows,
            scopes=crop_scopes,
        )
        yield MaterializeResult(
            asset_key=LEAF_CROPS,
            metadata={
                **_batch_metadata(keys, unreadable),
                "leaves": crop_rows.height,
                "cropper_model_id": detector_card.id,
                "cropper_model_version": detector_card.version,
            },
        )
        checks.record(
            context,
            warehouse,
            _leaf_crop_checks(context, warehouse, bucket, images, crop_rows, partitions, cropper),
        )
    else:
        crop_rows, crops = _stored_crops(warehouse, images, detector_card, inference)

    graded_at = dt.datetime.now(dt.UTC)
    prepared_by_size: dict[tuple[int, int], Any] = {}
    for grades_key in sorted(context.selected_asset_keys - {LEAF_CROPS}):
        disease = DISEASE_BY_GRADES[grades_key]
        card = registry.grader_for(disease)
        size = (card.input_size[0], card.input_size[1])
        if size not in prepared_by_size:
            # Resize once for every grader that shares an input size.
            prepared_by_size[size] = inference.prepare_crops(crops, size)
        grades = inference.grade_crops(
            prepared_by_size[size], crop_rows, inference.load_grader(card, registry), card
        ).with_columns(
            graded_at=pl.lit(graded_at, dtype=pl.Datetime("us", "UTC")),
            dagster_run_id=pl.lit(context.run.run_id),
        )
        scopes = crop_scopes.with_columns(
            disease_type=pl.lit(disease),
            disease_model_id=pl.lit(card.id),
            disease_model_version=pl.lit(card.version),
        )
        warehouse.replace_rows("disease_grades", grades, scopes=scopes)
        yield MaterializeResult(
            asset_key=grades_key,
            metadata={
                **_batch_metadata(keys, unreadable),
                "rows": grades.height,
                "mean_grade": float(grades["predicted_grade"].mean() or 0.0),
                "disease_model_id": card.id,
                "disease_model_version": card.version,
                "cropper_model_id": detector_card.id,
                "cropper_model_version": detector_card.version,
            },
        )
        checks.record(
            context,
            warehouse,
            _grade_checks(
                context, warehouse, disease, grades, crop_rows, partitions, card, cropper
            ),
        )


def _leaf_crop_checks(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    bucket: BucketResource,
    images: Sequence[tuple[ImageKey, Any]],
    crop_rows: pl.DataFrame,
    partitions: list[quality.Partition],
    cropper: tuple[str, str],
) -> list[quality.CheckResult]:
    if not partitions:
        return []
    sizes = pl.DataFrame(
        {
            "position_id": [key.position_id for key, _ in images],
            "date": [key.date for key, _ in images],
            "width": [int(array.shape[1]) for _, array in images],
            "height": [int(array.shape[0]) for _, array in images],
        },
        schema={
            "position_id": pl.String(),
            "date": pl.Date(),
            "width": pl.Int64(),
            "height": pl.Int64(),
        },
    )
    dates = [date for _, date in partitions]
    return [
        checks.run_check(
            lambda: quality.check_leaf_crops(
                crop_rows, sizes, partitions, history.crop_exists_checker(bucket.filesystem)
            ),
            "leaf_crops",
            quality.LEAF_CROPS_VALID,
            quality.ERROR,
            partitions,
            context.log,
        ),
        checks.run_check(
            lambda: quality.check_leaves_vanished(
                history.leaf_counts(warehouse, cropper, min(dates), max(dates)), partitions
            ),
            "leaf_crops",
            quality.LEAVES_VANISHED,
            quality.WARN,
            partitions,
            context.log,
        ),
    ]


def _grade_checks(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    disease: str,
    grades: pl.DataFrame,
    crop_rows: pl.DataFrame,
    partitions: list[quality.Partition],
    card: Any,
    cropper: tuple[str, str],
) -> list[quality.CheckResult]:
    if not partitions:
        return []
    grader = (card.id, card.version)
    dates = [date for _, date in partitions]
    max_jump = float(
        os.environ.get(FARM_MAX_SEVERITY_JUMP, quality.suites.DEFAULT_MAX_SEVERITY_JUMP)
    )
    return [
        checks.run_check(
            lambda: quality.check_disease_grades(
                disease, grades, crop_rows, partitions, card.grades or (), grader, cropper
            ),
            f"{disease}_grades",
            quality.GRADES_VALID,
            quality.ERROR,
            partitions,
            context.log,
        ),
        checks.run_check(
            lambda: quality.check_severity_jump(
                disease,
                history.mean_grades(warehouse, disease, grader, cropper, min(dates), max(dates)),
                partitions,
                max_jump,
            ),
            f"{disease}_grades",
            quality.SEVERITY_JUMP,
            quality.WARN,
            partitions,
            context.log,
        ),
    ]


def _decode_images(
    bucket: BucketResource, keys: Sequence[ImageKey], inference: Any
) -> tuple[list[tuple[ImageKey, Any]], dict[ImageKey, str]]:
    """Read and decode the photos; unreadable ones are reported, never fatal to the batch."""
    payloads = bucket.read_many([bucket.image_uri(key) for key in keys])
    images, unreadable = [], {}
    for key, data in zip(keys, payloads, strict=True):
        if data is None:
            unreadable[key] = "object does not exist in the bucket"
            continue
        try:
            images.append((key, inference.decode_png(data)))
        except inference.ImageDecodeError as exc:
            unreadable[key] = str(exc)
    return images, unreadable


def _stored_crops(
    warehouse: WarehouseResource,
    images: Sequence[tuple[ImageKey, Any]],
    detector_card: Any,
    inference: Any,
) -> tuple[pl.DataFrame, list[Any]]:
    """Crops of the active detector's stored boxes, cut again from the decoded photos."""
    if not images:
        return pl.DataFrame(schema=LEAF_CROPS_TABLE.polars_schema), []
    dates = [key.date for key, _ in images]
    stored = warehouse.query(
        "SELECT * FROM leaf_crops WHERE cropper_model_id = %s AND cropper_model_version = %s"
        " AND date BETWEEN %s AND %s",
        [detector_card.id, detector_card.version, min(dates), max(dates)],
    )
    wanted = pl.DataFrame(
        {
            "position_id": [key.position_id for key, _ in images],
            "date": dates,
        }
    )
    if stored.is_empty():
        return pl.DataFrame(schema=LEAF_CROPS_TABLE.polars_schema), []
    rows = (
        stored.cast(LEAF_CROPS_TABLE.polars_schema)
        .join(wanted, on=["position_id", "date"], how="semi")
        .sort("position_id", "date", "leaf_crop_idx")
    )
    arrays = {key: array for key, array in images}
    crops = [
        inference.cut_crop(arrays[ImageKey(row["position_id"], row["date"])], box)
        for row, box in zip(
            rows.iter_rows(named=True), rows.select("x0", "y0", "x1", "y1").rows(), strict=True
        )
    ]
    return rows, crops


def _scopes(keys: Sequence[ImageKey], cropper_id: str, cropper_version: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "position_id": [key.position_id for key in keys],
            "date": [key.date for key in keys],
            "cropper_model_id": [cropper_id] * len(keys),
            "cropper_model_version": [cropper_version] * len(keys),
        },
        schema={
            "position_id": pl.String(),
            "date": pl.Date(),
            "cropper_model_id": pl.String(),
            "cropper_model_version": pl.String(),
        },
    )


def _batch_metadata(keys: Sequence[ImageKey], unreadable: dict[ImageKey, str]) -> dict[str, Any]:
    return {
        "images": len(keys),
        "unreadable": len(unreadable),
        "unreadable_examples": MetadataValue.json(
            [
                f"{key.position_id} {key.date_str}: {error}"
                for key, error in list(unreadable.items())[:20]
            ]
        ),
    }
