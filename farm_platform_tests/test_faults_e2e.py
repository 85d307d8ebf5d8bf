"""The fault campaign through the real dagster-daemon: break the platform on purpose, let
it recover without a human, and require every photo graded exactly once.

Run workers are killed (alone, with their code server, or with the whole daemon) and the
warehouse is locked past its timeout. Dagster's run monitoring fails a run whose worker
died once its `dagster/max_runtime` has passed (FARM_RUN_TIMEOUT_SECONDS, short here), and
`requeue_failed_photos` hands its photos to a new run.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import duckdb
import pytest
from dagster import DagsterRunStatus, RunsFilter
from test_pipeline_e2e import Platform, assert_grades_match_crops, assert_no_duplicate_keys

from farm_platform import config
from farm_platform.dev.daemon import (
    wait_for_failed_tick,
    wait_for_photos,
    wait_for_sensor_tick_in_progress,
)
from farm_platform.dev.postgres import PostgresServer
from farm_platform.dev.processes import kill_now, processes_in_group
from farm_platform.dev.simulate import FarmConfig
from farm_platform.images.sensors import PHOTOS_TAG

pytestmark = pytest.mark.slow
CONFIG = FarmConfig(positions=4, days=1, start_date=dt.date(2026, 11, 20), seed=13)


@pytest.fixture
def make_platform(local_stack, default_subscription, tmp_path, monkeypatch):
    """`make_platform(warehouse_url=None)`: a Platform with short timeouts (DuckDB unless
    told otherwise)."""
    for name, value in local_stack.environment().items():
        monkeypatch.setenv(name, value)

    def make(warehouse_url: str | None = None) -> Platform:
        platform = Platform(local_stack, tmp_path, warehouse_url=warehouse_url)
        platform.environment[config.FARM_RUN_TIMEOUT_SECONDS] = "20"
        platform.environment[config.FARM_WAREHOUSE_LOCK_SECONDS] = "3"
        return platform

    return make


@pytest.fixture
def platform(make_platform) -> Platform:
    return make_platform()


def first_image_run(instance, daemon, statuses, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in instance.get_run_records(RunsFilter(statuses=statuses)):
            if PHOTOS_TAG in record.dagster_run.tags:
                return record.dagster_run
        assert daemon.alive(), daemon.log_tail()
        time.sleep(0.2)
    pytest.fail(f"no image run in {statuses}\n{daemon.log_tail()}")


def assert_graded_exactly_once(platform: Platform, instance, photos: int) -> None:
    failed = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
    assert failed, "the fault did not fail a run: nothing was tested"
    assert platform.rows("SELECT count(*) AS n FROM drone_images")["n"][0] == photos
    assert_no_duplicate_keys(platform)
    assert_grades_match_crops(platform)


@pytest.mark.parametrize("victim", ["run worker", "run worker and code server", "daemon"])
def test_a_killed_run_loses_and_doubles_nothing(platform, victim):
    with platform.instance() as instance:
        daemon = platform.daemon().start()
        try:
            photos = platform.simulate(CONFIG)
            first_image_run(instance, daemon, [DagsterRunStatus.STARTED])
            group = daemon.process.pid
            deadline = time.monotonic() + 60
            while not processes_in_group(group, "spawn_main"):  # the run worker
                assert time.monotonic() < deadline, daemon.log_tail()
                time.sleep(0.2)
            if victim == "daemon":
                daemon.stop(kill=True)  # the daemon, its code servers and the run worker
                daemon = platform.daemon().start()
            else:
                doomed = processes_in_group(group, "spawn_main")
                if victim == "run worker and code server":
                    code_servers = processes_in_group(group, "api grpc")
                    assert code_servers, "no code server found to kill: nothing was tested"
                    doomed += code_servers
                kill_now(doomed)
            wait_for_photos(
                instance, platform.warehouse, photos, 300, daemon, tolerate_failed_runs=True
            )
            assert_graded_exactly_once(platform, instance, photos)
        finally:
            daemon.stop(kill=True)


def test_a_daemon_killed_mid_tick_loses_and_doubles_nothing(platform):
    """kill -9 of the daemon (and its code server) while the sensor evaluates the tick that
    pulls the day's messages: the tick is never stored, its messages come back, and the
    restarted daemon's sensor hands every photo to a run once."""
    with platform.instance() as instance:
        daemon = platform.daemon().start()
        try:
            photos = []
            wait_for_sensor_tick_in_progress(
                instance, daemon, lambda: photos.append(platform.simulate(CONFIG)), 120
            )
            daemon.stop(kill=True)
            daemon = platform.daemon().start()
            wait_for_photos(
                instance, platform.warehouse, photos[0], 300, daemon, tolerate_failed_runs=True
            )
            assert platform.rows("SELECT count(*) AS n FROM drone_images")["n"][0] == photos[0]
            assert_no_duplicate_keys(platform)
            assert_grades_match_crops(platform)
        finally:
            daemon.stop(kill=True)


def outage_through_the_requeue(
    platform: Platform, instance, daemon, photos: int, end: Callable[[], None]
) -> None:
    """The warehouse outage begun by the caller lasts until the day's run failed and the
    requeue sensor failed on it too; `end` ends it. Then every photo must be graded once,
    by the daemon alone."""
    try:
        first_image_run(instance, daemon, [DagsterRunStatus.FAILURE], timeout=120)
        wait_for_failed_tick(instance, daemon, "requeue_failed_photos", 120)
    finally:
        end()
    wait_for_photos(instance, platform.warehouse, photos, 300, daemon, tolerate_failed_runs=True)
    assert_graded_exactly_once(platform, instance, photos)


def test_a_warehouse_locked_past_its_timeout_loses_and_doubles_nothing(platform):
    """Another process holds the DuckDB file while the run starts (3 s lock timeout) and
    until the requeue sensor has failed on it too: the failed run's photos must survive
    the outage of the very warehouse that records them."""
    with platform.instance() as instance, platform.daemon() as daemon:
        photos = platform.simulate(CONFIG)
        statuses = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
        first_image_run(instance, daemon, statuses)
        holder = duckdb.connect(str(platform.warehouse.duckdb_path))
        outage_through_the_requeue(platform, instance, daemon, photos, end=holder.close)


def test_postgresql_killed_as_a_run_starts_loses_and_doubles_nothing(make_platform):
    """The PostgreSQL warehouse is killed (-9, every backend) as the day's run starts and
    stays down until the requeue sensor has failed on it; restarted on the same data, the
    platform grades every photo once without a human."""
    with PostgresServer(durable=True) as server:
        platform = make_platform(server.url)
        with platform.instance() as instance, platform.daemon() as daemon:
            photos = platform.simulate(CONFIG)
            first_image_run(instance, daemon, [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
            server.kill()
            outage_through_the_requeue(platform, instance, daemon, photos, end=server.restart)


def test_a_model_server_that_dies_mid_run_loses_and_doubles_nothing(platform, tmp_path):
    """The runs grade on a model server (FARM_INFERENCE=oip), which is stopped while the
    day's run is under way: the run fails with a one-line reason, `requeue_failed_photos`
    hands its photos back, and once the server is restarted on its port every photo is
    graded once, through the daemon and its sensors alone."""
    pytest.importorskip("kserve")
    from farm_platform.dev.model_server import ModelServerProcess

    server = ModelServerProcess(config.models_dir(), tmp_path / "server.log")
    platform.environment.update(server.environment())
    platform.environment[config.FARM_OIP_TIMEOUT_SECONDS] = "2"
    # Each retry must find the server back: restarting it takes longer than a retry cycle.
    platform.environment[config.FARM_MAX_PHOTO_ATTEMPTS] = "8"
    with server, platform.instance() as instance:
        daemon = platform.daemon().start()
        try:
            photos = platform.simulate(CONFIG)
            first_image_run(instance, daemon, [DagsterRunStatus.STARTED])
            server.stop()
            failed = first_image_run(instance, daemon, [DagsterRunStatus.FAILURE], timeout=180)
            errors = [
                event.dagster_event.step_failure_data.error
                for event in instance.all_logs(failed.run_id)
                if event.dagster_event and event.dagster_event.is_step_failure
            ]
            assert errors, daemon.log_tail()
            reason = errors[0].cause  # under Dagster's "Error occurred while executing op"
            assert reason.cls_name == "OipUnavailable"
            assert f"model server {server.grpc_url} unreachable" in reason.message
            assert len(reason.message.strip().splitlines()) == 1

            with ModelServerProcess(
                config.models_dir(),
                tmp_path / "restarted.log",
                port=server.port,
                grpc_port=server.grpc_port,
            ):
                wait_for_photos(
                    instance, platform.warehouse, photos, 300, daemon, tolerate_failed_runs=True
                )
            assert_graded_exactly_once(platform, instance, photos)
        finally:
            daemon.stop(kill=True)
