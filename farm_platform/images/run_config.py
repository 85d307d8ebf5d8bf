"""The image runs' run config: which photos of the day, and the per-run knobs the
launchpad shows (chunk size, severity-jump bound), with their fallback to the
`ingest_policy` resource. No torch, no polars: the sensors import it."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dagster import Config
from pydantic import Field

from farm_platform import config as farm_config
from farm_platform.config_values import positive_number
from farm_platform.ml.settings import InferenceSettings
from farm_platform.resources.ingest_policy import IngestPolicyResource

OP_NAME = "image_pipeline"


@dataclass(frozen=True)
class RunSettings:
    """A run's knobs as resolved: its run config, else the resources' settings."""

    inference: InferenceSettings
    chunk_photos: int
    max_severity_jump: float


class PhotoRunConfig(Config):
    positions: list[str] = Field(
        default_factory=list,
        description="Positions whose photo of the day this run processes (set by "
        "drone_image_sensor). Empty: every photo of the day the platform has recorded.",
    )
    chunk_photos: int | None = Field(
        default=None,
        description="Photos read, decoded, graded and written at a time (bounds the run's "
        "memory). Empty: the ingest_policy resource's (FARM_RUN_CHUNK_PHOTOS, default "
        f"{farm_config.DEFAULT_RUN_CHUNK_PHOTOS}).",
    )
    max_severity_jump: float | None = Field(
        default=None,
        description="The severity_jump check warns when a position's mean grade moves more "
        "than this in a day. Empty: the ingest_policy resource's (FARM_MAX_SEVERITY_JUMP, "
        f"default {farm_config.DEFAULT_MAX_SEVERITY_JUMP}).",
    )

    def chunk(self, policy: IngestPolicyResource) -> int:
        """`chunk_photos`, else the policy's; ConfigError names a bad value's variable."""
        if self.chunk_photos is None:
            return int(policy.number("run_chunk_photos"))
        name = farm_config.FARM_RUN_CHUNK_PHOTOS
        return int(positive_number(name, self.chunk_photos, farm_config.DEFAULT_RUN_CHUNK_PHOTOS))

    def severity_jump(self, policy: IngestPolicyResource) -> float:
        """`max_severity_jump`, else the policy's."""
        if self.max_severity_jump is None:
            return policy.number("max_severity_jump")
        name = farm_config.FARM_MAX_SEVERITY_JUMP
        return positive_number(name, self.max_severity_jump, farm_config.DEFAULT_MAX_SEVERITY_JUMP)


def photo_run_config(
    positions: Sequence[str], policy: IngestPolicyResource | None = None
) -> dict[str, Any]:
    """Run config of a run over these positions' photos of its day; with the `policy`, its
    chunk size and severity-jump threshold too, so that the run's launchpad shows them."""
    knobs = (
        {
            "chunk_photos": int(policy.number("run_chunk_photos")),
            "max_severity_jump": policy.number("max_severity_jump"),
        }
        if policy is not None
        else {}
    )
    return {"ops": {OP_NAME: {"config": {"positions": list(positions), **knobs}}}}
