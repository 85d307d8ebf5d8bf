"""Issue 40's long faults on the production topology (`make test-faults`, marker
`fault_campaign`; `make test` leaves them out): each one is repaired by the topology itself,
with no `stack up` by hand, and counts lost and doubled photos as the other fault tests do.

- A code server paused (SIGSTOP) for 90 s while the image sensor's tick runs, then
  continued: its serving child shuts itself down after 30 s without its parent's heartbeat,
  and the parent keeps its pid and port. The watchdog (`stack watch`) finds it silent over
  gRPC and replaces it; the tick's messages come back and every photo is graded once.
- The `images` worker and Redis killed -9 after the worker took a run's task (Celery says
  STARTED) and before the run began (Dagster says STARTING), then restarted: the watchdog
  fails the run at the lost-worker grace, not run monitoring's start timeout, and the
  requeue sensor hands its photos to a new run.
- The `images` worker and its pool killed -9 while a run grades: the run is failed with
  "the worker died" and its photos are graded by a new run; Redis killed -9 while a run
  grades and restarted on its append-only file: the run succeeds, no run fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from functools import partial
from types import SimpleNamespace

import pytest
from dagster import DagsterRunStatus
from production_topology import (
    Topology,
    assert_graded_once,
    farm_day,
    first_said_at,
    graded_rows_per_photo,
    grades_held,
    grading_run,
    repair_topology,
    runs_of_day,
    topology_fixture,  # noqa: F401 (the fixture `topology`)
    wait_for,
)

from farm_platform import config
from farm_platform_dev.daemon import wait_for_photos, wait_for_sensor_tick_in_progress
from farm_platform_dev.processes import child_pids, kill_now, pid_alive
from farm_platform_dev.production import REDIS_PASSWORD, read_production
from farm_platform_dev.watchdog import topology_status

pytestmark = [pytest.mark.fault_campaign, pytest.mark.slow]
PAUSE_SECONDS = 90
SERVER = f"code_server:{config.IMAGE_LOCATION}"
# The stated time: every photo of the day graded within this long after the fault began.
GRADED_WITHIN_SECONDS = 300


def _daemon_view(topology: Topology) -> SimpleNamespace:
    """What wait_for_sensor_tick_in_progress asks of a daemon, for the topology's own."""

    def log_tail() -> str:
        log = topology.state_dir / "daemon.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    return SimpleNamespace(alive=lambda: pid_alive(topology.pids()["daemon"]), log_tail=log_tail)


def test_a_code_server_paused_90_s_mid_tick_is_replaced_and_loses_nothing(topology):
    day = farm_day(20)
    graded = len(graded_rows_per_photo(topology))
    sent: list[int] = []
    with topology.instance() as instance:
        wait_for_sensor_tick_in_progress(
            instance,
            _daemon_view(topology),
            lambda: sent.append(topology.photograph_day(20, positions=8, seed=71)),
            300,
        )
        victim = topology.pids()[SERVER]
        paused = time.monotonic()
        os.kill(victim, signal.SIGSTOP)
        try:
            # What an operator sees meanwhile (before the watchdog's third missed answer).
            with config.process_environment(topology.environment):
                lines, healthy = topology_status(topology.state_dir)
            assert not healthy
            assert any(
                line.startswith(f"{SERVER}: NOT ANSWERING (pid {victim} runs)") for line in lines
            )
            assert re.match(r"arrival queue: \d+ photo", lines[-1]), lines[-1]
            time.sleep(PAUSE_SECONDS - (time.monotonic() - paused))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)
        # The watchdog replaced it meanwhile: the paused parent and its child are gone.
        assert not pid_alive(victim), "the paused code server was never replaced"
        assert topology.pids()[SERVER] != victim
        watchdog_log = (topology.state_dir / "watchdog.log").read_text()
        assert "code server farm_platform replaced" in watchdog_log
        wait_for_photos(
            instance,
            topology.warehouse,
            graded + sent[0],
            GRADED_WITHIN_SECONDS - (time.monotonic() - paused),
            tolerate_failed_runs=True,
        )
        print(f"paused {PAUSE_SECONDS} s: every photo graded {time.monotonic() - paused:.0f} s")
    assert_graded_once(topology, [day.isoformat()], sent[0])


def test_a_run_whose_worker_and_redis_died_before_it_began_is_failed_at_the_grace(topology):
    day = farm_day(21).isoformat()
    graded = len(graded_rows_per_photo(topology))
    sent = []
    with topology.instance() as instance:
        victim = _hold_the_run_of_a_taken_task(
            topology,
            instance,
            day,
            lambda: sent.append(topology.photograph_day(21, positions=3, seed=73)),
        )
        worker = topology.pids()["worker:images"]
        pool = child_pids(worker)
        assert instance.get_run_by_id(victim.run_id).status == DagsterRunStatus.STARTING, (
            "the run began before its worker was stopped: nothing to test, rerun"
        )
        faulted = time.monotonic()
        kill_now([worker, *pool, topology.pids()["redis"]])
        repair_topology(topology)  # Redis and the worker come back; the run's task is lost
        wait_for_photos(
            instance,
            topology.warehouse,
            graded + sent[0],
            GRADED_WITHIN_SECONDS,
            tolerate_failed_runs=True,
        )
        print(f"worker and Redis killed: every photo graded {time.monotonic() - faulted:.0f} s")
        assert instance.get_run_by_id(victim.run_id).status == DagsterRunStatus.FAILURE
        # Failed by the lost-worker check, not by run monitoring's start timeout.
        assert first_said_at(instance, victim.run_id, "before the run began")
        assert not first_said_at(instance, victim.run_id, "to start")
        assert {run.status for run in runs_of_day(instance, day)} <= {
            DagsterRunStatus.SUCCESS,
            DagsterRunStatus.FAILURE,
        }
    assert_graded_once(topology, [day], sent[0])


def _hold_the_run_of_a_taken_task(topology: Topology, instance, day: str, start):
    """Call `start`, then stop (SIGSTOP) the `images` worker's pool the moment one of its
    processes takes a run's task of `day`, before the run begins; returns that run.

    Celery's result backend publishes each task state it stores, so the pool is stopped on
    the STARTED message itself: polling the states instead would miss a run whose pool
    process begins it within milliseconds."""
    import redis

    state = read_production(topology.state_dir)
    broker = redis.Redis(
        port=int(state["redis_port"]), password=topology.environment[REDIS_PASSWORD]
    )
    states = broker.pubsub(ignore_subscribe_messages=True)
    states.psubscribe("celery-task-meta-*")
    try:
        start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            message = states.get_message(timeout=1.0)
            task_state = json.loads(message["data"]) if message else {}
            if task_state.get("status") != "STARTED":
                continue
            pool = child_pids(topology.pids()["worker:images"])
            for pid in pool:  # held where it is: it took the task, it does not begin the run
                os.kill(pid, signal.SIGSTOP)
            task = task_state["task_id"]
            return wait_for(partial(_run_of_task, instance, day, task), 30, f"task {task}'s run")
        raise AssertionError("no run's task of the day was taken within 300 s")
    finally:
        states.close()
        broker.close()


def _run_of_task(instance, day: str, task: str):
    for run in runs_of_day(instance, day):
        if run.tags.get("dagster-celery/task_id") == task:
            return run
    return None


def test_a_celery_worker_killed_mid_run_loses_no_photo(topology):
    """kill -9 of the `images` worker and its pool (its machine lost) while it executes a
    run: nothing updates the run's task, which stays STARTED in Redis; the launcher's health
    check finds no worker running it (farm_platform.launcher.celery_launcher), run monitoring
    fails the run, and its photos go to a new run on the worker `stack up --production`
    restarted. Every photo graded once."""
    day = farm_day(4).isoformat()
    graded = len(graded_rows_per_photo(topology))
    with topology.instance() as instance:
        with grades_held(topology):  # the run grades, then waits to commit: mid-run
            photos = topology.photograph_day(4, positions=3, seed=59)
            victim = wait_for(lambda: grading_run(instance, day), 120, "a run of the day grading")
            worker = topology.pids()["worker:images"]
            kill_now([worker, *child_pids(worker)])  # the worker and its pool
        repair_topology(topology)
        wait_for_photos(
            instance, topology.warehouse, graded + photos, 300, tolerate_failed_runs=True
        )
        assert instance.get_run_by_id(victim.run_id).status == DagsterRunStatus.FAILURE
        assert first_said_at(instance, victim.run_id, "the worker died")
    assert_graded_once(topology, [day], photos)


def test_redis_restarted_mid_run_loses_no_photo_and_fails_no_run(topology):
    """kill -9 of Redis (the broker and result backend) while a run executes; `stack up
    --production` restarts it on its append-only file. The running run's task is still
    STARTED there, so run monitoring leaves the run alone and it succeeds; the workers
    reconnect and take the next run. Every photo graded once, no run failed."""
    day = farm_day(5).isoformat()
    graded = len(graded_rows_per_photo(topology))
    with topology.instance() as instance:
        with grades_held(topology):
            photos = topology.photograph_day(5, positions=3, seed=61)
            running = wait_for(lambda: grading_run(instance, day), 120, "a run of the day grading")
            victim = topology.pids()["redis"]
            kill_now([victim])
            repair_topology(topology)
            assert topology.pids()["redis"] != victim
        # After the restart: a new day's photos are a new task through the broker.
        photos += topology.photograph_day(6, positions=3, seed=67)
        wait_for_photos(
            instance, topology.warehouse, graded + photos, 300, tolerate_failed_runs=True
        )
        assert instance.get_run_by_id(running.run_id).status == DagsterRunStatus.SUCCESS
        for date in (day, farm_day(6).isoformat()):
            statuses = {run.status for run in runs_of_day(instance, date)}
            assert statuses == {DagsterRunStatus.SUCCESS}, (date, statuses)
    assert_graded_once(topology, [day, farm_day(6).isoformat()], photos)
