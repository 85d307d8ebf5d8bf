"""`leaf_crops` and `disease_<k>_grades`: detector and graders over a batch of images.

One op computes all six assets because they share the expensive part (reading and
decoding the photos); it is subsettable, so a single grade asset can be re-materialized
alone (a new grader version re-grades the stored crops without re-running the detector).
torch is imported inside the op: loading the code location must not pay for it.
"""

import datetime as dt
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
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.models import ModelRegistryResource
from farm_platform.resources.warehouse import LEAF_CROPS_TABLE, WarehouseResource

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


@multi_asset(
    specs=INFERENCE_SPECS,
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

    if LEAF_CROPS in context.selected_asset_keys:
        detector = inference.load_detector(detector_card, registry)
        crop_rows, crops = inference.crop_leaves(images, detector, detector_card, bucket.root)
        inference.write_crops(crop_rows, crops, bucket.filesystem)
        warehouse.replace_rows(
            "leaf_crops",
            crop_rows,
            scopes=_scopes(readable_keys, detector_card.id, detector_card.version),
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
        scopes = _scopes(readable_keys, detector_card.id, detector_card.version).with_columns(
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
