"""Issue 40, item 2, on the production topology (`stack up --production`, two model-server
replicas) with the shipped retry settings: every replica is down for 3 minutes while a
day's photos arrive. The runs fail within seconds on OipUnavailable; the photos back off
(30 s, 2 min, 8 min) instead of spending their 4 runs in the first minute, so once
`stack up --production` brings the replicas back every photo is graded once: 0 lost,
0 doubled, 0 dead-lettered. Minutes of waiting: `make test-faults` runs it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from dagster import DagsterRunStatus
from production_topology import (
    Topology,
    assert_graded_once,
    graded_rows_per_photo,
    production_topology,
    repair_topology,
    runs_of_day,
    topology_settings,
    wait_for,
)

from farm_platform import config
from farm_platform.images.sensors import step_failure_cause
from farm_platform_dev.daemon import wait_for_photos
from farm_platform_dev.processes import child_pids, kill_now, pid_alive
from farm_platform_dev.simulate import FarmConfig

pytestmark = [pytest.mark.slow, pytest.mark.fault_campaign, pytest.mark.timeout(1800)]
OUTAGE_SECONDS = 180


def shipped_retries(info) -> dict[str, str]:
    """The production tests' settings, but the shipped attempts and back-off."""
    settings = topology_settings(info)
    for name in (config.FARM_RETRY_BACKOFF_SECONDS, config.FARM_MAX_PHOTO_ATTEMPTS):
        settings.pop(name, None)
    return settings


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    with production_topology(shipped_retries) as topology:
        yield topology


def test_every_model_server_replica_down_for_3_minutes_costs_no_photo(topology):
    farm = FarmConfig(positions=4, days=1, seed=71)
    day = str(farm.dates[0])
    replicas = [pid for name, pid in topology.pids().items() if name.startswith("model_server:")]
    assert len(replicas) == 2
    kill_now([pid for replica in replicas for pid in (replica, *child_pids(replica))])
    down_since = time.monotonic()
    assert not any(pid_alive(pid) for pid in replicas)
    photos = topology.simulate(farm)
    with topology.instance() as instance:

        def failed_runs() -> list:
            return [
                run
                for run in runs_of_day(instance, day)
                if instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
            ]

        wait_for(failed_runs, OUTAGE_SECONDS, "a run failing on the model servers", instance)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_since)))
        failed_in_outage = failed_runs()
        # Nothing spent its attempts during the outage.
        assert _dead_lettered(topology) == 0
        repair_topology(topology)
        wait_for_photos(instance, topology.warehouse, photos, 1200, tolerate_failed_runs=True)
        causes = {step_failure_cause(instance, run.run_id) for run in failed_in_outage}
        print(
            f"{len(failed_in_outage)} run(s) failed in the {OUTAGE_SECONDS} s outage;"
            f" {len(failed_runs())} in all; causes: {causes}"
        )
    assert all(cause and cause.startswith("OipUnavailable: model servers") for cause in causes), (
        causes
    )
    assert_graded_once(topology, [day], photos)
    assert len(graded_rows_per_photo(topology)) == photos  # 0 lost
    assert _dead_lettered(topology) == 0


def _dead_lettered(topology: Topology) -> int:
    return topology.warehouse.query(
        "SELECT count(*) AS n FROM image_arrivals WHERE dead_lettered_at IS NOT NULL"
    )["n"][0]
