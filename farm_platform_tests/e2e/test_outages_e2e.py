"""Outages of what a run needs, through the real dagster-daemon: the warehouse (a DuckDB
file locked by another process, PostgreSQL killed -9) down until the requeue sensor has
failed on it too, and the model server stopped mid-run. Each time every photo is graded
exactly once without a human (the fixtures and helpers are test_faults_e2e.py's)."""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import pytest
from dagster import DagsterRunStatus
from test_faults_e2e import CONFIG, assert_graded_exactly_once, first_image_run
from test_pipeline_e2e import Platform

from farm_platform import config
from farm_platform.images.sensors import step_failure_cause
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import wait_for_failed_tick, wait_for_photos
from farm_platform_dev.postgres import PostgresServer

pytestmark = pytest.mark.slow


@pytest.fixture
def platform(make_platform) -> Platform:
    return make_platform()


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
        # The platform's processes open the file only during their turn at its lock file:
        # taken for a moment, it lets this outsider in between two of their connections.
        patient = WarehouseResource(url=platform.warehouse.url, lock_timeout_seconds=60)
        with patient.exclusive_access():
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
    from farm_platform_dev.model_server import ModelServerProcess

    server = ModelServerProcess(config.models_dir(), tmp_path / "server.log")
    platform.environment.update(server.environment())
    platform.environment[config.FARM_OIP_TIMEOUT_SECONDS] = "2"
    # The shipped attempts (4); the back-off, shorter than the shipped 30 s, 2 min, 8 min,
    # still spans the server's restart (10 s, 40 s, 160 s): the photos wait it out.
    platform.environment[config.FARM_RETRY_BACKOFF_SECONDS] = "10"
    assert config.FARM_MAX_PHOTO_ATTEMPTS not in platform.environment
    with server, platform.instance() as instance:
        daemon = platform.daemon().start()
        try:
            photos = platform.simulate(CONFIG)
            first_image_run(instance, daemon, [DagsterRunStatus.STARTED])
            server.stop()
            failed = first_image_run(instance, daemon, [DagsterRunStatus.FAILURE], timeout=180)
            # What its photos' dead letter would name: the op's own error, in one line.
            reason = step_failure_cause(instance, failed.run_id)
            expected = f"OipUnavailable: model server {server.grpc_url} unreachable after 3 tries"
            assert reason and reason.startswith(expected), (reason, daemon.log_tail())

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
            # The photos waited out the restart instead of spending their attempts.
            assert not platform.rows(
                "SELECT count(*) AS n FROM image_arrivals WHERE dead_lettered_at IS NOT NULL"
            )["n"][0]
        finally:
            daemon.stop(kill=True)
