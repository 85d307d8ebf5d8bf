"""The model registry as a Dagster resource (docs/contracts.md, Models)."""

from __future__ import annotations

from typing import ClassVar

from dagster import ConfigurableResource
from pydantic import Field

from farm_platform import config
from farm_platform.ml.registry import ModelRegistry


class ModelRegistryResource(ConfigurableResource):
    """Cards, weights and the active version of each model, in a `models/` folder or a
    bucket folder (`gs://BUCKET/models`)."""

    VARIABLES: ClassVar[dict[str, str]] = {
        "models_dir": config.FARM_MODELS_DIR,
        "models_cache": config.FARM_MODELS_CACHE,
    }

    models_dir: str = Field(
        default=str(config.REPO_MODELS_DIR),
        description="folder, or gs:// bucket folder, with registry.json and model cards",
    )
    models_cache: str = Field(
        default="", description="where weights read from a bucket are kept; empty: the default"
    )

    def registry(self, cache_dir: str | None = None) -> ModelRegistry:
        """The registry; weights read from a bucket are kept in `cache_dir`, else in
        `models_cache` (the image runs pass their `inference` resource's models_cache)."""
        return ModelRegistry(self.models_dir, cache_dir or self.models_cache or None)
