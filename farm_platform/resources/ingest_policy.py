"""How the ingest sensors batch photos into runs and retry them, and the image runs'
per-run defaults, as a Dagster resource (docs/ingest.md, "The sensor").

The definitions fill its fields from FARM_RUN_MAX_PHOTOS, FARM_GRADE_WITHIN_SECONDS,
FARM_BATCH_MAX_WAIT_SECONDS, FARM_SENSOR_INTERVAL_SECONDS,
FARM_BATCH_QUIET_SECONDS, FARM_RUN_TIMEOUT_SECONDS, FARM_MAX_PHOTO_ATTEMPTS,
FARM_RETRY_BACKOFF_SECONDS, FARM_RETRY_BUDGET_SECONDS, FARM_RUN_K8S_CONFIG,
FARM_RUN_CHUNK_PHOTOS and FARM_MAX_SEVERITY_JUMP; `IngestSettings.from_policy`,
`RetryPolicy.from_policy`, `images.run_tags` and `PhotoRunConfig` read them.
"""

from __future__ import annotations

from typing import ClassVar

from dagster import ConfigurableResource
from pydantic import Field

from farm_platform import config
from farm_platform.config_values import positive_number
from farm_platform.resources.environment import environment_fields


class IngestPolicyResource(ConfigurableResource):
    """Run size, batch waits, run timeout, retries and the image runs' Kubernetes settings."""

    VARIABLES: ClassVar[dict[str, str]] = {
        "run_max_photos": config.FARM_RUN_MAX_PHOTOS,
        "grade_within_seconds": config.FARM_GRADE_WITHIN_SECONDS,
        "batch_max_wait_seconds": config.FARM_BATCH_MAX_WAIT_SECONDS,
        "sensor_interval_seconds": config.FARM_SENSOR_INTERVAL_SECONDS,
        "batch_quiet_seconds": config.FARM_BATCH_QUIET_SECONDS,
        "run_timeout_seconds": config.FARM_RUN_TIMEOUT_SECONDS,
        "max_photo_attempts": config.FARM_MAX_PHOTO_ATTEMPTS,
        "retry_backoff_seconds": config.FARM_RETRY_BACKOFF_SECONDS,
        "retry_budget_seconds": config.FARM_RETRY_BUDGET_SECONDS,
        "run_k8s_config": config.FARM_RUN_K8S_CONFIG,
        "run_chunk_photos": config.FARM_RUN_CHUNK_PHOTOS,
        "max_severity_jump": config.FARM_MAX_SEVERITY_JUMP,
    }

    run_max_photos: int = Field(
        default=config.DEFAULT_RUN_MAX_PHOTOS, description="photos of one day that start a run"
    )
    grade_within_seconds: float = Field(
        default=config.DEFAULT_GRADE_WITHIN_SECONDS,
        description="a photo's latency budget: a busy day's run grows until its oldest "
        "waiting photo nears it",
    )
    batch_max_wait_seconds: float = Field(
        default=0.0,
        description="an upper bound on the wait the budget gives; 0: none",
    )
    sensor_interval_seconds: float = Field(
        default=config.DEFAULT_SENSOR_INTERVAL_SECONDS,
        description="the ingest sensor's interval: the next tick may come this much later",
    )
    batch_quiet_seconds: float = Field(
        default=config.DEFAULT_BATCH_QUIET_SECONDS,
        description="... or once nothing was announced for its day in this long",
    )
    run_timeout_seconds: float = Field(
        default=config.DEFAULT_RUN_TIMEOUT_SECONDS,
        description="a sensor run's limit (plus half a second per photo)",
    )
    max_photo_attempts: int = Field(
        default=config.DEFAULT_MAX_PHOTO_ATTEMPTS,
        description="runs a photo gets before it is dead-lettered",
    )
    retry_backoff_seconds: float = Field(
        default=config.DEFAULT_RETRY_BACKOFF_SECONDS,
        description="wait before a failed photo's second run (each later one 4x longer)",
    )
    retry_budget_seconds: float = Field(
        default=config.DEFAULT_RETRY_BUDGET_SECONDS,
        description="no retry starts later than this after a photo's first failed run",
    )
    run_k8s_config: str = Field(
        default="", description="JSON dagster-k8s/config of the image runs' pods; empty: none"
    )

    # The image runs' defaults for their per-run knobs (PhotoRunConfig): the sensor writes
    # them into each run's config, a run launched with neither set falls back to them.
    run_chunk_photos: int = Field(
        default=config.DEFAULT_RUN_CHUNK_PHOTOS,
        description="photos a run reads, decodes, grades and writes at a time",
    )
    max_severity_jump: float = Field(
        default=config.DEFAULT_MAX_SEVERITY_JUMP,
        description="severity_jump check: largest daily move of a position's mean grade",
    )

    def number(self, field: str) -> float:
        """A numeric field, checked: ConfigError names its variable."""
        name = self.VARIABLES[field]
        return positive_number(name, getattr(self, field), type(self).model_fields[field].default)

    def batch_wait_seconds(self) -> float:
        """How long a busy day's oldest waiting photo waits for its run to grow: the latency
        budget less one sensor interval (the tick after the one that finds it under the
        budget comes that much later), then its run grades it; at most
        batch_max_wait_seconds when that is set."""
        wait = max(
            0.0, self.number("grade_within_seconds") - self.number("sensor_interval_seconds")
        )
        if self.batch_max_wait_seconds:
            wait = min(wait, self.number("batch_max_wait_seconds"))
        return wait

    def run_timeout(self, photos: int) -> int:
        """A sensor run's `dagster/max_runtime` for `photos` photos."""
        base = self.number("run_timeout_seconds")
        return int(base + config.RUN_TIMEOUT_SECONDS_PER_PHOTO * photos)

    @classmethod
    def from_environment(cls) -> IngestPolicyResource:
        """The resource as the environment sets it (for commands outside Dagster)."""
        return cls(**environment_fields(cls, env_vars=False))
