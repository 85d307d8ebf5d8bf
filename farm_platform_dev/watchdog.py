"""The production topology's watchdog (`farm-platform stack watch`) and `stack status`.

`farm-platform stack watch` (started by `stack up --production`, recorded in
production.json as `watchdog`) asks each code server every FARM_WATCHDOG_INTERVAL_SECONDS;
one that missed FARM_WATCHDOG_FAILURES answers in a row is killed, its whole process group
(parent and child), and started again on its port, where the daemon's reconnect finds it.
Each round it also fails a run whose Celery task was taken but whose worker died before the
run began (farm_platform.launcher.celery_launcher.fail_runs_lost_before_start): run monitoring
only times such a run out at its start timeout.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm_platform import config, config_values
from farm_platform.admin.code_server_check import code_server_answers
from farm_platform_dev.liveness import kill_process_group, say, topology_lock
from farm_platform_dev.topology_processes import (
    CODE_LOCATIONS,
    dead_processes,
    process_marker,
    read_production,
    start_code_server,
    write_production,
)


@dataclass
class Watchdog:
    """One watchdog over the topology recorded in `state_dir`."""

    state_dir: Path
    interval: float
    failures: int
    timeout: float
    modules: dict[str, str] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)

    def check_code_servers(self) -> list[str]:
        """One round: ask each code server, replace those that missed `failures` answers in a
        row; returns the names replaced."""
        state = read_production(self.state_dir)
        replaced = []
        for name, port in (state or {}).get("code_server_ports", {}).items():
            if code_server_answers(int(port), self.timeout):
                self.misses[name] = 0
                continue
            self.misses[name] = self.misses.get(name, 0) + 1
            say(f"code server {name} on port {port} did not answer ({self.misses[name]} in a row)")
            if self.misses[name] >= self.failures:
                self.misses[name] = 0
                if self.replace(name) is not None:
                    replaced.append(name)
        return replaced

    def replace(self, name: str) -> int | None:
        """Kill code server `name` (parent and child) and start it again on its port; its new
        pid, or None if it answers after all or the topology was stopped."""
        with topology_lock(self.state_dir):
            state = read_production(self.state_dir)
            if state is None:  # `stack down` meanwhile
                return None
            key = f"code_server:{name}"
            old = int(state["pids"].get(key, 0))
            port = int(state["code_server_ports"][name])
            # `stack up` may have replaced it while this waited for the lock.
            if code_server_answers(port, self.timeout):
                return None
            kill_process_group(old, process_marker(state, key, self.state_dir))
            module = {**CODE_LOCATIONS, **self.modules}[name]
            state["pids"][key] = start_code_server(name, module, port, self.state_dir, {})
            write_production(self.state_dir, state)
        say(f"code server {name} replaced: pid {old} killed, pid {state['pids'][key]} answers")
        return int(state["pids"][key])


def watch(state_dir: Path) -> int:
    """`farm-platform stack watch`: the watchdog's loop, until the topology is stopped."""
    watchdog = Watchdog(
        state_dir=state_dir,
        interval=config_values.watchdog_interval_seconds(),
        failures=config_values.watchdog_failures(),
        timeout=config_values.code_server_check_timeout_seconds(),
    )
    say(
        f"watching the code servers of {state_dir} every {watchdog.interval:g} s "
        f"(replaced after {watchdog.failures} missed answers of {watchdog.timeout:g} s)"
    )
    with _instance() as instance:
        while read_production(state_dir) is not None:
            try:
                watchdog.check_code_servers()
            except Exception as exc:  # e.g. a replacement that did not start: the next round
                say(f"checking or replacing a code server failed: {exc}")
            _fail_lost_runs(instance)
            time.sleep(watchdog.interval)
    say("the topology was stopped; the watchdog ends")
    return 0


@contextlib.contextmanager
def _instance() -> Iterator[Any]:
    """The topology's Dagster instance (DAGSTER_HOME of `stack up`), or None without one."""
    if not os.environ.get(config.DAGSTER_HOME):
        yield None
        return
    from dagster import DagsterInstance

    try:
        instance = DagsterInstance.get()
    except Exception as exc:  # the code servers are still watched without it
        say(f"no Dagster instance, so no look for runs lost before they began: {exc!r}")
        yield None
        return
    with instance:
        yield instance


def _fail_lost_runs(instance: Any) -> None:
    if instance is None:
        return
    from farm_platform.launcher.celery_launcher import fail_runs_lost_before_start

    try:
        for run_id, reason in fail_runs_lost_before_start(instance).items():
            say(f"run {run_id} failed: {reason}")
    except Exception as exc:  # PostgreSQL or the broker down: the next round asks again
        say(f"looking for runs lost before they began failed: {exc!r}")


def topology_status(state_dir: Path) -> tuple[list[str], bool]:
    """`farm-platform stack status`: one line per process of the recorded topology (running,
    dead, or a code server that runs and does not answer), then the photos waiting in the
    arrival queue; and whether all is well."""
    state = read_production(state_dir)
    if state is None:
        return [f"no production topology recorded in {state_dir} (`stack up --production`)"], False
    dead = set(dead_processes(state, state_dir))
    timeout = config_values.code_server_check_timeout_seconds()
    lines, silent = [], []
    for key in [*state["pids"], *sorted(dead - set(state["pids"]))]:
        pid = state["pids"].get(key)
        if key in dead:
            lines.append(f"{key}: DEAD (pid {pid}); `stack up --production` starts it")
        elif key.startswith("code_server:") and not code_server_answers(
            int(state["code_server_ports"][key.split(":", 1)[1]]), timeout
        ):
            silent.append(key)
            lines.append(
                f"{key}: NOT ANSWERING (pid {pid} runs): its sensors do not tick; the watchdog "
                f"replaces it after {config_values.watchdog_failures()} missed answers, "
                "`stack up --production` at once"
            )
        else:
            lines.append(f"{key}: running (pid {pid})")
    lines.append(_arrival_queue_line(state_dir, dead | set(silent)))
    return lines, not dead and not silent


def _arrival_queue_line(state_dir: Path, down: set[str]) -> str:
    from urllib.parse import quote

    from farm_platform.ingest.arrivals import ArrivalQueue
    from farm_platform.resources.warehouse import WarehouseResource
    from farm_platform_dev.production import PG_PASSWORD, load_production

    password = os.environ.get(PG_PASSWORD)
    if not password or down & {"postgres", "pgbouncer"}:
        return f"arrival queue: not read (PostgreSQL down, or {PG_PASSWORD} not exported)"
    url = load_production(state_dir).warehouse_url(quote(password, safe=""))
    try:
        waiting = ArrivalQueue(WarehouseResource(url=url)).pending_count()
    except Exception as exc:  # no schema yet, or the warehouse refuses
        return f"arrival queue: not read ({str(exc).splitlines()[0]})"
    line = f"arrival queue: {waiting} photo(s) announced and not yet handed to a run"
    if waiting and f"code_server:{config.IMAGE_LOCATION}" in down:
        line += f"; no sensor reads them while code_server:{config.IMAGE_LOCATION} is down"
    return line
