"""The farm_platform code location: every asset, sensor and resource, built in one place."""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar, in_process_executor

from farm_platform import config
from farm_platform.config import DEFAULT_FIELD_MAP_PATH
from farm_platform.config_values import env_number, sensor_interval_seconds
from farm_platform.images.checks import partition_quality_spec
from farm_platform.images.pipeline import build_image_pipeline
from farm_platform.images.registered_models import registered_models
from farm_platform.images.sensors import build_sensors
from farm_platform.resources import (
    BucketResource,
    FieldMapResource,
    ModelRegistryResource,
    PubSubResource,
    WarehouseResource,
)
from farm_platform.resources.environment import environment_fields
from farm_platform.resources.inference import InferenceResource
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform.resources.trial_calendar import TrialCalendarResource


def _optional_env(name: str, default: str) -> str | EnvVar:
    return EnvVar(name) if os.environ.get(name) else default


config.require_for_location(
    config.IMAGE_LOCATION, (config.FARM_BUCKET, config.FARM_WAREHOUSE, config.FARM_GCP_PROJECT)
)
config.bucket_url(os.environ[config.FARM_BUCKET])
# The trial's calendar (FARM_TRIAL_START_DATE, FARM_TRIAL_TIMEZONE), read once here: the
# partitions and the sensor's tick use the same values.
trial_calendar = TrialCalendarResource.from_environment()
days = trial_calendar.calendar().day_partitions()

defs = Definitions(
    assets=[registered_models, build_image_pipeline(days), partition_quality_spec(days)],
    sensors=build_sensors(sensor_interval_seconds()),
    resources={
        "bucket": BucketResource(url=EnvVar(config.FARM_BUCKET)),
        "warehouse": WarehouseResource(
            url=EnvVar(config.FARM_WAREHOUSE),
            lock_timeout_seconds=env_number(
                config.FARM_WAREHOUSE_LOCK_SECONDS, config.DEFAULT_WAREHOUSE_LOCK_SECONDS
            ),
        ),
        "pubsub": PubSubResource(
            project=EnvVar(config.FARM_GCP_PROJECT),
            subscription=_optional_env(config.FARM_SUBSCRIPTION, config.DEFAULT_SUBSCRIPTION),
        ),
        "models": ModelRegistryResource(**environment_fields(ModelRegistryResource)),
        "field_map": FieldMapResource(
            path=_optional_env(config.FARM_FIELD_MAP, str(DEFAULT_FIELD_MAP_PATH))
        ),
        # Every other runtime setting of this location: the variables that are set fill
        # their fields (text as EnvVar, numbers read now), the rest keep the defaults.
        "inference": InferenceResource(**environment_fields(InferenceResource)),
        "ingest_policy": IngestPolicyResource(**environment_fields(IngestPolicyResource)),
        "trial_calendar": trial_calendar,
    },
    # A run is one op: no step process (and torch import) per step.
    executor=in_process_executor,
)
