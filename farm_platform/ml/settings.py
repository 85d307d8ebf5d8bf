"""Where and how the models run, as the caller gives it: the image runs take it from the
`inference` resource (farm_platform/resources/inference.py), commands from the environment
through the same validators. Nothing in `farm_platform.ml` reads the environment for these.
No torch here: the code location imports this module when it loads."""

from __future__ import annotations

from dataclasses import dataclass, field

from farm_platform import config
from farm_platform.config_values import available_cores


@dataclass(frozen=True)
class InferenceSettings:
    """Checked values (`farm_platform.config_values`); the defaults are the settings'."""

    mode: str = "local"  # local: in this process; oip: on the model server at oip_url
    oip_url: str = ""
    oip_token: str | None = None
    oip_timeout_seconds: float = config.DEFAULT_OIP_TIMEOUT_SECONDS
    # auto, cpu, cuda or cuda:N: resolved against the GPUs torch sees when a model loads.
    device: str = config.DEFAULT_TORCH_DEVICE
    dtype: str = config.DEFAULT_TORCH_DTYPE
    threads: int = field(default_factory=available_cores)
    # Where weights read from a bucket are kept; None: ~/.cache/farm_platform/models.
    models_cache: str | None = None

    def where(self) -> str:
        """Where the models run, in words for a run's log and metadata."""
        if self.mode == "oip":
            return f"on the model server {self.oip_url}"
        return f"in this run ({self.device}, {self.dtype}, {self.threads} CPU threads)"
