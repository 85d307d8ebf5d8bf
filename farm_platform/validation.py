"""A simulated farm through the real assets and dbt, in this process.

The sensor and daemon are covered by the end-to-end tests; here only the data matters.
`grade_simulated_farm` runs the image assets over a simulated farm (the quality gate, the
staleness tests and the effect check start from it); `reported_vs_true_effect` answers
"does the reported effect recover the simulated one?"; `invoke_dbt_build` and
`dbt_project_copy` are the one way the project runs dbt outside Dagster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from farm_platform.batching import plan_rectangles
from farm_platform.dbt_env import DBT_PROJECT_DIR, dbt_environment
from farm_platform.layout import ImageKey
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform.simulate import FarmConfig, SimulationSummary, write_farm

if TYPE_CHECKING:
    from dagster import DagsterInstance

# Console logs of in-process runs at WARNING: a farm is hundreds of partitions of output.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class GradedFarm:
    """A simulated farm after the real image assets ran on it (no sensor, no daemon)."""

    bucket_url: str
    field_map: Path
    warehouse: WarehouseResource
    summary: SimulationSummary


def grade_simulated_farm(
    config: FarmConfig,
    workdir: Path,
    instance: DagsterInstance | None = None,
    models_dir: Path | None = None,
) -> GradedFarm:
    """Simulate `config` into a folder bucket under `workdir` and materialize the model
    assets, `drone_images` and `grade_leaves` over it in this process, batched as the
    sensor batches (partition-range runs), on `instance` (default: a throwaway one) with
    the models of `models_dir` (default: the repository's); raises if a run fails."""
    from dagster import DagsterInstance, materialize

    from farm_platform.assets import drone_images, grade_leaves, registered_models
    from farm_platform.field_map import read_field_map
    from farm_platform.ml.registry import ModelRegistry
    from farm_platform.partitions import POSITION_DIMENSION, partition_range_tags
    from farm_platform.resources import BucketResource, ModelRegistryResource, PubSubResource

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
        "models": ModelRegistryResource(models_dir=str(models_dir or ModelRegistry().models_dir)),
    }
    positions = list(read_field_map(field_map))
    with contextlib.ExitStack() as stack:
        if instance is None:
            instance = stack.enter_context(DagsterInstance.ephemeral())
        instance.add_dynamic_partitions(POSITION_DIMENSION, positions)
        runs = [([registered_models], {})]
        keys = [ImageKey(position, date) for date in config.dates for position in positions]
        for rectangle in plan_rectangles(keys, positions, max_images=500):
            runs.append(
                (
                    [drone_images, grade_leaves],
                    partition_range_tags(rectangle.first, rectangle.last),
                )
            )
        for assets, tags in runs:
            result = materialize(
                assets,
                instance=instance,
                resources=resources,
                run_config=QUIET_RUN_CONFIG,
                tags=tags,
                raise_on_error=False,
            )
            if not result.success:
                raise RuntimeError(f"the image pipeline failed on the simulated farm in {workdir}")
    return GradedFarm(bucket_url, field_map, warehouse, summary)


def reported_vs_true_effect(config: FarmConfig, workdir: Path) -> pl.DataFrame:
    """Per disease: the reported effect and interval on the last day, and the true DiD."""
    farm = grade_simulated_farm(config, workdir)
    dbt_build(dbt_project_copy(farm.field_map, workdir / "dbt_project"), farm.warehouse.url)
    reported = farm.warehouse.query(
        "SELECT disease_type, effect, ci_low, ci_high, significant FROM treatment_effect"
        " WHERE date = %s",
        [config.dates[-1]],
    )
    truth = pl.read_parquet(Path(farm.summary.truth_url) / "effect.parquet").select(
        "disease_type", "realized_did"
    )
    return reported.join(truth, on="disease_type").sort("disease_type")


@dataclass(frozen=True)
class DbtBuildOutcome:
    success: bool
    statuses: dict[str, str]  # node unique_id -> success, pass, fail, error, skipped, …

    def failed(self) -> list[str]:
        """Names (model or test, no package prefix) of the nodes that failed or errored."""
        return sorted(
            unique_id.split(".")[2]
            for unique_id, status in self.statuses.items()
            if status in ("fail", "error")
        )


def invoke_dbt_build(project_dir: Path, warehouse_url: str) -> DbtBuildOutcome:
    """`dbt build` of `project_dir` against the warehouse, every node's status; raises only
    when dbt itself could not run (not when a model or test fails)."""
    from dbt.cli.main import dbtRunner

    saved = dict(os.environ)
    os.environ.update(dbt_environment(warehouse_url))
    try:
        outcome = dbtRunner().invoke(
            [
                "build",
                "--quiet",
                "--project-dir",
                str(project_dir),
                "--profiles-dir",
                str(project_dir),
                "--target-path",
                str(project_dir / "target"),
                "--log-path",
                str(project_dir / "logs"),
            ]
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if outcome.exception is not None:
        raise outcome.exception
    statuses = {
        result.node.unique_id: str(getattr(result.status, "value", result.status))
        for result in outcome.result.results
    }
    return DbtBuildOutcome(success=outcome.success, statuses=statuses)


def dbt_build(project_dir: Path, warehouse_url: str) -> None:
    """`dbt build` of `project_dir` against the warehouse; raises if a model or test fails."""
    outcome = invoke_dbt_build(project_dir, warehouse_url)
    if not outcome.success:
        raise RuntimeError(f"dbt build of {project_dir} failed: {', '.join(outcome.failed())}")


def dbt_project_copy(positions: Path | pl.DataFrame, destination: Path) -> Path:
    """The dbt project copied to `destination` with `positions` (a field-map CSV or frame)
    as its `positions` seed.

    The seed in the repository is the production field map; a simulated or corrupted farm
    must not overwrite it.
    """
    shutil.copytree(
        DBT_PROJECT_DIR,
        destination,
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", "positions.csv"),
    )
    seed = destination / "seeds" / "positions.csv"
    if isinstance(positions, pl.DataFrame):
        positions.write_csv(seed)
    else:
        shutil.copyfile(positions, seed)
    return destination
