"""Screenshots of the Dagster UI for docs/models.md's "A new model version" walkthrough.

Plays the story on a local stack — a small farm graded with disease_3_grader v1, v2
registered and activated, the stale partitions, a backfill of two days — and captures the
real `dagster-webserver` at each step with Playwright driving headless Chromium:

    apt-get install chromium && pip install playwright   # Debian's browser, no download
    python scripts/ui_screenshots.py [--out docs/img]

Nothing is mocked: the emulators, the daemon and the webserver are the ones the demo uses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

from dagster import DagsterInstance

from farm_platform import config
from farm_platform.admin.backfill import launch_backfill, wait_for_backfill
from farm_platform.admin.instance import prepare_dagster_home
from farm_platform.admin.model_versions import add_model
from farm_platform.config import (
    FARM_MODELS_DIR,
    FARM_TRIAL_START_DATE,
    REPO_MODELS_DIR,
)
from farm_platform.images.keys import GRADES_BY_DISEASE, MODEL_ASSETS
from farm_platform.ml.registry import ModelRegistry
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import DaemonProcess, wait_for_photos
from farm_platform_dev.local_stack import LocalStack
from farm_platform_dev.simulate import DroneMessagePublisher, FarmConfig, write_farm
from farm_platform_dev.ui import Browser, webserver

GRADER = "disease_3_grader"
DAYS = 4
# The trial ends today, so the partition grid holds only the farm's days.
START = dt.date.today() - dt.timedelta(days=DAYS - 1)
CONFIG = FarmConfig(positions=6, days=DAYS, start_date=START, seed=7)


def wait(what: str, condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1)


def data_version(instance: DagsterInstance, model_id: str) -> str | None:
    event = instance.get_latest_materialization_event(MODEL_ASSETS[model_id])
    return event.asset_materialization.tags.get("dagster/data_version") if event else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/img", help="folder for the PNGs")
    parser.add_argument("--workdir", default=".farm/ui_screenshots")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    dagster_home = workdir / "dagster"
    prepare_dagster_home(dagster_home)
    models_dir = workdir / "models"
    shutil.copytree(REPO_MODELS_DIR, models_dir, ignore=shutil.ignore_patterns("*.py"))

    with LocalStack() as stack:
        environment = {
            **stack.environment(),
            config.FARM_WAREHOUSE: f"duckdb:///{workdir / 'warehouse.duckdb'}",
            config.DAGSTER_HOME: str(dagster_home),
            config.FARM_FIELD_MAP: str(workdir / "positions.csv"),
            config.FARM_REPORTS: str(workdir / "reports"),
            FARM_MODELS_DIR: str(models_dir),
            FARM_TRIAL_START_DATE: START.isoformat(),
        }
        os.environ.update(environment)
        with (
            DaemonProcess(dagster_home, environment, workdir / "daemon.log"),
            DagsterInstance.from_config(str(dagster_home)) as instance,
        ):
            wait("model assets at v1", lambda: data_version(instance, GRADER) == "v1", 180)
            publisher = DroneMessagePublisher(stack.project)
            write_farm(CONFIG, stack.bucket_url(), workdir / "positions.csv", publisher)
            images = CONFIG.positions * CONFIG.days
            warehouse = WarehouseResource(url=environment[config.FARM_WAREHOUSE])
            wait_for_photos(instance, warehouse, images, 900)

            # v1's weights registered as v2: the point is the UI, not a better model.
            incoming = workdir / "incoming_v2"
            shutil.copytree(models_dir / GRADER / "v1", incoming)
            card = json.loads((incoming / "card.json").read_text())
            card.update(version="v2")
            (incoming / "card.json").write_text(json.dumps(card, indent=2))
            add_model(incoming, ModelRegistry(models_dir), activate=True)
            wait("the sensor to record v2", lambda: data_version(instance, GRADER) == "v2", 120)

            with webserver({**os.environ, **environment}, workdir / "webserver.log") as base:
                grades = f"{base}/assets/disease_3_grades"
                with Browser() as browser:
                    # The UI computes staleness per day partition, in the partition's detail.
                    partition = f"{grades}?view=partitions&partition={START.isoformat()}"
                    browser.screenshot(
                        partition, out / "stale_partition.png", click=["Unsynced (1)"]
                    )
                    first, last = START, START + dt.timedelta(days=1)
                    launched = launch_backfill(
                        instance, [GRADES_BY_DISEASE["disease_3"]], first, last
                    )
                    wait_for_backfill(instance, launched.backfill_id, timeout_seconds=900)
                    backfill = f"{base}/runs/b/{launched.backfill_id}"
                    browser.screenshot(backfill, out / "backfill.png")
                    browser.screenshot(f"{backfill}?tab=runs", out / "backfill_runs.png")
                    browser.screenshot(partition, out / "after_backfill.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
