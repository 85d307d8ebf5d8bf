"""The fault campaign through the real dagster-daemon: break the platform on purpose, let
it recover without a human, and require every photo graded exactly once.

Run workers are killed (with their code server, or with the whole daemon), and the daemon
mid-tick. The outages of the services a run needs (the warehouse, the model server)
are in test_outages_e2e.py: two modules, so that two pytest workers share them. Dagster's
run monitoring fails a run whose worker died once its `dagster/max_runtime` has passed
(FARM_RUN_TIMEOUT_SECONDS, short here), and `requeue_failed_photos` hands its photos to a
new run.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from dagster import DagsterRunStatus, RunsFilter
from test_pipeline_e2e import Platform, assert_grades_match_crops, assert_no_duplicate_keys

from farm_platform.images.run_tags import PHOTOS_TAG
from farm_platform_dev.daemon import (
    wait_for_photos,
    wait_for_sensor_tick_in_progress,
)
from farm_platform_dev.processes import kill_now, processes_in_group
from farm_platform_dev.simulate import FarmConfig

pytestmark = pytest.mark.slow
CONFIG = FarmConfig(positions=4, days=1, start_date=dt.date(2026, 11, 20), seed=13)


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


# "run worker" alone is a subset of the second case (the same run monitoring and requeue
# bring the photos back; there the daemon restarts the code server too): kept out of the
# suite's time budget, measured as its own row by benchmarks/fault_campaign.py.
@pytest.mark.parametrize("victim", ["run worker and code server", "daemon"])
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
                code_servers = processes_in_group(group, "api grpc")
                assert code_servers, "no code server found to kill: nothing was tested"
                kill_now(processes_in_group(group, "spawn_main") + code_servers)
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
