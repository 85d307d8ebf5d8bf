"""Tags of the image runs (sensor and backfill alike): their Celery queue, and their
Kubernetes pod settings from `FARM_RUN_K8S_CONFIG`.

Only image runs carry them: they decode and grade photos, so they are the runs that need a
GPU node and many cores; the daily report's runs stay on the launcher's small default pod.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from farm_platform import config

# How many photos a run was handed (benchmarks and tests count runs by it).
PHOTOS_TAG = "farm/photos"
SENSOR_NAME_TAG = "dagster/sensor_name"
# Dagster's tag on a re-execution (UI "Re-execute"), which copies its parent's photo list.
PARENT_RUN_TAG = "dagster/parent_run_id"
DRONE_IMAGE_SENSOR = "drone_image_sensor"

# dagster-k8s's K8sRunLauncher merges this tag's JSON into the run's Job (container
# resources, node selector, tolerations): dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY.
K8S_CONFIG_TAG = "dagster-k8s/config"
# The run coordinator limits runs with this tag (deploy/helm/values.yaml): as many GPU runs
# at once as the GPU node pool has GPUs, however many days are queued.
DEVICE_TAG = "farm/device"
# Dagster's CeleryRunLauncher sends a run to the queue its tag names (the production
# topology's workers listen on one each); untagged runs go to the launcher's default queue.
CELERY_QUEUE_TAG = "dagster-celery/queue"
IMAGES_QUEUE = "images"
ANALYTICS_QUEUE = "analytics"


def image_run_tags() -> dict[str, str]:
    """Every tag an image run carries for its launcher: the Celery queue, and the
    Kubernetes ones (`image_run_k8s_tags`)."""
    return {CELERY_QUEUE_TAG: IMAGES_QUEUE, **image_run_k8s_tags()}


def image_run_k8s_tags() -> dict[str, str]:
    """The `dagster-k8s/config` tag (and `farm/device: gpu` when it asks for a GPU), or {}
    when `FARM_RUN_K8S_CONFIG` is unset. Raises ConfigError naming the variable."""
    k8s_config = config.run_k8s_config()
    if not k8s_config:
        return {}
    tags = {K8S_CONFIG_TAG: json.dumps(k8s_config, sort_keys=True)}
    if config.requests_gpu(k8s_config):
        tags[DEVICE_TAG] = "gpu"
    return tags


def grades_claimed_photos(tags: Mapping[str, str]) -> bool:
    """Whether a run grades photos the arrival queue claimed for it alone: a run the drone
    image sensor requested, not a re-execution of one (whose photos may have been requeued
    and claimed again). Such runs share their day's grading lock; every other run of a day
    (UI, backfill, re-execution) takes it exclusively."""
    return (
        tags.get(SENSOR_NAME_TAG) == DRONE_IMAGE_SENSOR
        and PHOTOS_TAG in tags
        and PARENT_RUN_TAG not in tags
    )
