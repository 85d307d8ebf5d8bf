"""A simulated farm through the real assets and dbt, in this process.

The sensor and daemon are covered by the end-to-end tests; here only the data matters.
`grade_simulated_farm` runs the image assets over a simulated farm (the quality gate, the
staleness tests and the effect check start from it); `reported_vs_true_effect` answers
"does the reported effect recover the simulated one?"; `dbt_workdir` and
`invoke_dbt_build` are the one way the project runs dbt outside Dagster.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from farm_platform.admin.configured import configured_registry
from farm_platform.analytics.dbt_env import DBT_PROJECT_DIR, write_dbt_profile
from farm_platform.analytics.positions import write_positions
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.simulate import FarmConfig, SimulationSummary, write_farm

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from farm_platform.layout import ImageKey

# Console logs of in-process runs at WARNING: a farm is hundreds of partitions of output.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class GradedFarm:
    """A simulated farm after the real image assets ran on it (no sensor, no daemon)."""

    bucket_url: str
    field_map: Path
    warehouse: WarehouseResource
    summary: SimulationSummary


def farm_resources(
    bucket_url: str, warehouse_url: str, models_dir: Path | str | None = None
) -> dict[str, object]:
    """The image pipeline's resources over a bucket and warehouse, with no Pub/Sub: no
    message announces these photos, so nothing is dead-lettered from a run. The models run
    in the run's process and the run policy is the default (a test replaces
    `inference` or `ingest_policy` to change them)."""
    from farm_platform.resources import BucketResource, ModelRegistryResource, PubSubResource
    from farm_platform.resources.inference import InferenceResource
    from farm_platform.resources.ingest_policy import IngestPolicyResource

    return {
        "bucket": BucketResource(url=bucket_url),
        "warehouse": WarehouseResource(url=warehouse_url),
        "pubsub": PubSubResource(project="unused"),
        "models": ModelRegistryResource(
            models_dir=str(models_dir or configured_registry().models_dir)
        ),
        "inference": InferenceResource(),
        "ingest_policy": IngestPolicyResource(),
    }


def copy_farm(farm: GradedFarm, destination: Path) -> dict[str, object]:
    """The farm's bucket and warehouse copied under `destination`, and resources over the
    copies, so a test can change them freely."""
    source = Path(farm.bucket_url.removeprefix("file://")).parent
    shutil.copytree(source / "bucket", destination / "bucket")
    shutil.copyfile(farm.warehouse.duckdb_path, destination / "warehouse.duckdb")
    return farm_resources(
        f"file://{destination / 'bucket'}", f"duckdb:///{destination / 'warehouse.duckdb'}"
    )


def materialize_day(
    resources: dict[str, object],
    day: str,
    positions: list[str] | None = None,
    instance: DagsterInstance | None = None,
    selection: list[str] | None = None,
) -> bool:
    """One run of `image_pipeline` (or the `selection` of its assets) for `day`, over
    `positions` (None: every photo of the day the platform has recorded); its success."""
    from dagster import DagsterInstance, materialize

    from farm_platform.admin.configured import configured_day_partitions
    from farm_platform.images.pipeline import build_image_pipeline
    from farm_platform.images.run_config import photo_run_config

    with contextlib.ExitStack() as stack:
        if instance is None:
            instance = stack.enter_context(DagsterInstance.ephemeral())
        return materialize(
            [build_image_pipeline(configured_day_partitions())],
            selection=selection,
            instance=instance,
            resources=resources,
            run_config={**QUIET_RUN_CONFIG, **photo_run_config(positions or [])},
            partition_key=day,
            raise_on_error=False,
        ).success


def grade_simulated_farm(
    config: FarmConfig,
    workdir: Path,
    instance: DagsterInstance | None = None,
    models_dir: Path | str | None = None,
    photos: Callable[[FarmConfig], Iterable[tuple[ImageKey, bytes]]] | None = None,
) -> GradedFarm:
    """Simulate `config` into a folder bucket under `workdir` and materialize the model
    assets and `image_pipeline` over it in this process, one run per day with the day's
    photos listed as the sensor lists them, on `instance` (default: a throwaway one) with
    the models of `models_dir` (default: the repository's); raises if a run fails.
    `photos` (e.g. `dev.eval_render.eval_farm_photos`) redraws every photo of the farm
    with another renderer before grading; the truth stays the simulator's."""
    from dagster import DagsterInstance, materialize

    from farm_platform.images.registered_models import registered_models
    from farm_platform.resources.field_map import read_field_map

    workdir.mkdir(parents=True, exist_ok=True)
    bucket_url = f"file://{workdir / 'bucket'}"
    field_map = workdir / "positions.csv"
    summary = write_farm(config, bucket_url, field_map, truth_url=str(workdir / "truth"))
    resources = farm_resources(bucket_url, f"duckdb:///{workdir / 'warehouse.duckdb'}", models_dir)
    if photos is not None:
        bucket = resources["bucket"]
        for key, png in photos(config):
            bucket.write(bucket.image_uri(key), png)
    positions = list(read_field_map(field_map))
    with contextlib.ExitStack() as stack:
        if instance is None:
            instance = stack.enter_context(DagsterInstance.ephemeral())
        graded = materialize(
            [registered_models], instance=instance, resources=resources, raise_on_error=False
        ).success and all(
            materialize_day(resources, date.isoformat(), positions, instance)
            for date in config.dates
        )
        if not graded:
            raise RuntimeError(f"the image pipeline failed on the simulated farm in {workdir}")
    return GradedFarm(bucket_url, field_map, resources["warehouse"], summary)


def reported_vs_true_effect(
    config: FarmConfig,
    workdir: Path,
    photos: Callable[[FarmConfig], Iterable[tuple[ImageKey, bytes]]] | None = None,
) -> pl.DataFrame:
    """Per disease: the reported effect and interval on the last day, and the true DiD
    (of the training renderer's leaves in view); `photos` as in grade_simulated_farm."""
    farm = grade_simulated_farm(config, workdir, photos=photos)
    dbt_build(dbt_workdir(farm.field_map, workdir / "dbt"), farm.warehouse.url)
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


# The field map of a `dbt_workdir`, written to the warehouse before each of its builds,
# and the project vars its builds override.
WORKDIR_FIELD_MAP = "positions.csv"
WORKDIR_VARS = "dbt_vars.json"


def dbt_workdir(
    positions: Path | pl.DataFrame,
    destination: Path,
    dbt_vars: Mapping[str, Any] | None = None,
) -> Path:
    """A folder for `invoke_dbt_build`'s builds whose field map is `positions` (a field-map
    file or a frame of its columns): each build first writes it to the warehouse, as the
    `positions` asset does before the daily build. A frame is written as it is, unchecked,
    so that a corrupted map reaches dbt's tests. `dbt_vars` override the project's vars
    (`dbt build --vars`) in every build of the folder."""
    destination.mkdir(parents=True, exist_ok=True)
    frame = positions if isinstance(positions, pl.DataFrame) else pl.read_csv(positions)
    frame.write_csv(destination / WORKDIR_FIELD_MAP)
    (destination / WORKDIR_VARS).write_text(json.dumps(dict(dbt_vars or {})))
    return destination


def invoke_dbt_build(
    workdir: Path,
    warehouse_url: str,
    full_refresh: bool = False,
    select: Sequence[str] = (),
    tests: bool = True,
    target: str = "target",
) -> DbtBuildOutcome:
    """`dbt build` of the project against the warehouse, every node's status; raises only
    when dbt itself could not run (not when a model or test fails). The field map of
    `workdir` (`dbt_workdir`) goes to the warehouse first. The incremental models take only
    the changed days unless `full_refresh` (`dbt build --full-refresh`); `select` builds
    only those nodes (`dbt build --select …`); without `tests` only seeds and models are
    built, no data or unit test (two thirds of a small build's time is its 98 data tests).

    `target` is the folder inside `workdir` where dbt writes its manifest and keeps its
    partial-parse state. dbt throws that state away and parses the whole project again
    (2.6 s of a 4 s build) whenever the profile differs from the last build's: builds that
    alternate between two warehouses give each its own `target`."""
    from dbt.cli.main import dbtRunner

    field_map = workdir / WORKDIR_FIELD_MAP
    if field_map.exists():
        frame = pl.read_csv(field_map, infer_schema=False)
        write_positions(WarehouseResource(url=warehouse_url), frame)
    profiles = write_dbt_profile(warehouse_url, workdir / f"{target}_profile")
    dbt_vars = workdir / WORKDIR_VARS
    dbt_vars_json = dbt_vars.read_text() if dbt_vars.exists() else "{}"
    outcome = dbtRunner().invoke(
        [
            "build",
            "--quiet",
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(profiles),
            "--target-path",
            str(workdir / target),
            "--log-path",
            str(workdir / "logs"),
            *(["--full-refresh"] if full_refresh else []),
            *(["--select", *select] if select else []),
            *([] if tests else ["--exclude", "resource_type:test", "resource_type:unit_test"]),
            *(["--vars", dbt_vars_json] if dbt_vars_json != "{}" else []),
        ]
    )
    if outcome.exception is not None:
        raise outcome.exception
    statuses = {
        result.node.unique_id: str(getattr(result.status, "value", result.status))
        for result in outcome.result.results
    }
    return DbtBuildOutcome(success=outcome.success, statuses=statuses)


def dbt_build(workdir: Path, warehouse_url: str) -> None:
    """`invoke_dbt_build` of `workdir`; raises if a model or test fails."""
    outcome = invoke_dbt_build(workdir, warehouse_url)
    if not outcome.success:
        raise RuntimeError(f"dbt build in {workdir} failed: {', '.join(outcome.failed())}")
