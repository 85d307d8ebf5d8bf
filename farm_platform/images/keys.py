"""Asset keys of the image pipeline, shared by assets, sensors and the CLI."""

from __future__ import annotations

from dagster import AssetKey

from farm_platform.ml.registry import DETECTOR_MODEL_ID, DISEASE_TYPES, grader_model_id

DRONE_IMAGES = AssetKey("drone_images")
LEAF_CROPS = AssetKey("leaf_crops")
GRADES_BY_DISEASE = {disease: AssetKey(f"{disease}_grades") for disease in DISEASE_TYPES}
DISEASE_BY_GRADES = {key: disease for disease, key in GRADES_BY_DISEASE.items()}

# Model assets, named after the registry's model ids.
MODEL_ASSETS = {
    DETECTOR_MODEL_ID: AssetKey("leaf_detector_model"),
    **{grader_model_id(disease): AssetKey(f"{disease}_model") for disease in DISEASE_TYPES},
}

# What a batch of newly arrived images needs: ingest, crop and grade.
IMAGE_PIPELINE = (DRONE_IMAGES, LEAF_CROPS, *GRADES_BY_DISEASE.values())
# The per-photo check outcomes the pipeline's checks write (dbt holds failing photos back).
PARTITION_QUALITY = AssetKey("partition_quality")
