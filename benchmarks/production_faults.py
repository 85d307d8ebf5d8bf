"""The fault campaign's `--production` rows: faults on the production topology.

    python benchmarks/fault_campaign.py --production [--photos 8] [--only NAME ...]

One topology (`stack up --production`: PostgreSQL instance and warehouse, code servers,
daemon, webserver, Redis and two Celery workers, two model-server replicas) serves every
row; each fault gets a day of its own, `--photos` photos announced by the drone
controller's messages, batches of 3 photos (so a day is several runs). The fault hits
while a run of its day is STARTED, then the topology is repaired the way an operator does
(`stack up --production` again), and the row says for that day: photos sent, graded,
lost, doubled rows, and runs that failed (and were recovered by requeueing their photos).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from farm_platform import config
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import wait_for_photos
from farm_platform_dev.postgres import PostgresServer
from farm_platform_dev.processes import child_pids, kill_now
from farm_platform_dev.production import (
    credentials,
    production_down,
    production_up,
    read_production,
    throwaway_credentials,
)
from farm_platform_dev.stack import stack_down, stack_up
from farm_platform_dev.ui import launch_day_run

FIRST_DAY = dt.date(2026, 10, 1)


class Topology:
    """The production topology the rows share, and how to break and repair it."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        throwaway_credentials()
        self.settings: dict[str, str] = {}
        self.info = self.repair()
        assert self.production is not None
        self.environment = {
            **self.info.environment(),
            **self.production.environment(credentials()[0]),
            config.FARM_FIELD_MAP: str(state_dir / "positions.csv"),
        }
        self.warehouse = WarehouseResource(url=self.environment[config.FARM_WAREHOUSE])

    def repair(self) -> Any:
        """`stack up --production`: start what is not running (all of it, the first time)."""
        info = stack_up(self.state_dir)
        settings = {
            **info.environment(),
            config.FARM_SENSOR_INTERVAL_SECONDS: "5",
            config.FARM_RUN_MAX_PHOTOS: "3",
            config.FARM_RUN_TIMEOUT_SECONDS: "300",
        }
        self.production = production_up(
            self.state_dir, settings, replicas=2, max_concurrent_runs=4, quick_polling=True
        )
        return info

    @property
    def pg_port(self) -> int:
        return int(read_production(self.state_dir)["pg_port"])

    def pid(self, name: str) -> int:
        return int(read_production(self.state_dir)["pids"][name])

    def simulate(self, day: dt.date, photos: int, seed: int) -> int:
        """`farm-platform simulate` of one day, as an operator would; returns the photos."""
        import subprocess
        import sys

        args = ["simulate", "--positions", str(photos), "--days", "1"]
        args += ["--start-date", str(day), "--seed", str(seed), "--publish"]
        args += ["--truth", str(self.state_dir / "truth")]
        subprocess.run(
            [str(Path(sys.executable).with_name("farm-platform")), *args],
            env={**os.environ, **self.environment},
            check=True,
            capture_output=True,
        )
        return photos

    def instance(self) -> DagsterInstance:
        with config.process_environment(self.environment):
            return DagsterInstance.from_config(str(self.production.dagster_home))

    def down(self) -> None:
        production_down(self.state_dir)
        stack_down(self.state_dir)


def runs_of_day(instance: DagsterInstance, day: dt.date, statuses=None) -> list[Any]:
    return [
        record.dagster_run
        for record in instance.get_run_records(
            RunsFilter(tags={"dagster/partition": str(day)}, statuses=statuses)
        )
    ]


def wait_for_started_run(instance: DagsterInstance, day: dt.date) -> None:
    deadline = time.monotonic() + 300
    while not runs_of_day(instance, day, [DagsterRunStatus.STARTED]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no run of {day} started")
        time.sleep(0.2)


def kill_and_repair(name: str, group: bool = False) -> Callable[[Topology, Any, dt.date], None]:
    def fault(topology: Topology, instance: DagsterInstance, day: dt.date) -> None:
        wait_for_started_run(instance, day)
        if group:  # the worker and its pool
            kill_now([topology.pid(name), *child_pids(topology.pid(name))])
        elif name == "postgres":
            # The postmaster and every backend; `stack up` restarts it on the same data.
            PostgresServer(base=topology.state_dir / "postgres", port=topology.pg_port).kill()
        else:
            kill_now([topology.pid(name)])
        topology.repair()

    return fault


def every_replica_down(seconds: float) -> Callable[[Topology, Any, dt.date], None]:
    """Every model-server replica killed as the day's photos arrive, and brought back by
    `stack up --production` after `seconds`: the runs fail within seconds meanwhile, and
    the photos back off (the shipped 30 s, 2 min, 8 min) rather than being dead-lettered."""

    def fault(topology: Topology, instance: DagsterInstance, day: dt.date) -> None:
        pids = read_production(topology.state_dir)["pids"]
        replicas = [pid for name, pid in pids.items() if name.startswith("model_server:")]
        kill_now([pid for replica in replicas for pid in (replica, *child_pids(replica))])
        time.sleep(seconds)
        topology.repair()

    return fault


def whole_day_run_beside_sensor_runs(
    topology: Topology, instance: DagsterInstance, day: dt.date
) -> None:
    wait_for_started_run(instance, day)
    launch_day_run(topology.production.webserver_url, str(day))


PRODUCTION_FAULTS: dict[str, Callable[[Topology, Any, dt.date], None]] = {
    "production: kill -9 code server mid-run": kill_and_repair("code_server:farm_platform"),
    "production: kill -9 PostgreSQL mid-run, restart": kill_and_repair("postgres"),
    "production: kill -9 one model-server replica": kill_and_repair("model_server:0"),
    "production: every model-server replica down 3 min": every_replica_down(180),
    "production: kill -9 Celery worker (and pool) mid-run": kill_and_repair(
        "worker:images", group=True
    ),
    "production: Redis killed -9 and restarted mid-run": kill_and_repair("redis"),
    "production: daemon killed -9 and restarted mid-run": kill_and_repair("daemon"),
    "production: several runs of one day and a whole-day run at once": (
        whole_day_run_beside_sensor_runs
    ),
}


def run_production_faults(names: list[str], photos: int) -> list[dict[str, Any]]:
    rows = []
    state_dir = Path(tempfile.mkdtemp(prefix="farm-production-faults-"))
    state_dir.chmod(0o755)  # PostgreSQL runs as another user
    topology = Topology(state_dir)
    try:
        for index, name in enumerate(names):
            print(f"== {name}", flush=True)
            day = FIRST_DAY + dt.timedelta(days=index)
            sent = topology.simulate(day, photos, seed=100 + index)
            instance = topology.instance()
            try:
                PRODUCTION_FAULTS[name](topology, instance, day)
                wait_for_photos(instance, topology.warehouse, 0, 900, tolerate_failed_runs=True)
                failed = len(runs_of_day(instance, day, [DagsterRunStatus.FAILURE]))
            finally:
                instance.dispose()
            rows.append(tally(name, topology.warehouse, day, sent, failed))
            print("   " + ", ".join(f"{k}: {v}" for k, v in rows[-1].items() if k != "fault"))
    finally:
        topology.down()
    return rows


def tally(
    name: str, warehouse: WarehouseResource, day: dt.date, sent: int, failed_runs: int
) -> dict[str, Any]:
    graded = warehouse.query(
        "SELECT count(*) AS n FROM (SELECT position_id FROM disease_grades WHERE date = %s"
        " GROUP BY position_id HAVING count(DISTINCT disease_type) = 5) AS graded",
        [day],
    )["n"][0]
    no_leaves = warehouse.query(
        "SELECT count(*) AS n FROM drone_images AS i WHERE i.date = %s AND i.error IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM leaf_crops AS c WHERE c.position_id = i.position_id"
        " AND c.date = i.date)",
        [day],
    )["n"][0]
    unusable = warehouse.query(
        "SELECT count(*) AS n FROM drone_images WHERE date = %s AND error IS NOT NULL", [day]
    )["n"][0]
    key = "position_id, date, leaf_crop_idx, disease_type, disease_model_version"
    doubled = warehouse.query(
        f"SELECT count(*) AS n FROM (SELECT {key} FROM disease_grades WHERE date = %s"
        f" GROUP BY {key} HAVING count(*) > 1) AS doubled",
        [day],
    )["n"][0]
    return {
        "fault": name,
        "photos sent": sent,
        "graded": int(graded + no_leaves),
        "unusable, dead-lettered": int(unusable),
        "lost": sent - int(graded + no_leaves + unusable),
        "doubled rows": int(doubled),
        "bad messages sent": 0,
        "dead letters": "-",
        "failed runs (recovered)": failed_runs,
    }
