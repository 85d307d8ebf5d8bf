"""Running the real `dagster-daemon` against a private DAGSTER_HOME (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from farm_platform.config import WORKSPACE_FILE
from farm_platform_dev.processes import (
    StartedInWith,
    kill_now,
    processes_in_group,
    wait_until_gone,
)

FAILED_STATUSES = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
UNFINISHED_STATUSES = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
)


def workspace_of(locations: Sequence[str], destination: Path) -> Path:
    """A workspace file at `destination` with only the named code locations of the
    project's workspace.yaml, as that file declares them."""
    import yaml

    def name(entry: dict[str, Any]) -> str:
        return next(iter(entry.values()))["location_name"]  # {python_module: {...}}

    entries = yaml.safe_load(WORKSPACE_FILE.read_text())["load_from"]
    chosen = [entry for entry in entries if name(entry) in locations]
    missing = set(locations) - {name(entry) for entry in chosen}
    if missing:
        raise ValueError(f"{WORKSPACE_FILE} declares no code location {sorted(missing)}")
    destination.write_text(yaml.safe_dump({"load_from": chosen}))
    return destination


class DaemonProcess(StartedInWith["DaemonProcess"]):
    """`dagster-daemon run` and a code server per location in their own process group,
    logging to a file; over the project's workspace.yaml, or `workspace` (e.g. one of
    `workspace_of`'s)."""

    def __init__(
        self,
        dagster_home: Path,
        environment: Mapping[str, str],
        log_path: Path,
        workspace: Path = WORKSPACE_FILE,
    ):
        self.dagster_home = dagster_home
        self.environment = {**os.environ, **environment, "DAGSTER_HOME": str(dagster_home)}
        self.log_path = log_path
        self.workspace = workspace
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        # The daemon over code servers of its own that it does not replace every minute
        # (farm_platform_dev/daemon_launcher.py).
        served = self.log_path.with_suffix(".workspace.yaml")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "farm_platform_dev.daemon_launcher",
                str(self.workspace),
                str(served),
            ],
            env=self.environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, kill: bool = False) -> None:
        """Stop the daemon and the run processes it started (its process group)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # The group's other members (run workers, code servers) outlive the leader by a
        # moment, still writing logs and storage: the caller may remove their folder next.
        members = processes_in_group(self.process.pid, "")
        try:
            wait_until_gone(members, timeout=30)
        except RuntimeError:
            kill_now(members)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class PipelineFailed(RuntimeError):
    """A run failed, or the wait timed out."""


def wait_for_photos(
    instance: DagsterInstance,
    warehouse: Any,
    expected: int,
    timeout_seconds: float,
    daemon: DaemonProcess | None = None,
    progress: Callable[[int, int], None] | None = None,
    poll_seconds: float = 2.0,
    tolerate_failed_runs: bool = False,
) -> None:
    """Wait until `expected` photos are processed (a `drone_images` row is committed with
    the photo's crops and grades), none waits in the arrival queue and no run is
    unfinished; raise if a run failed (unless failures are the point: their photos are
    requeued) or the daemon died."""
    from farm_platform.ingest.arrivals import ArrivalQueue

    deadline = time.monotonic() + timeout_seconds
    last_reported = -1
    queue = ArrivalQueue(warehouse)
    while True:
        failed = instance.get_run_records(RunsFilter(statuses=list(FAILED_STATUSES)), limit=5)
        if failed and not tolerate_failed_runs:
            raise PipelineFailed(
                "runs failed: "
                + ", ".join(record.dagster_run.run_id for record in failed)
                + (f"\n{daemon.log_tail()}" if daemon else "")
            )
        done = processed_photos(warehouse)
        if progress and done != last_reported:
            progress(done, expected)
            last_reported = done
        unfinished = instance.get_run_records(
            RunsFilter(statuses=list(UNFINISHED_STATUSES)), limit=1
        )
        if done >= expected and not unfinished and not queue.pending_count():
            return
        if daemon is not None and not daemon.alive():
            raise PipelineFailed(f"dagster-daemon exited:\n{daemon.log_tail()}")
        if time.monotonic() > deadline:
            raise PipelineFailed(
                f"timed out after {timeout_seconds:.0f} s with {done}/{expected} photos"
                + (f"\n{daemon.log_tail()}" if daemon else "")
            )
        time.sleep(poll_seconds)


def processed_photos(warehouse: Any) -> int:
    """Photos with a committed `drone_images` row (their crops and grades came with it)."""
    warehouse.create_schema()
    return int(warehouse.query("SELECT count(*) AS n FROM drone_images")["n"][0])


def sensor_ticks(instance: DagsterInstance, sensor_name: str, limit: int = 20) -> list[Any]:
    """The sensor's latest ticks, newest first (none before its first evaluation)."""
    from dagster._core.scheduler.instigation import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == sensor_name:
            origin, selector = state.instigator_origin_id, state.selector_id
            return list(instance.get_ticks(origin, selector, limit=limit))
    return []


def ended_tick_id(instance: DagsterInstance, sensor_name: str = "drone_image_sensor") -> int:
    """The id of the sensor's newest ended tick (0: none yet), for `wait_for_ticks(after=)`."""
    from dagster._core.scheduler.instigation import TickStatus

    ticks = sensor_ticks(instance, sensor_name)
    return max((t.tick_id for t in ticks if t.status != TickStatus.STARTED), default=0)


def wait_for_ticks(
    instance: DagsterInstance,
    daemon: DaemonProcess,
    count: int,
    timeout: float,
    sensor_name: str = "drone_image_sensor",
    where: Callable[[Any], bool] | None = None,
    after: int | None = None,
) -> None:
    """Return once `count` ticks of the sensor that start after this call have ended
    (tests that show nothing happens wait on ticks, not on a guess of their interval);
    with `where`, only the ended ticks (InstigatorTick) it accepts count; with `after` (from
    `ended_tick_id` taken before the event), every tick that had not ended by then counts,
    so that a tick already running when the event happened is not missed."""
    from dagster._core.scheduler.instigation import TickStatus

    before = after
    if before is None:
        before = max((tick.tick_id for tick in sensor_ticks(instance, sensor_name)), default=0)
    deadline = time.monotonic() + timeout
    while True:
        ended = [
            tick
            for tick in sensor_ticks(instance, sensor_name)
            if tick.tick_id > before
            and tick.status != TickStatus.STARTED
            and (where is None or where(tick))
        ]
        if len(ended) >= count:
            return
        if not daemon.alive() or time.monotonic() > deadline:
            raise PipelineFailed(
                f"{sensor_name} ended {len(ended)} of {count} {'matching ' if where else ''}ticks\n"
                + daemon.log_tail()
            )
        time.sleep(0.5)


def wait_for_failed_tick(
    instance: DagsterInstance, daemon: DaemonProcess, sensor_name: str, timeout: float
) -> Any:
    """The first failed tick of the sensor (its evaluation raised); fault tests hold an
    outage until a sensor has met it."""
    from dagster._core.scheduler.instigation import TickStatus

    deadline = time.monotonic() + timeout
    while True:
        failed = [t for t in sensor_ticks(instance, sensor_name) if t.status == TickStatus.FAILURE]
        if failed:
            return failed[0]
        if not daemon.alive() or time.monotonic() > deadline:
            raise PipelineFailed(f"{sensor_name} never failed a tick\n{daemon.log_tail()}")
        time.sleep(0.2)


def wait_for_sensor_tick_in_progress(
    instance: DagsterInstance, daemon: DaemonProcess, after: Callable[[], None], timeout: float
) -> None:
    """Call `after()`, then return while a `drone_image_sensor` tick that started after the
    call is still being evaluated (fault tests kill the daemon right then)."""
    from dagster._core.scheduler.instigation import TickStatus

    def ticks() -> list[Any]:
        return sensor_ticks(instance, "drone_image_sensor", limit=5)

    deadline = time.monotonic() + timeout
    while not ticks():
        if not daemon.alive() or time.monotonic() > deadline:
            raise PipelineFailed(f"drone_image_sensor never ticked\n{daemon.log_tail()}")
        time.sleep(0.2)
    before = max(tick.tick_id for tick in ticks())
    after()
    while True:
        newer = [tick for tick in ticks() if tick.tick_id > before]
        if any(tick.status == TickStatus.STARTED for tick in newer):
            return
        if newer or not daemon.alive() or time.monotonic() > deadline:
            raise PipelineFailed(f"no tick in progress to interrupt: {newer}\n{daemon.log_tail()}")
        time.sleep(0.02)
