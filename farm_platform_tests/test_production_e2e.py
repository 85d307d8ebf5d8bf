"""The production topology on this machine (`farm-platform stack up --production`): Dagster's
instance on PostgreSQL, a gRPC code server per code location, the daemon and webserver as
their own processes, two model-server replicas behind one FARM_OIP_URL, and the warehouse
on PostgreSQL, runs launched as Celery tasks on two workers (Redis as the broker). A day is
graded end to end through it, and again after a code server was killed mid-run and the
topology repaired by `stack up`."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from farm_platform import config
from farm_platform.dev.daemon import sensor_ticks, wait_for_photos
from farm_platform.dev.processes import kill_now, listening_addresses, pid_alive
from farm_platform.dev.production import (
    OIP_TOKEN,
    PG_PASSWORD,
    REDIS_PASSWORD,
    Production,
    dead_processes,
    production_down,
    production_up,
    read_production,
)
from farm_platform.dev.simulate import DroneMessagePublisher, FarmConfig, write_farm
from farm_platform.dev.stack import StackInfo, stack_down, stack_up
from farm_platform.images.run_tags import CELERY_QUEUE_TAG, IMAGES_QUEUE
from farm_platform.images.sensors import PHOTOS_TAG
from farm_platform.resources.warehouse import WarehouseResource

pytestmark = pytest.mark.slow
PASSWORD = "pg-secret/with:symbols"
TOKEN = "oip-token-for-the-test"
CREDENTIALS = {PG_PASSWORD: PASSWORD, REDIS_PASSWORD: "redis-secret/x", OIP_TOKEN: TOKEN}


class Topology:
    def __init__(self, state_dir: Path, info: StackInfo, production: Production):
        self.state_dir, self.info, self.production = state_dir, info, production
        from urllib.parse import quote

        self.environment = {
            **info.environment(),
            **production.environment(quote(PASSWORD, safe="")),
            config.FARM_FIELD_MAP: str(state_dir / "positions.csv"),
            **CREDENTIALS,
        }
        self.warehouse = WarehouseResource(url=self.environment[config.FARM_WAREHOUSE])

    def simulate(self, farm: FarmConfig) -> int:
        with config.process_environment(self.environment):
            summary = write_farm(
                farm,
                self.info.bucket_url(),
                self.state_dir / "positions.csv",
                DroneMessagePublisher(self.info.project),
                truth_url=str(self.state_dir / "truth"),
            )
        return summary.images

    @contextlib.contextmanager
    def instance(self) -> Iterator[DagsterInstance]:
        with config.process_environment(self.environment):
            instance = DagsterInstance.from_config(str(self.production.dagster_home))
            try:
                yield instance
            finally:
                instance.dispose()

    def pids(self) -> dict[str, int]:
        return read_production(self.state_dir)["pids"]


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    # Not under pytest's tmp folders (0700): PostgreSQL runs as another user.
    state_dir = Path(tempfile.mkdtemp(prefix="farm-production-"))
    state_dir.chmod(0o755)
    try:
        with config.process_environment(CREDENTIALS):
            info = stack_up(state_dir)
            production = production_up(
                state_dir, _settings(info), replicas=2, max_concurrent_runs=4, quick_polling=True
            )
        yield Topology(state_dir, info, production)
    finally:
        production_down(state_dir)
        stack_down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


def _settings(info: StackInfo) -> dict[str, str]:
    """The stack's variables, and the tests' short intervals and run timeout."""
    return {
        **info.environment(),
        config.FARM_SENSOR_INTERVAL_SECONDS: "5",
        config.FARM_RUN_TIMEOUT_SECONDS: "30",
    }


def graded_rows_per_photo(topology: Topology) -> dict[tuple[str, str], int]:
    rows = topology.warehouse.query(
        "SELECT position_id, date, count(*) AS n FROM disease_grades GROUP BY position_id, date"
    )
    return {(r["position_id"], str(r["date"])): r["n"] for r in rows.to_dicts()}


def test_a_day_is_graded_through_the_production_topology(topology):
    photos = topology.simulate(FarmConfig(positions=4, days=1, seed=41))
    with topology.instance() as instance:
        wait_for_photos(instance, topology.warehouse, photos, 420)
        # Dagster's own storage is PostgreSQL, not SQLite files in DAGSTER_HOME.
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        runs = [
            record.dagster_run
            for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
            if PHOTOS_TAG in record.dagster_run.tags
        ]
        assert runs
        said = {
            event.message
            for run in runs
            for event in instance.all_logs(run.run_id)
            if "models on the model server" in (event.message or "")
        }
        assert said, "the image runs did not grade on the model servers"
        assert all(topology.environment[config.FARM_OIP_URL] in message for message in said)
        # Each image run was a Celery task, routed to the images worker by its queue tag.
        assert all(run.tags.get(CELERY_QUEUE_TAG) == IMAGES_QUEUE for run in runs)
        assert all(run.tags.get("dagster-celery/task_id") for run in runs)
    worker_log = (topology.state_dir / "worker-images.log").read_text()
    for run in runs:
        assert f"[{run.tags['dagster-celery/task_id']}] succeeded" in worker_log, run.run_id
    # Each photo's grades once: 5 diseases for each of its leaves.
    per_photo = graded_rows_per_photo(topology)
    assert len(per_photo) == photos
    assert all(n % 5 == 0 and n > 0 for n in per_photo.values())
    assert not list((topology.production.dagster_home).glob("*.db")), "SQLite storage appeared"
    # Every process binds loopback only.
    ports = [topology.production.pg_port, topology.production.webserver_port]
    ports += list(topology.production.code_server_ports.values())
    ports += topology.production.replica_grpc_ports
    for port in ports:
        assert listening_addresses(port) == {"127.0.0.1"}, port


def test_a_code_server_killed_mid_run_is_repaired_and_loses_nothing(topology):
    """kill -9 of the image location's code server while a day is graded; `stack up`
    restarts it in place, and every photo is graded once, whatever became of the run the
    dead server had launched (run monitoring fails an orphan, the requeue sensor hands its
    photos back)."""
    before = graded_rows_per_photo(topology)
    photos = topology.simulate(FarmConfig(positions=4, days=1, seed=43, start_date=_day(1)))
    with topology.instance() as instance:
        deadline = time.monotonic() + 300
        while not instance.get_run_records(
            RunsFilter(statuses=[DagsterRunStatus.STARTED]), limit=1
        ):
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.2)
        victim = topology.pids()["code_server:farm_platform"]
        kill_now([victim])
        assert not pid_alive(victim)
        assert "code_server:farm_platform" in dead_processes(
            read_production(topology.state_dir), topology.state_dir
        )
        _repair(topology)
        assert topology.pids()["code_server:farm_platform"] != victim
        wait_for_photos(
            instance, topology.warehouse, len(before) + photos, 600, tolerate_failed_runs=True
        )
    after = graded_rows_per_photo(topology)
    assert len(after) == len(before) + photos
    assert all(n % 5 == 0 and n > 0 for n in after.values())


def test_a_daemon_killed_and_restarted_keeps_its_sensor_state_in_postgresql(topology):
    """kill -9 of the one daemon; `stack up --production` starts one again. The tick history
    is still in PostgreSQL, the sensors go on ticking, and a new day is graded."""
    with topology.instance() as instance:
        before = sensor_ticks(instance, "drone_image_sensor", limit=1000)
        assert before, "the sensor never ticked"
        victim = topology.pids()["daemon"]
        kill_now([victim])
        _repair(topology)
        assert topology.pids()["daemon"] != victim
        after = sensor_ticks(instance, "drone_image_sensor", limit=1000)
        assert {t.tick_id for t in before} <= {t.tick_id for t in after}
        graded = len(graded_rows_per_photo(topology))
        photos = topology.simulate(FarmConfig(positions=4, days=1, seed=47, start_date=_day(2)))
        wait_for_photos(instance, topology.warehouse, graded + photos, 420)
        newer = sensor_ticks(instance, "drone_image_sensor", limit=1000)
        assert max(t.tick_id for t in newer) > max(t.tick_id for t in after)


def _repair(topology: Topology) -> None:
    """`stack up --production` from the command line, as an operator would repair it."""
    repair = subprocess.run(
        [str(Path(sys.executable).with_name("farm-platform")), "stack", "up", "--production"]
        + ["--state-dir", str(topology.state_dir)],
        env={**os.environ, **_settings(topology.info), **CREDENTIALS},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert repair.returncode == 0, repair.stderr[-2000:]


def _day(offset: int):
    import datetime as dt

    return FarmConfig(positions=4, days=1, seed=41).dates[0] + dt.timedelta(days=offset)


def test_stack_down_stops_every_process_of_the_topology(topology):
    pids = topology.pids()
    assert production_down(topology.state_dir)
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    assert read_production(topology.state_dir) is None
