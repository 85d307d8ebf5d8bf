"""Tags of the image runs (sensor and backfill alike): their Celery queue, and their
Kubernetes pod settings from `FARM_RUN_K8S_CONFIG` (the `ingest_policy` resource's
`run_k8s_config`; `farm-platform backfill` reads the variable).

Only image runs carry them: they decode and grade photos, so they are the runs that need a
GPU node and many cores; the daily report's runs stay on the launcher's small default pod.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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

# The keys dagster-k8s accepts in that tag (its USER_DEFINED_K8S_JOB_CONFIG_SCHEMA; a test
# compares the two). Checked here so that a typo fails the sensor's tick with the variable's
# name, not every run at launch with dagster-k8s's config error.
RUN_K8S_CONFIG_KEYS = (
    "container_config",
    "pod_template_spec_metadata",
    "pod_spec_config",
    "job_config",
    "job_metadata",
    "job_spec_config",
    "merge_behavior",
)


def image_run_tags(k8s_config: str | None) -> dict[str, str]:
    """Every tag an image run carries for its launcher: the Celery queue, and the
    Kubernetes ones (`image_run_k8s_tags`) from `FARM_RUN_K8S_CONFIG`'s text."""
    return {CELERY_QUEUE_TAG: IMAGES_QUEUE, **image_run_k8s_tags(k8s_config)}


def image_run_k8s_tags(raw: str | None) -> dict[str, str]:
    """The `dagster-k8s/config` tag (and `farm/device: gpu` when it asks for a GPU), or {}
    when `FARM_RUN_K8S_CONFIG` (`raw`) is unset. Raises ConfigError naming the variable."""
    k8s_config = run_k8s_config(raw)
    if not k8s_config:
        return {}
    tags = {K8S_CONFIG_TAG: json.dumps(k8s_config, sort_keys=True)}
    if requests_gpu(k8s_config):
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


def run_k8s_config(raw: str | None) -> dict[str, Any]:
    """`FARM_RUN_K8S_CONFIG`'s text as a dict ({} when unset): the image runs'
    `dagster-k8s/config` (the `ingest_policy` resource carries the text)."""
    if raw is None or raw.strip() == "":
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise config.ConfigError(
            f"{config.FARM_RUN_K8S_CONFIG} is not valid JSON ({error})"
        ) from None
    if not isinstance(value, dict):
        raise config.ConfigError(
            f"{config.FARM_RUN_K8S_CONFIG} must be a JSON object such as "
            '{"container_config": {...}, "pod_spec_config": {...}}, not '
            f"{type(value).__name__}"
        )
    unknown = sorted(set(value) - set(RUN_K8S_CONFIG_KEYS))
    if unknown:
        raise config.ConfigError(
            f"{config.FARM_RUN_K8S_CONFIG} has unknown key(s) {', '.join(unknown)}: use "
            f"{', '.join(RUN_K8S_CONFIG_KEYS)}"
        )
    return value


def requests_gpu(k8s_config: Mapping[str, Any]) -> bool:
    """Whether a `dagster-k8s/config` asks its container for a GPU (a `*/gpu` limit above 0:
    Kubernetes schedules GPUs by limit only)."""
    container = k8s_config.get("container_config") or {}
    limits = (container.get("resources") or {}).get("limits") or {}
    for name, amount in limits.items():
        if str(name).endswith("/gpu"):
            try:
                if float(amount) > 0:
                    return True
            except (TypeError, ValueError):
                raise config.ConfigError(
                    f"{config.FARM_RUN_K8S_CONFIG}: {name}={amount!r} is not a number of GPUs"
                ) from None
    return False
