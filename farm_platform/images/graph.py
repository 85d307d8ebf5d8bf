"""The image assets as a graph, for admin commands (staleness, backfills) that need the
lineage but not the code location's sensors and resources."""

from __future__ import annotations

from typing import Any


def image_asset_graph() -> Any:
    """The asset graph of the model assets and the image pipeline (no torch import)."""
    from dagster._core.definitions.assets.graph.asset_graph import AssetGraph

    from farm_platform.images.pipeline import build_image_pipeline
    from farm_platform.images.registered_models import registered_models
    from farm_platform.partitions import configured_day_partitions

    pipeline = build_image_pipeline(configured_day_partitions())
    return AssetGraph.from_assets([registered_models, pipeline])
