"""Liveness, not pids (issue 40): a code server is alive when it answers over gRPC.

A real `dagster code-server start` of a one-asset location is paused with SIGSTOP: its pid
lives, Dagster's own health check would still say SERVING after it is continued, and the
check here (`GetServerId`, forwarded to the serving child) says it is gone. The watchdog of
the production topology replaces it after its missed answers; `stack up --production`
replaces one that does not answer. The same watchdog fails a STARTING run whose Celery task
a worker took and lost, at the lost-worker grace instead of run monitoring's start timeout.
The topology's own faults (a code server paused 90 s mid-tick, a worker and Redis killed
before the run began) are in test_production_faults.py (`make test-faults`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import DagsterRun

from farm_platform import config, config_values
from farm_platform.admin.code_server_check import code_server_answers
from farm_platform.cli import main
from farm_platform_dev.liveness import kill_process_group
from farm_platform_dev.processes import child_pids, free_port, pid_alive
from farm_platform_dev.topology_processes import (
    PRODUCTION_FILE,
    read_production,
    replace_silent_code_servers,
    start_code_server,
)
from farm_platform_dev.watchdog import Watchdog, topology_status

TINY_LOCATION = """
from dagster import Definitions, asset


@asset
def tiny() -> int:
    return 1


defs = Definitions(assets=[tiny])
"""


@pytest.fixture
def code_server(tmp_path: Path, monkeypatch) -> Iterator[dict[str, Any]]:
    """A real code server of a one-asset location, recorded in production.json as the
    production topology records its own; yields that state."""
    (tmp_path / "tiny_location.py").write_text(TINY_LOCATION)
    _importable_from(tmp_path, monkeypatch)
    port = free_port()
    pid = start_code_server("tiny", "tiny_location", port, tmp_path, {})
    state = {
        "code_server_ports": {"tiny": port},
        "replica_ports": [],
        "pids": {"code_server:tiny": pid},
    }
    (tmp_path / PRODUCTION_FILE).write_text(json.dumps(state))
    try:
        yield state
    finally:
        # SIGKILL, which a stopped process takes too.
        for recorded in {pid, *(read_production(tmp_path) or state)["pids"].values()}:
            kill_process_group(recorded, f"-p {port} ")


@pytest.mark.slow
def test_a_paused_code_server_is_dead_while_its_pid_lives_and_the_watchdog_replaces_it(
    code_server, tmp_path
):
    port, old = code_server["code_server_ports"]["tiny"], code_server["pids"]["code_server:tiny"]
    assert code_server_answers(port, 2)
    old_children = child_pids(old)
    assert old_children, "the code server serves from no child: nothing to test"
    assert main(["code-server-check", "--port", str(port), "--timeout", "2"]) == 0
    os.kill(old, signal.SIGSTOP)
    assert pid_alive(old) and not code_server_answers(port, 1)
    # What the Kubernetes liveness probe runs says the same, and so does `stack status`.
    assert main(["code-server-check", "--port", str(port), "--timeout", "1"]) == 1
    lines, healthy = topology_status(tmp_path)
    assert not healthy
    assert any(line.startswith("code_server:tiny: NOT ANSWERING") for line in lines), lines
    watchdog = Watchdog(
        tmp_path, interval=0, failures=2, timeout=1, modules={"tiny": "tiny_location"}
    )
    assert watchdog.check_code_servers() == []  # one missed answer: not yet
    assert watchdog.check_code_servers() == ["tiny"]
    # The old parent and its child are gone, the new one is recorded and answers.
    assert not pid_alive(old) and not any(pid_alive(child) for child in old_children)
    new = read_production(tmp_path)["pids"]["code_server:tiny"]
    assert new != old and pid_alive(new)
    assert code_server_answers(port, 2)
    assert watchdog.check_code_servers() == [] and watchdog.misses == {"tiny": 0}
    # One that answers once the watchdog holds the lock (`stack up` replaced it meanwhile)
    # is left as it is.
    assert watchdog.replace("tiny") is None
    assert read_production(tmp_path)["pids"]["code_server:tiny"] == new and pid_alive(new)


@pytest.mark.slow
def test_stack_up_replaces_a_code_server_that_runs_but_does_not_answer(code_server, tmp_path):
    old = code_server["pids"]["code_server:tiny"]
    assert replace_silent_code_servers(code_server, tmp_path, set()) == set()
    assert pid_alive(old), "an answering code server was replaced"
    os.kill(old, signal.SIGSTOP)
    assert replace_silent_code_servers(code_server, tmp_path, set()) == {"code_server:tiny"}
    assert not pid_alive(old)
    # One whose process is already known dead is left to `stack up`'s own restart.
    assert replace_silent_code_servers(code_server, tmp_path, {"code_server:tiny"}) == set()


def _importable_from(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code servers this module starts import `tiny_location` from `folder` (and the
    project as before: an install, or a checkout already on PYTHONPATH)."""
    paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


def test_watchdog_settings_are_validated(monkeypatch):
    monkeypatch.setenv(config.FARM_WATCHDOG_FAILURES, "2.5")
    with pytest.raises(config.ConfigError, match="FARM_WATCHDOG_FAILURES.*whole number"):
        config_values.watchdog_failures()
    monkeypatch.setenv(config.FARM_WATCHDOG_INTERVAL_SECONDS, "0")
    with pytest.raises(config.ConfigError, match="FARM_WATCHDOG_INTERVAL_SECONDS.*greater than 0"):
        config_values.watchdog_interval_seconds()
    monkeypatch.delenv(config.FARM_WATCHDOG_FAILURES)
    assert config_values.watchdog_failures() == config.DEFAULT_WATCHDOG_FAILURES


def test_a_starting_run_whose_worker_took_its_task_and_died_is_failed_at_the_grace(tmp_path):
    """The worker (and Redis) died after a pool process took the run's task (Celery says
    STARTED) and before the run began (Dagster says STARTING): run monitoring would wait
    out its start timeout. The watchdog's check fails it once its worker has not been
    running the task for the lost-worker grace; a task its worker runs, a task still
    queued, a run not yet sent, and a STARTED run (run monitoring's) are left alone."""
    from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

    from farm_platform.launcher.celery_launcher import fail_runs_lost_before_start

    (tmp_path / "dagster.yaml").write_text(
        "run_launcher:\n  module: farm_platform.launcher.celery_launcher\n"
        "  class: FarmCeleryRunLauncher\n  config:\n    broker: redis://127.0.0.1:1/0\n"
        "    lost_worker_grace_seconds: 0\n"
    )
    tasks = {"lost": "STARTED", "running": "STARTED", "queued": "PENDING", "monitored": "STARTED"}
    active = {"images@vm": [{"id": "running"}]}
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        instance.run_launcher.celery = SimpleNamespace(
            AsyncResult=lambda task: SimpleNamespace(
                state=tasks[task], info={"hostname": "images@vm"}
            ),
            control=SimpleNamespace(
                inspect=lambda destination, timeout: SimpleNamespace(active=lambda: active)
            ),
        )
        for task in [*tasks, None]:
            status = DagsterRunStatus.STARTED if task == "monitored" else DagsterRunStatus.STARTING
            tags = {DAGSTER_CELERY_TASK_ID_TAG: task} if task else {}
            instance.add_run(
                DagsterRun(job_name="image_job", run_id=f"run-{task}", status=status, tags=tags)
            )
        failed = fail_runs_lost_before_start(instance)
        assert list(failed) == ["run-lost"]
        assert (
            "the worker died" in failed["run-lost"] and "before the run began" in failed["run-lost"]
        )
        statuses = {run.run_id: run.status for run in instance.get_runs()}
        assert statuses == {
            "run-lost": DagsterRunStatus.FAILURE,
            "run-running": DagsterRunStatus.STARTING,
            "run-queued": DagsterRunStatus.STARTING,
            "run-monitored": DagsterRunStatus.STARTED,
            "run-None": DagsterRunStatus.STARTING,
        }
        assert fail_runs_lost_before_start(instance) == {}  # a failed run is not failed again


@pytest.mark.slow
def test_a_code_server_that_never_answers_is_killed_and_named(tmp_path, monkeypatch):
    """One whose definitions never finish loading holds the port and answers nothing: after
    the wait it is killed (a retry can have the port) and the error names it and its log."""
    from farm_platform_dev.emulators import StackError
    from farm_platform_dev.liveness import wait_until_answers
    from farm_platform_dev.processes import spawn

    (tmp_path / "stuck_location.py").write_text("import time\n\ntime.sleep(600)\n")
    _importable_from(tmp_path, monkeypatch)
    port, log = free_port(), tmp_path / "code-server-stuck.log"
    args = [str(Path(sys.executable).with_name("dagster")), "code-server", "start"]
    args += ["-h", "127.0.0.1", "-p", str(port), "-m", "stuck_location"]
    server = spawn(args, log, env=dict(os.environ), detached=True)
    try:
        with pytest.raises(StackError, match=f"stuck on 127.0.0.1:{port} did not answer in 8 s"):
            wait_until_answers(port, server.pid, "stuck", log, timeout=8)
        server.wait(timeout=10)
    finally:
        kill_process_group(server.pid, "")


@pytest.mark.slow
def test_a_task_a_dead_worker_took_before_it_began_fails_its_starting_run(tmp_path, monkeypatch):
    """On the real broker: a worker took one run's task from the queue (Redis keeps it among
    the unacknowledged messages, for an hour) and died before its pool began it, so Celery
    still says PENDING. No live worker holds it: its STARTING run is failed at the grace.
    The other run's task still waits in the queue: no verdict."""
    import subprocess

    from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

    from farm_platform.launcher.celery_launcher import fail_runs_lost_before_start
    from farm_platform_dev.processes import stop_pids
    from farm_platform_dev.production import REDIS_PASSWORD, start_redis

    monkeypatch.setenv(REDIS_PASSWORD, "redis-secret")
    port = free_port()
    redis_pid = start_redis(port, tmp_path)
    broker = f"redis://:redis-secret@127.0.0.1:{port}/0"
    (tmp_path / "dagster.yaml").write_text(
        "run_launcher:\n  module: farm_platform.launcher.celery_launcher\n"
        f"  class: FarmCeleryRunLauncher\n  config:\n    broker: {broker}\n"
        f"    backend: {broker}\n    default_queue: images\n    lost_worker_grace_seconds: 0\n"
    )
    # The worker: takes the oldest task, acknowledges nothing, dies (kill -9 has no goodbye).
    worker = (
        "import os, sys\nfrom kombu import Connection\n"
        f"with Connection({broker!r}) as connection:\n"
        "    message = connection.default_channel.basic_get('images', no_ack=False)\n"
        "    print(message.headers['id'], flush=True)\n    os._exit(0)\n"
    )
    try:
        with DagsterInstance.from_config(str(tmp_path)) as instance:
            for name in ("taken", "queued"):
                instance.run_launcher.celery.send_task(
                    "execute_job", args=[{}], queue="images", task_id=f"task-{name}"
                )
                instance.add_run(
                    DagsterRun(
                        job_name="image_job",
                        run_id=f"run-{name}",
                        status=DagsterRunStatus.STARTING,
                        tags={DAGSTER_CELERY_TASK_ID_TAG: f"task-{name}"},
                    )
                )
            took = subprocess.run(
                [sys.executable, "-c", worker], capture_output=True, text=True, check=True
            )
            assert took.stdout.strip() == "task-taken"
            failed = fail_runs_lost_before_start(instance)
            assert list(failed) == ["run-taken"], failed
            assert "was taken from the queue and no live worker has held it" in failed["run-taken"]
            assert instance.get_run_by_id("run-queued").status == DagsterRunStatus.STARTING
    finally:
        stop_pids([redis_pid], f":{port}")
