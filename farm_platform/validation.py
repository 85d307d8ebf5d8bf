"""Does the reported effect recover the simulated one? (Issue: correctness vs ground truth.)

Runs a simulated farm through the real assets and dbt in this process — the sensor and
daemon are covered by the end-to-end tests; here only the numbers matter — and returns the
reported `treatment_effect` beside the simulator's truth for the last day.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl

from farm_platform.batching import plan_rectangles
from farm_platform.dbt_env import DBT_PROJECT_DIR, dbt_environment
from farm_platform.layout import ImageKey
from farm_platform.simulate import FarmConfig, write_farm


def reported_vs_true_effect(config: FarmConfig, workdir: Path) -> pl.DataFrame:
    """Per disease: the reported effect and interval on the last day, and the true DiD."""
    from dagster import DagsterInstance, materialize

    from farm_platform.assets import drone_images, grade_leaves, registered_models
    from farm_platform.field_map import read_field_map
    from farm_platform.partitions import POSITION_DIMENSION, image_partition_key
    from farm_platform.resources import (
        BucketResource,
        ModelRegistryResource,
        PubSubResource,
        WarehouseResource,
    )

    workdir.mkdir(parents=True, exist_ok=True)
    bucket_url = f"file://{workdir / 'bucket'}"
    field_map = workdir / "positions.csv"
    summary = write_farm(config, bucket_url, field_map, truth_url=str(workdir / "truth"))
    warehouse = WarehouseResource(url=f"duckdb:///{workdir / 'warehouse.duckdb'}")
    resources = {
        "bucket": BucketResource(url=bucket_url),
        "warehouse": warehouse,
        # No message announces these photos, so nothing is dead-lettered from the run.
        "pubsub": PubSubResource(project="unused"),
        "models": ModelRegistryResource(),
    }
    positions = list(read_field_map(field_map))
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POSITION_DIMENSION, positions)
        materialize([registered_models], instance=instance, resources=resources)
        keys = [ImageKey(position, date) for date in config.dates for position in positions]
        for rectangle in plan_rectangles(keys, positions, max_images=500):
            materialize(
                [drone_images, grade_leaves],
                instance=instance,
                resources=resources,
                tags={
                    "dagster/asset_partition_range_start": str(
                        image_partition_key(rectangle.first)
                    ),
                    "dagster/asset_partition_range_end": str(image_partition_key(rectangle.last)),
                },
            )
    dbt_build(dbt_project_copy(field_map, workdir), warehouse.url)
    last_day = config.dates[-1]
    reported = warehouse.query(
        "SELECT disease_type, effect, ci_low, ci_high, significant FROM treatment_effect"
        " WHERE date = %s",
        [last_day],
    )
    truth = pl.read_parquet(Path(summary.truth_url) / "effect.parquet").select(
        "disease_type", "realized_did"
    )
    return reported.join(truth, on="disease_type").sort("disease_type")


def dbt_build(project_dir: Path, warehouse_url: str) -> None:
    """`dbt build` of `project_dir` against the warehouse; raises if a model or test fails."""
    from dbt.cli.main import dbtRunner

    os.environ.update(dbt_environment(warehouse_url))
    result = dbtRunner().invoke(
        ["build", "--quiet", "--project-dir", str(project_dir), "--profiles-dir", str(project_dir)]
    )
    if not result.success:
        raise RuntimeError(f"dbt build of {project_dir} failed: {result.exception or 'see log'}")


def dbt_project_copy(field_map: Path, workdir: Path) -> Path:
    """The dbt project with this farm's field map as its `positions` seed.

    The seed in the repository is the production field map; a simulated farm of another
    size must not overwrite it.
    """
    copy = workdir / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, copy, ignore=shutil.ignore_patterns("target", "logs"))
    shutil.copyfile(field_map, copy / "seeds" / "positions.csv")
    return copy
