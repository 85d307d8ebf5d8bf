"""The model registry as a Dagster resource (docs/contracts.md, Models)."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from farm_platform.config import REPO_MODELS_DIR
from farm_platform.ml.registry import ModelRegistry


class ModelRegistryResource(ConfigurableResource):
    """Cards, weights and the active version of each model, in a `models/` folder or a
    bucket folder (`gs://BUCKET/models`)."""

    models_dir: str = Field(
        default=str(REPO_MODELS_DIR),
        description="folder, or gs:// bucket folder, with registry.json and model cards",
    )

    def registry(self, cache_dir: str | None = None) -> ModelRegistry:
        """The registry; weights read from a bucket are kept in `cache_dir` (the image
        runs pass their `inference` resource's models_cache)."""
        return ModelRegistry(self.models_dir, cache_dir)
