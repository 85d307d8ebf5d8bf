"""The image assets as a graph, for admin commands (staleness, backfills) that need the
lineage but not the code location's sensors and resources."""

from __future__ import annotations

from typing import Any

from dagster import PartitionsDefinition


def image_asset_graph(days: PartitionsDefinition) -> Any:
    """The asset graph of the model assets and the image pipeline over the day partitions
    `days` (no torch import)."""
    from dagster._core.definitions.assets.graph.asset_graph import AssetGraph

    from farm_platform.images.pipeline import build_image_pipeline
    from farm_platform.images.registered_models import registered_models

    pipeline = build_image_pipeline(days)
    return AssetGraph.from_assets([registered_models, pipeline])
