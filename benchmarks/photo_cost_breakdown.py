"""A run's fixed cost in its run worker, part by part, measured in a fresh process.

A run worker is a fresh Python process: it starts, imports Dagster and the code location,
imports torch with the models' code, loads the models, runs the op (the models, the
warehouse writes, the checks) and stores the run's events. `measure_fixed_cost` replays
the fixed parts in a fresh process, in that order, and meters the process's CPU seconds
(all threads) after each: the checks over one run's photos of the scenario (the assets'
`validate_photos`, on the rows the scenario's runs wrote) and the run's number of events,
stored to a SQLite Dagster instance like the embedded default's. What the run workers
spent per run beyond these parts and the bare model path is the rest: Dagster's run and
step machinery, reading and decoding the photos, the warehouse writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from farm_platform import config
from farm_platform_dev.gate import snapshot_of

_PROBE = """
import json, sys, time
marks = [("process start", time.process_time())]
import dagster, farm_platform.images.definitions
marks.append(("Dagster and the code location", time.process_time()))
from farm_platform.ml import inference
marks.append(("torch and the models' code", time.process_time()))
from farm_platform.admin.configured import configured_registry
from farm_platform.ml.registry import DISEASE_TYPES
registry = configured_registry()
models = [inference.load_detector(registry.detector(), registry)] + [
    inference.load_grader(registry.grader_for(disease), registry) for disease in DISEASE_TYPES]
marks.append(("loading the 6 models", time.process_time()))
setup = time.process_time()
import polars as pl
from farm_platform.layout import bucket_filesystem
from farm_platform_dev.gate import run_suites
from farm_platform_dev.gate_cases import Snapshot
folder, events = sys.argv[1], int(sys.argv[2])
meta = json.load(open(f"{folder}/meta.json"))
snapshot = Snapshot(
    *(pl.read_parquet(f"{folder}/{name}.parquet") for name in ("images", "crops", "grades")),
    positions=pl.DataFrame(), cropper=tuple(meta["cropper"]),
    graders={k: (v[0], v[1], tuple(v[2])) for k, v in meta["graders"].items()},
    filesystem=bucket_filesystem(meta["bucket_url"])[0])
import os
from dagster import AssetMaterialization, DagsterInstance
os.makedirs(f"{folder}/dagster")
instance = DagsterInstance.local_temp(f"{folder}/dagster")
skip = time.process_time() - setup
started = time.process_time()
run_suites(snapshot)
marks.append(("the checks", time.process_time() - skip))
for index in range(events):
    instance.report_runless_asset_event(AssetMaterialization("probe", metadata={"i": index}))
marks.append(("the events", time.process_time() - skip))
print(json.dumps(marks))
"""


def measure_fixed_cost(
    warehouse: Any, bucket_url: str, photos_per_run: int, events_per_run: int
) -> dict[str, float]:
    """CPU seconds of each fixed part of a run, in a fresh process (see the docstring)."""
    snapshot = snapshot_of(warehouse, bucket_url, pl.DataFrame())
    # One run's photos: the first `photos_per_run` of the scenario's.
    run_photos = snapshot.images.sort("position_id").head(max(1, photos_per_run))
    keys = run_photos.select("position_id", "date")
    with tempfile.TemporaryDirectory(prefix="farm-run-probe-") as folder:
        run_photos.write_parquet(f"{folder}/images.parquet")
        for name, frame in (("crops", snapshot.crops), ("grades", snapshot.grades)):
            frame.join(keys, on=["position_id", "date"]).write_parquet(f"{folder}/{name}.parquet")
        meta = {"cropper": snapshot.cropper, "graders": snapshot.graders, "bucket_url": bucket_url}
        Path(folder, "meta.json").write_text(json.dumps(meta))
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, folder, str(events_per_run)],
            capture_output=True,
            text=True,
            # What the code location needs to load (the probe reaches neither service).
            env={
                **os.environ,
                config.FARM_BUCKET: bucket_url,
                config.FARM_WAREHOUSE: warehouse.url,
                config.FARM_GCP_PROJECT: os.environ.get(config.FARM_GCP_PROJECT, "farm-probe"),
            },
            check=False,
        )
    if result.returncode:
        raise RuntimeError(f"the run probe failed:\n{result.stderr[-3000:]}")
    marks = json.loads(result.stdout.strip().splitlines()[-1])
    parts, previous = {}, 0.0
    for name, seconds in marks:
        label = f"{name} ({photos_per_run} photos)" if name == "the checks" else name
        parts[f"{label} ({events_per_run})" if name == "the events" else label] = seconds - previous
        previous = seconds
    return parts


def print_fixed_cost(parts: dict[str, float], op_cpu: float, bare: float) -> None:
    """The parts, and the rest of a run's CPU (`op_cpu`: its run worker's, and the
    replicas' where the models run there) beyond the bare path."""
    print("   a run worker's fixed cost, measured in a fresh process:")
    for name, seconds in parts.items():
        print(f"     {name:40s} {seconds:.2f}")
    rest = op_cpu - bare - sum(parts.values())
    label = "the rest (run workers and replicas less the above and the bare path)"
    print(f"     {label:40s} {rest:.2f}")
