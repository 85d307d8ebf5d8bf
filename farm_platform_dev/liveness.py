"""Waiting for a code server (the production topology's, the dev daemon's) to answer,
stopping a process group, and the lock the topology's repairs take. Whether a code server
serves: farm_platform/admin/code_server_check.py; the watchdog that acts on it:
farm_platform_dev.watchdog."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from farm_platform.admin.code_server_check import code_server_answers
from farm_platform_dev.emulators import StackError
from farm_platform_dev.processes import child_pids, kill_now, pid_alive

LOCK_FILE = "production.lock"


def wait_until_answers(
    port: int, pid: int, what: str, log: Path | None, timeout: float, host: str = "127.0.0.1"
) -> None:
    """Return once the code server answers; StackError with its log's end (where it has a
    log file of its own) if its process exits or it does not answer within `timeout`
    seconds (then it is killed, so that it holds the port no longer)."""
    deadline = time.monotonic() + timeout
    while not code_server_answers(port, min(5.0, timeout), host):
        if not pid_alive(pid) or time.monotonic() > deadline:
            verdict = "exited" if not pid_alive(pid) else f"did not answer in {timeout:.0f} s"
            kill_process_group(pid, "")
            if log is None:
                raise StackError(f"{what} on {host}:{port} {verdict}")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{what} on {host}:{port} {verdict}; {log}:\n{tail}")
        time.sleep(0.5)


def kill_process_group(pid: int, marker: str) -> None:
    """SIGKILL a recorded code server and its child (a stopped process takes no SIGTERM)."""
    if not pid_alive(pid, marker):
        return
    victims = [pid, *child_pids(pid)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    kill_now(victims)


@contextlib.contextmanager
def topology_lock(state_dir: Path) -> Iterator[None]:
    """Held while production.json's processes are started or replaced, so that `stack up`
    and the watchdog never start the same code server twice nor lose each other's pids."""
    handle = hold_topology_lock(state_dir)
    try:
        yield
    finally:
        handle.close()


def hold_topology_lock(state_dir: Path) -> IO[bytes]:
    """The lock of `topology_lock`, held until the returned file is closed."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / LOCK_FILE, "ab")  # noqa: SIM115 (the caller closes it)
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}", flush=True)
