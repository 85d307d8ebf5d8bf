"""Faults between the hosts of `farm-platform hosts up` (marker `hosts`: `make test-hosts`,
root only; minutes each). Each fault hits one day of its own while it grades, and is counted
as the production topology's fault campaign counts (benchmarks/production_faults.py's
`tally`: photos sent, graded, dead-lettered, lost, doubled rows, failed runs), plus the time
from the fault until every photo of the day was graded. Every photo is graded once.

- a worker host's link cut for 60 s while it runs a run, then restored;
- PostgreSQL's host's link flapping (down 20 s, up, down 20 s) while a day grades;
- model-1 unreachable: the runs' clients move to model-2;
- the daemon on control killed -9 and restarted;
- a worker host lost for good (every process killed -9, its link cut): the launcher's
  lost-worker check fails its run and the photos are graded on the other worker.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Iterator

import pytest
from dagster import DagsterRunStatus
from test_hosts_e2e import HostsTopology, pytestmark  # noqa: F401  (the module's markers)
from test_hosts_e2e import topology as topology  # noqa: F401  (the module's hosts)

from farm_platform.config import REPO_ROOT
from farm_platform_dev.daemon import wait_for_photos
from farm_platform_dev.hosts import WORKER_HOSTS, read_state
from farm_platform_dev.hosts_ops import restart_service
from farm_platform_dev.netns import processes_in
from farm_platform_dev.processes import kill_now
from farm_platform_dev.simulate import FarmConfig

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from production_faults import runs_of_day, tally  # noqa: E402

FIRST_DAY = dt.date(2026, 11, 1)
PHOTOS = 6
SETTLE_SECONDS = 900
ROWS: list[dict] = []


def _send(topology: HostsTopology, offset: int) -> tuple[dt.date, int]:
    day = FIRST_DAY + dt.timedelta(days=offset)
    farm = FarmConfig(positions=PHOTOS, days=1, start_date=day, seed=450 + offset)
    return day, topology.simulate(farm)


def _worker_running_a_run(topology: HostsTopology, instance, day: dt.date) -> str:
    """The worker host whose Celery worker took a STARTED run of `day` (waits for one)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for run in runs_of_day(instance, day, [DagsterRunStatus.STARTED]):
            task = f"execute_job[{run.tags.get('dagster-celery/task_id')}] received"
            for host in WORKER_HOSTS:
                if task in topology.worker_log(host):
                    return host
        time.sleep(0.2)
    raise AssertionError(f"no run of {day} started on a worker host")


def _settle_and_count(topology: HostsTopology, name: str, day, sent: int, since: float) -> dict:
    """Wait until every photo of `day` is accounted for and no run is unfinished; count."""
    deadline = since + SETTLE_SECONDS
    with topology.instance() as instance:
        while True:
            left = max(deadline - time.monotonic(), 1.0)
            wait_for_photos(instance, topology.warehouse, 0, left, tolerate_failed_runs=True)
            row = tally(name, topology.warehouse, day, sent, 0)
            if row["graded"] + row["unusable, dead-lettered"] >= sent:
                break
            assert time.monotonic() < deadline, row
            time.sleep(2)
        settled = time.monotonic() - since
        failed = len(runs_of_day(instance, day, [DagsterRunStatus.FAILURE]))
    row = {**tally(name, topology.warehouse, day, sent, failed), "settled (s)": round(settled)}
    ROWS.append(row)
    print("\n" + ", ".join(f"{key}: {value}" for key, value in row.items()))
    assert row["lost"] == 0 and row["doubled rows"] == 0, row
    assert row["graded"] == sent, row
    return row


def _wait_started(topology: HostsTopology, day: dt.date) -> str:
    with topology.instance() as instance:
        return _worker_running_a_run(topology, instance, day)


def test_a_worker_host_s_link_cut_for_60_s_loses_and_doubles_nothing(topology):
    day, sent = _send(topology, 0)
    worker = _wait_started(topology, day)
    layout = topology.hosts.layout
    since = time.monotonic()
    layout.set_link(worker, up=False)
    try:
        time.sleep(60)
    finally:
        layout.set_link(worker, up=True)
    _settle_and_count(topology, f"hosts: {worker}'s link cut 60 s mid-run", day, sent, since)


def test_the_db_host_s_link_flapping_loses_and_doubles_nothing(topology):
    day, sent = _send(topology, 1)
    _wait_started(topology, day)
    layout = topology.hosts.layout
    since = time.monotonic()
    for _flap in range(2):
        layout.set_link("db", up=False)
        try:
            time.sleep(20)
        finally:
            layout.set_link("db", up=True)
        time.sleep(5)
    _settle_and_count(topology, "hosts: db's link down 20 s, up, down 20 s", day, sent, since)


def test_model_1_unreachable_moves_the_clients_to_model_2(topology):
    layout = topology.hosts.layout
    layout.set_link("model-1", up=False)
    try:
        since = time.monotonic()
        day, sent = _send(topology, 2)
        _wait_started(topology, day)
        _settle_and_count(topology, "hosts: model-1 unreachable", day, sent, since)
    finally:
        layout.set_link("model-1", up=True)


def test_the_daemon_killed_and_restarted_on_control_loses_and_doubles_nothing(topology):
    day, sent = _send(topology, 3)
    _wait_started(topology, day)
    state = read_state(topology.hosts.state_dir)
    since = time.monotonic()
    kill_now([int(state["pids"]["control"]["daemon"])])
    restart_service(topology.hosts.state_dir, "control", "daemon")
    _settle_and_count(topology, "hosts: daemon killed -9, restarted", day, sent, since)


def test_a_worker_host_lost_for_good_has_its_photos_graded_on_the_other(topology):
    """Last: the topology keeps one worker host afterwards."""
    day, sent = _send(topology, 4)
    worker = _wait_started(topology, day)
    since = time.monotonic()
    topology.hosts.layout.set_link(worker, up=False)
    kill_now(processes_in(topology.hosts.layout.namespace(worker)))
    row = _settle_and_count(topology, f"hosts: {worker} lost for good", day, sent, since)
    assert row["failed runs (recovered)"] >= 1, row
    other = next(host for host in WORKER_HOSTS if host != worker)
    assert "succeeded" in topology.worker_log(other)


@pytest.fixture(scope="module", autouse=True)
def _print_rows() -> Iterator[None]:
    yield
    for row in ROWS:
        print(" | ".join(str(value) for value in row.values()))
