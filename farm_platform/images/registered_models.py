"""Model assets: one per registered model, data version = its active version.

They sit upstream of the assets they feed, so activating a new version of a model marks
the partitions graded with the old one stale in the Dagster UI.
"""

import datetime as dt
from collections.abc import Iterator

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from farm_platform.images.keys import MODEL_ASSETS
from farm_platform.ml.evaluation_records import asset_metadata
from farm_platform.ml.registry import ModelRegistry
from farm_platform.resources.model_registry import ModelRegistryResource
from farm_platform.resources.tables import MODEL_VERSIONS_TABLE
from farm_platform.resources.warehouse import WarehouseResource

MODEL_ID_BY_ASSET = {key: model_id for model_id, key in MODEL_ASSETS.items()}


MODEL_VERSIONS = AssetKey("model_versions")


@multi_asset(
    specs=[
        *[
            AssetSpec(
                key,
                group_name="models",
                description=f"Active version of the `{model_id}` model (models/registry.json).",
                kinds={"pytorch"},
            )
            for model_id, key in MODEL_ASSETS.items()
        ],
        AssetSpec(
            MODEL_VERSIONS,
            group_name="models",
            description="Every registered model version and which is active (warehouse table).",
            kinds={"duckdb"},
        ),
    ],
    can_subset=True,
)
def registered_models(
    context: AssetExecutionContext, models: ModelRegistryResource, warehouse: WarehouseResource
) -> Iterator[MaterializeResult]:
    registry = models.registry()
    for asset_key in sorted(context.selected_asset_keys - {MODEL_VERSIONS}):
        card = registry.active_card(MODEL_ID_BY_ASSET[asset_key])
        registry.verify_weights(card)
        yield MaterializeResult(
            asset_key=asset_key,
            data_version=DataVersion(card.version),
            metadata={
                "model_id": card.id,
                "model_version": card.version,
                "sha256": card.sha256,
                "task": card.task,
                "disease_type": card.disease_type or "",
                "metrics": card.metrics,
                # `models evaluate` figures per registered dataset, and how it went live
                # (a forced activation carries its reason).
                **{
                    name: MetadataValue.json(value)
                    for name, value in asset_metadata(registry, card.id, card.version).items()
                },
            },
        )
    if MODEL_VERSIONS in context.selected_asset_keys:
        frames = [model_versions_frame(registry, model_id) for model_id in MODEL_ASSETS]
        for frame in frames:
            warehouse.replace_rows("model_versions", frame)
        versions = pl.concat(frames)
        yield MaterializeResult(
            asset_key=MODEL_VERSIONS,
            metadata={
                "versions": versions.height,
                "active": MetadataValue.json(
                    {
                        row["model_id"]: row["version"]
                        for row in versions.filter("active").iter_rows(named=True)
                    }
                ),
            },
        )


def model_versions_frame(registry: ModelRegistry, model_id: str) -> pl.DataFrame:
    """Every registered version of a model, flagged active or not (table model_versions)."""
    active = registry.active_versions().get(model_id)
    recorded_at = dt.datetime.now(dt.UTC)
    cards = [registry.card(model_id, version) for version in registry.versions(model_id)]
    return pl.DataFrame(
        [
            {
                "model_id": card.id,
                "version": card.version,
                "active": card.version == active,
                "task": card.task,
                "disease_type": card.disease_type,
                "sha256": card.sha256,
                "recorded_at": recorded_at,
            }
            for card in cards
        ],
        schema=MODEL_VERSIONS_TABLE.polars_schema,
    )
