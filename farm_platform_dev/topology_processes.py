"""The production topology's recorded processes: its state file (production.json), how a
recorded pid is told from a reused one, and how each process is started or found dead.
Below `production` (which starts the whole topology) and `watchdog` (which repairs it)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from farm_platform import config, config_values
from farm_platform.admin.code_server_check import code_server_answers
from farm_platform.images.run_tags import ANALYTICS_QUEUE, IMAGES_QUEUE
from farm_platform_dev.emulators import StackError
from farm_platform_dev.liveness import kill_process_group, say, wait_until_answers
from farm_platform_dev.processes import pid_alive, spawn
from farm_platform_dev.webservers import WEBSERVERS, port_key

PRODUCTION_FILE = "production.json"
# PgBouncer's configuration and userlist (farm_platform_dev.pooler).
POOLER_FOLDER = "pgbouncer"
# One Celery worker per queue (farm_platform.images.run_tags).
WORKER_QUEUES = (IMAGES_QUEUE, ANALYTICS_QUEUE)
CODE_LOCATIONS = {
    config.IMAGE_LOCATION: "farm_platform.images.definitions",
    "farm_platform_analytics": "farm_platform.analytics.definitions",
}
# Code servers import torch-free definitions, but dbt's manifest and dagster itself take a
# while on a loaded 2-core machine.
START_TIMEOUT_SECONDS = 180.0


def read_state_file(path: Path) -> dict[str, Any] | None:
    """A topology's recorded state (JSON), None if there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_state_file(path: Path, state: dict[str, Any]) -> None:
    """`state` as `path`, replaced whole (a reader never sees half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def read_production(state_dir: Path) -> dict[str, Any] | None:
    return read_state_file(state_dir / PRODUCTION_FILE)


def write_production(state_dir: Path, state: dict[str, Any]) -> None:
    write_state_file(state_dir / PRODUCTION_FILE, state)


def dead_processes(state: dict[str, Any], state_dir: Path) -> list[str]:
    """The topology's processes that do not run (never started, or died), by state key."""
    expected = ["postgres", *(["pgbouncer"] if state.get("pooler_port") else [])]
    expected += ["redis", *(f"code_server:{name}" for name in CODE_LOCATIONS)]
    expected += ["daemon", *WEBSERVERS, *(f"worker:{queue}" for queue in WORKER_QUEUES)]
    expected += [f"model_server:{index}" for index in range(len(state["replica_ports"]))]
    expected += ["watchdog"]
    return [
        key
        for key in expected
        if key not in state["pids"]
        or not pid_alive(int(state["pids"][key]), process_marker(state, key, state_dir))
    ]


def process_marker(state: dict[str, Any], key: str, state_dir: Path) -> str:
    """What the recorded process's command line holds, so that a reused pid is not ours."""
    if key == "postgres":
        return str(state_dir / "postgres")
    if key == "pgbouncer":
        return str(state_dir / POOLER_FOLDER)
    if key.startswith("code_server:"):
        return f"-p {state['code_server_ports'][key.split(':', 1)[1]]} "
    if key in WEBSERVERS:
        return f"-p {state[port_key(key)]} "
    if key.startswith("model_server:"):
        return f"--grpc-port {state['replica_ports'][int(key.split(':', 1)[1])][1]} "
    if key == "redis":
        return f":{state['redis_port']}"
    if key.startswith("worker:"):
        return f"-n {key.split(':', 1)[1]}@"
    if key == "watchdog":
        return f"watch --state-dir {state_dir}"
    return str(state_dir / "workspace.yaml")  # the daemon


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def start_detached(args: list[str], name: str, state_dir: Path, environment: dict[str, str]) -> int:

    log = state_dir / f"{name}.log"
    return spawn(args, log, env={**os.environ, **environment}, detached=True).pid


def start_code_server(
    name: str,
    module: str,
    port: int,
    state_dir: Path,
    environment: dict[str, str],
    host: str = "127.0.0.1",
) -> int:
    args = [tool("dagster"), "code-server", "start", "-h", host, "-p", str(port)]
    args += ["-m", module, "--location-name", name]
    pid = start_detached(args, f"code-server-{name}", state_dir, environment)
    log = state_dir / f"code-server-{name}.log"
    # Listening is not serving: its child loads the definitions after that.
    wait_until_answers(port, pid, f"code server {name}", log, START_TIMEOUT_SECONDS, host)
    return pid


def wait_for_port(port: int, pid: int, what: str, log: Path, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{what} exited before it listened on {port}; {log}:\n{tail}")
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise StackError(f"{what} did not listen on {host}:{port} in {START_TIMEOUT_SECONDS} s")


def replace_silent_code_servers(state: dict[str, Any], state_dir: Path, dead: set[str]) -> set[str]:
    """For `stack up --production`: the state keys of recorded code servers whose process
    runs but does not answer over gRPC, killed with their child so that they start again."""
    timeout = config_values.code_server_check_timeout_seconds()
    silent = {
        f"code_server:{name}"
        for name, port in state["code_server_ports"].items()
        if f"code_server:{name}" not in dead and not code_server_answers(int(port), timeout)
    }
    for key in silent:
        say(f"{key} runs (pid {state['pids'][key]}) but does not answer: replacing it")
        kill_process_group(int(state["pids"][key]), process_marker(state, key, state_dir))
    return silent


def start_watchdog(state_dir: Path, environment: dict[str, str]) -> int:
    """`farm-platform stack watch` over the topology in `state_dir`, detached."""
    args = [tool("farm-platform"), "stack", "watch", "--state-dir", str(state_dir)]
    return start_detached(args, "watchdog", state_dir, environment)
