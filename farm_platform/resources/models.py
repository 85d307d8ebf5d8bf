"""The model registry as a Dagster resource (DESIGN.md, Models)."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from farm_platform.ml.registry import DEFAULT_MODELS_DIR, ModelRegistry


class ModelRegistryResource(ConfigurableResource):
    """Cards, weights and the active version of each model, in a `models/` folder."""

    models_dir: str = Field(
        default=str(DEFAULT_MODELS_DIR), description="folder with registry.json and model cards"
    )

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.models_dir)
