"""The production topology on this machine for the e2e tests (test_production_e2e.py,
test_production_faults.py, test_retries_e2e.py): `Topology` and `production_topology()`
(`farm-platform stack up --production` with the tests' short intervals, down afterwards;
the module fixture `topology`),
and what the tests ask of it: the grades per photo, a grades table held by an outside
writer, the runs of a day and what they said, waits that tell the sensor's story on a
timeout, and a repair from the command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, RunsFilter

from farm_platform import config
from farm_platform.images.run_tags import (
    DRONE_IMAGE_SENSOR,
)
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import sensor_ticks
from farm_platform_dev.production import (
    OIP_TOKEN,
    PG_PASSWORD,
    REDIS_PASSWORD,
    Production,
    production_down,
    production_up,
    read_production,
)
from farm_platform_dev.simulate import DroneMessagePublisher, FarmConfig, write_farm
from farm_platform_dev.stack import StackInfo, stack_down, stack_up

PASSWORD = "pg-secret/with:symbols"
TOKEN = "oip-token-for-the-test"
CREDENTIALS = {PG_PASSWORD: PASSWORD, REDIS_PASSWORD: "redis-secret/x", OIP_TOKEN: TOKEN}


class Topology:
    def __init__(
        self, state_dir: Path, info: StackInfo, production: Production, settings: dict[str, str]
    ):
        self.state_dir, self.info, self.production = state_dir, info, production
        self.settings = settings  # what `stack up --production` was given
        from urllib.parse import quote

        self.environment = {
            **info.environment(),
            **production.environment(quote(PASSWORD, safe="")),
            config.FARM_FIELD_MAP: str(state_dir / "positions.csv"),
            **CREDENTIALS,
        }
        self.warehouse = WarehouseResource(url=self.environment[config.FARM_WAREHOUSE])

    def simulate(self, farm: FarmConfig) -> int:
        with config.process_environment(self.environment):
            summary = write_farm(
                farm,
                self.info.bucket_url(),
                self.state_dir / "positions.csv",
                DroneMessagePublisher(self.info.project),
                truth_url=str(self.state_dir / "truth"),
            )
        return summary.images

    def photograph_day(self, offset: int, positions: int, seed: int) -> int:
        """The drones photograph `positions` positions on the trial's day `offset`
        (`farm_day`), and the photos are announced; how many were written."""
        return self.simulate(
            FarmConfig(positions=positions, days=1, seed=seed, start_date=farm_day(offset))
        )

    @contextlib.contextmanager
    def instance(self) -> Iterator[DagsterInstance]:
        with config.process_environment(self.environment):
            instance = DagsterInstance.from_config(str(self.production.dagster_home))
            try:
                yield instance
            finally:
                instance.dispose()

    def pids(self) -> dict[str, int]:
        return read_production(self.state_dir)["pids"]


@contextlib.contextmanager
def production_topology(
    settings: Callable[[StackInfo], dict[str, str]] | None = None,
) -> Iterator[Topology]:
    """The topology up with `settings(stack)` (default: `topology_settings`), down afterwards."""
    # Not under pytest's tmp folders (0700): PostgreSQL runs as another user.
    state_dir = Path(tempfile.mkdtemp(prefix="farm-production-"))
    state_dir.chmod(0o755)
    try:
        with config.process_environment(CREDENTIALS):
            info = stack_up(state_dir)
            chosen = (settings or topology_settings)(info)
            production = production_up(
                state_dir, chosen, replicas=2, max_concurrent_runs=4, quick_polling=True
            )
        yield Topology(state_dir, info, production, chosen)
    finally:
        production_down(state_dir)
        stack_down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


# Import it as `topology_fixture` into a test module: pytest then provides `topology` there,
# the topology up once per module.
@pytest.fixture(scope="module", name="topology")
def topology_fixture() -> Iterator[Topology]:
    with production_topology() as started:
        yield started


def topology_settings(info: StackInfo) -> dict[str, str]:
    """The stack's variables, and the tests' short intervals and run timeout."""
    return {
        **info.environment(),
        config.FARM_SENSOR_INTERVAL_SECONDS: "5",
        # Runs held at their commit by the tests below wait for other runs to start (tens of
        # seconds on a loaded 2-core machine) within their timeout; a dead worker is found by
        # the launcher's health check (celery_launcher) long before it.
        config.FARM_RUN_TIMEOUT_SECONDS: "300",
        # Batches of 3 photos: a day of 9 photos is 3 sensor runs, which run side by side.
        config.FARM_RUN_MAX_PHOTOS: "3",
        # The watchdog asks the code servers every 2 s (test_production_faults.py).
        config.FARM_WATCHDOG_INTERVAL_SECONDS: "2",
        # A failed run's photos retry after 5 s, 20 s, 80 s (the shipped back-off is the
        # fault campaign's: test_retries_e2e).
        config.FARM_RETRY_BACKOFF_SECONDS: "5",
    }


def graded_rows_per_photo(topology: Topology) -> dict[tuple[str, str], int]:
    rows = topology.warehouse.query(
        "SELECT position_id, date, count(*) AS n FROM disease_grades GROUP BY position_id, date"
    )
    return {(r["position_id"], str(r["date"])): r["n"] for r in rows.to_dicts()}


def assert_graded_once(topology: Topology, days: list[str], photos: int) -> None:
    """Every photo of these days graded (5 diseases a leaf), none twice."""
    per_photo = {key: n for key, n in graded_rows_per_photo(topology).items() if key[1] in days}
    assert len(per_photo) == photos
    assert all(n % 5 == 0 and n > 0 for n in per_photo.values())
    doubled = topology.warehouse.query(
        "SELECT count(*) AS n FROM (SELECT 1 FROM disease_grades GROUP BY position_id, date,"
        " leaf_crop_idx, disease_type, cropper_model_version, disease_model_version"
        " HAVING count(*) > 1) AS doubled"
    )["n"][0]
    assert doubled == 0


@contextlib.contextmanager
def grades_held(topology: Topology) -> Iterator[None]:
    """An outside writer holds the grades table (SHARE: reads go on, writes wait), so that a
    run grades and then waits to commit, mid-run, for as long as a test needs."""
    import psycopg

    topology.warehouse.create_schema()
    with psycopg.connect(topology.environment[config.FARM_WAREHOUSE]) as blocker:
        blocker.execute("LOCK TABLE disease_grades IN SHARE MODE")
        try:
            yield
        finally:
            blocker.rollback()


def grading_run(instance: DagsterInstance, day: str):
    """A run of the day that has begun grading, or None."""
    from farm_platform.images.pipeline import GRADING_STARTED

    return next(
        (
            r
            for r in runs_of_day(instance, day)
            if first_said_at(instance, r.run_id, GRADING_STARTED)
        ),
        None,
    )


def runs_of_day(instance: DagsterInstance, day: str) -> list:
    return [
        record.dagster_run
        for record in instance.get_run_records(RunsFilter(tags={"dagster/partition": day}))
    ]


def first_said_at(instance: DagsterInstance, run_id: str, words: str) -> float | None:
    """When the run first logged a message (or Dagster an event of it) containing `words`
    (epoch seconds), or None."""

    def text(entry: Any) -> str:
        event = entry.dagster_event
        return f"{entry.user_message or ''} {(event.message or '') if event else ''}"

    times = [e.timestamp for e in instance.all_logs(run_id) if words in text(e)]
    return min(times) if times else None


def wait_for(
    probe,
    timeout: float,
    what: str,
    instance: DagsterInstance | None = None,
    topology: Topology | None = None,
):
    """Poll `probe` until it returns something; on timeout, say what the image sensor's
    ticks did (with `instance`) and the end of its code server's log (with `topology`), so
    a failure in CI can be read from its message."""
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            log = topology.state_dir / "code-server-farm_platform.log" if topology else None
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise AssertionError(
                f"timed out waiting for {what}"
                + _sensor_story(instance)
                + (f"\nthe image location's code server log ends:\n{tail}" if tail else "")
            )
        time.sleep(0.2)
    return found


def _sensor_story(instance: DagsterInstance | None) -> str:
    """The image sensor's ticks of the last minutes: the newest five, and every older one
    that pulled a message or requested a run, with their times."""
    if instance is None:
        return ""
    ticks = sensor_ticks(instance, DRONE_IMAGE_SENSOR, limit=200)
    told = [
        f"tick {tick.tick_id} at {time.strftime('%H:%M:%S', time.gmtime(tick.timestamp))}"
        f" {tick.status.value}: {tick.skip_reason or tick.error or f'{len(tick.run_ids)} run(s)'}"
        for index, tick in enumerate(ticks)
        if index < 5 or tick.run_ids or "pulled 0 messages" not in (tick.skip_reason or "")
    ]
    return (
        f"; now {time.strftime('%H:%M:%S', time.gmtime())}; the image sensor's ticks, newest"
        " first (older ones only if they pulled or requested something):\n"
        + "\n".join(told or ["none"])
    )


def repair_topology(topology: Topology) -> None:
    """`stack up --production` from the command line, as an operator would repair it."""
    repair = subprocess.run(
        [str(Path(sys.executable).with_name("farm-platform")), "stack", "up", "--production"]
        + ["--state-dir", str(topology.state_dir)],
        env={**os.environ, **topology.settings, **CREDENTIALS},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert repair.returncode == 0, repair.stderr[-2000:]


def farm_day(offset: int):
    import datetime as dt

    return FarmConfig(positions=4, days=1, seed=41).dates[0] + dt.timedelta(days=offset)
