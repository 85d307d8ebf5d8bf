"""Where the image runs' models run, as a Dagster resource (docs/model-server-and-gpu.md).

The definitions fill its fields from FARM_INFERENCE, FARM_OIP_URL, FARM_OIP_TOKEN,
FARM_OIP_TIMEOUT_SECONDS, FARM_TORCH_DEVICE, FARM_TORCH_DTYPE, FARM_TORCH_THREADS and
FARM_MODELS_CACHE, so a run's launchpad and metadata show where it inferred; `settings()`
checks them with the settings' own validators (an error names the variable).
"""

from __future__ import annotations

from typing import ClassVar

from dagster import ConfigurableResource
from pydantic import Field

from farm_platform import config, config_values
from farm_platform.ml.settings import InferenceSettings
from farm_platform.resources.environment import environment_fields


class InferenceResource(ConfigurableResource):
    """The models' place (this run's process or a model server) and their device,
    precision and CPU threads."""

    # Each field's variable (resources/environment.py fills the fields from them).
    VARIABLES: ClassVar[dict[str, str]] = {
        "mode": config.FARM_INFERENCE,
        "oip_url": config.FARM_OIP_URL,
        "oip_token": config.FARM_OIP_TOKEN,
        "oip_timeout_seconds": config.FARM_OIP_TIMEOUT_SECONDS,
        "torch_device": config.FARM_TORCH_DEVICE,
        "torch_dtype": config.FARM_TORCH_DTYPE,
        "torch_threads": config.FARM_TORCH_THREADS,
        "models_cache": config.FARM_MODELS_CACHE,
    }

    mode: str = Field(default="local", description="local (in the run) or oip (model server)")
    oip_url: str = Field(
        default="", description="model server address(es), comma-separated; needed for oip"
    )
    oip_token: str = Field(default="", description="bearer token the model server requires")
    oip_timeout_seconds: float = Field(
        default=config.DEFAULT_OIP_TIMEOUT_SECONDS, description="one model-server request's limit"
    )
    torch_device: str = Field(
        default=config.DEFAULT_TORCH_DEVICE, description="auto, cpu, cuda or cuda:N"
    )
    torch_dtype: str = Field(default=config.DEFAULT_TORCH_DTYPE, description="float32 or bfloat16")
    torch_threads: str = Field(
        default="", description="decode workers and torch CPU threads; empty: the usable cores"
    )
    models_cache: str = Field(
        default="", description="folder for weights read from a bucket; empty: ~/.cache"
    )

    def settings(self) -> InferenceSettings:
        """The fields, checked; ConfigError names the variable of a bad one."""
        mode = config_values.inference_mode(self.mode)
        return InferenceSettings(
            mode=mode,
            oip_url=config_values.oip_url(self.oip_url) if mode == "oip" else self.oip_url,
            oip_token=self.oip_token or None,
            oip_timeout_seconds=config_values.positive_number(
                config.FARM_OIP_TIMEOUT_SECONDS,
                self.oip_timeout_seconds,
                config.DEFAULT_OIP_TIMEOUT_SECONDS,
            ),
            device=self.torch_device or config.DEFAULT_TORCH_DEVICE,
            dtype=config_values.torch_dtype(self.torch_dtype),
            threads=config_values.torch_threads(self.torch_threads),
            models_cache=self.models_cache or None,
        )

    @classmethod
    def from_environment(cls) -> InferenceResource:
        """The resource as the environment sets it (for commands outside Dagster)."""
        return cls(**environment_fields(cls, env_vars=False))
