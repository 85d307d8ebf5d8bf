"""Session fixtures shared by the whole suite: the local Google Cloud stack and PostgreSQL.

- `local_stack`: StackInfo of one LocalStack (Pub/Sub emulator + fake-gcs-server) per session.
- `stack_env`: the stack's environment variables set for one test (monkeypatch).
- `publisher` / `subscriber`: Pub/Sub clients bound to the stack (no env needed).
- `fresh_subscription`: a new subscription on `drone_image` for one test, deleted after.
- `default_subscription`: drone_image.dagster with its backlog cleared before and after the test
  (the session stack is shared: any write to the farm bucket by any test notifies it).
- `postgres_url`: a private PostgreSQL server per session, `postgresql://farm@127.0.0.1:P/farm`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars  # noqa: F401  (see PYTEST_OWN_VARIABLES)
import pytest

import farm_platform.layout  # noqa: F401
from farm_platform.config import (
    DEAD_LETTER_TOPIC,
    DEFAULT_SUBSCRIPTION,
    DRONE_IMAGE_TOPIC,
    FARM_MODELS_CACHE,
    REPO_MODELS_DIR,
    STORAGE_EMULATOR_HOST,
)
from farm_platform_dev.emulators import pubsub_publisher, pubsub_subscriber
from farm_platform_dev.local_stack import LocalStack
from farm_platform_dev.postgres import postgres_server
from farm_platform_dev.stack import StackInfo

# --------------------------------------------------------------------------- order

# The modules that take longest, longest first: seconds of one module on one worker, from
# pytest's durations in clean-clone runs on the 2-core machine (2026-12-04). With
# `--dist loadfile --no-loadscope-reorder` (the Makefile) pytest-xdist hands modules to
# workers in collection order; longest first keeps every worker busy to the end, where
# xdist's own order (most tests first) left a 4-minute e2e module for last on one worker
# while the others idled. Only wall time depends on it: every module runs either way, each
# on one worker. Modules not listed follow in their usual order.
LONGEST_MODULES_FIRST = (
    "test_production_e2e.py",  # ~260 s
    "test_pipeline_e2e.py",  # ~250 s
    "test_faults_e2e.py",  # ~230 s
    "test_outages_e2e.py",  # ~200 s
    "test_model_story_e2e.py",  # ~200 s
    "test_demo.py",  # ~120 s
    # test_dbt.py (~330 s) split by subject: these three take about a third each.
    "test_dbt_layouts.py",
    "test_dbt_incremental.py",
    "test_dbt_marts.py",
    "test_foreign_models_e2e.py",  # ~115 s
    "test_ingest_dead_letters.py",  # ~105 s
    "test_quality.py",  # ~90 s
    "test_ui.py",  # ~80 s
    "test_trial_design.py",  # ~70 s
    "test_webserver_guard.py",  # ~65 s
    "test_effect_recovery.py",  # ~65 s
    "test_cli.py",  # ~60 s
    "test_liveness.py",  # ~45 s
    "test_retries.py",  # ~45 s
    "test_ingest.py",  # ~40 s
    # test_trial_events.py (~110 s) split by subject, a dbt build per test: about a third
    # each (not yet measured apart), late photos the most.
    "test_trial_events_late.py",
    "test_trial_events_switch.py",
    "test_trial_events_attrition.py",
    # test_model_server.py (~60 s) split: the served module keeps one server and the farm
    # it grades, the clients' module two replicas.
    "test_model_server.py",
    "test_ingest_requeue.py",  # ~35 s
    "test_model_server_clients.py",
    "test_dbt_project.py",  # the rest of test_dbt.py's
)


# Tests by place: the folder is the marker. e2e (daemon stories, the demo, the UI) is `slow`
# as a whole; in unit/ and integration/ single tests carry `slow` where they take long, so
# `make test-fast` (not slow, not fault_campaign) is unit + the quick in-process ones.
FOLDER_MARKERS = {"unit": ("unit",), "integration": ("integration",), "e2e": ("e2e", "slow")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.parent.name
        if folder not in FOLDER_MARKERS:
            raise pytest.UsageError(
                f"{item.path}: a test module belongs in unit/, integration/ or e2e/ "
                "(farm_platform_tests/conftest.py, FOLDER_MARKERS)"
            )
        for marker in FOLDER_MARKERS[folder]:
            item.add_marker(marker)
    rank = {name: position for position, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a module


# --------------------------------------------------------------------------- leaks


def _live_children() -> set[tuple[int, str]]:
    """This process's live child processes (pid, command line); zombies are gone."""
    from farm_platform_dev.processes import child_pids, command_line, pid_alive

    children = set()
    for pid in child_pids(os.getpid()):
        with contextlib.suppress(OSError):
            if pid_alive(pid):
                children.add((pid, command_line(pid)[:200]))
    return children


# pytest itself moves this from "(setup)" to "(teardown)" around every test. And
# farm_platform.layout and polars set variables when first imported
# (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT, _RJEM_MALLOC_CONF): imported above, before any test's
# snapshot, so the first test to import them is not blamed for it.
PYTEST_OWN_VARIABLES = {"PYTEST_CURRENT_TEST"}


def _long_lived(children: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Children other than multiprocessing's resource tracker: one per interpreter, started
    by the first test that uses multiprocessing, and meant to live until pytest exits."""
    return {child for child in children if "multiprocessing.resource_tracker" not in child[1]}


@pytest.fixture(autouse=True)
def leaves_no_trace() -> Iterator[None]:
    """A test leaves os.environ, the working directory and this process's children as it
    found them: a leaked variable (the demo's FARM_INFERENCE once broke 44 later tests) or
    a server left running fails the test that leaked it, not a later one. Session
    fixtures (the stack, PostgreSQL) start before this snapshot and are not counted."""
    environment, cwd, children = dict(os.environ), os.getcwd(), _live_children()
    yield
    changed = {
        name: (environment.get(name), os.environ.get(name))
        for name in set(environment) | set(os.environ)
        if environment.get(name) != os.environ.get(name) and name not in PYTEST_OWN_VARIABLES
    }
    assert not changed, f"the test leaked environment variables (before, after): {changed}"
    assert os.getcwd() == cwd, f"the test left the working directory at {os.getcwd()}"
    deadline = time.monotonic() + 10  # a stopped server may take a moment to exit
    while (left := _long_lived(_live_children() - children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"the test left child processes running: {sorted(left)}"


# --------------------------------------------------------------------------- models


def copy_repo_models(target: Path) -> Path:
    """A throwaway copy of the repository's models folder at `target` (cards, weights,
    registry; no scripts), for tests that register or activate versions: never the
    repository's own."""
    shutil.copytree(REPO_MODELS_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target


@pytest.fixture(scope="module")
def registry() -> Any:
    """The repository's model registry (unit/test_models_*.py), read-only."""
    from farm_platform.admin.configured import configured_registry

    return configured_registry()


@pytest.fixture()
def models_dir(tmp_path: Path) -> Path:
    """A throwaway copy of the repository's models folder (never the repository's own)."""
    return copy_repo_models(tmp_path / "models")


@pytest.fixture()
def bucket_env(
    local_stack: StackInfo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> StackInfo:
    """Models in a bucket: the emulator's address, and a weights cache of this test's own."""
    monkeypatch.setenv(STORAGE_EMULATOR_HOST, local_stack.storage_host)
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    monkeypatch.setenv(FARM_MODELS_CACHE, str(tmp_path / "cache"))
    # A registry made in the test's own process without a cache folder uses the user's
    # (model_store.default_cache_dir): this test's own too, never one another test filled.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return local_stack


# --------------------------------------------------------------------------- code locations

# What a code location needs to load (it refuses to without): values that are never used
# to reach anything in the tests that only inspect its definitions.
LOCATION_ENV = {
    "FARM_BUCKET": "file:///nonexistent/farm-bucket",
    "FARM_WAREHOUSE": "duckdb:///nonexistent/farm.duckdb",
    "FARM_GCP_PROJECT": "farm-test",
}


@pytest.fixture
def location_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment both code locations load with; also for their subprocesses."""
    for name, value in LOCATION_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


# --------------------------------------------------------------------------- Google Cloud stack


@pytest.fixture(scope="session")
def local_stack() -> Iterator[StackInfo]:
    """Both emulators with the production topology, once per session."""
    with LocalStack() as info:
        yield info


@pytest.fixture
def stack_env(local_stack: StackInfo, monkeypatch: pytest.MonkeyPatch) -> StackInfo:
    """Point FARM_*, PUBSUB_EMULATOR_HOST and STORAGE_EMULATOR_HOST at the session stack."""
    for name, value in local_stack.environment().items():
        monkeypatch.setenv(name, value)
    return local_stack


@pytest.fixture(scope="session")
def publisher(local_stack: StackInfo) -> Iterator[Any]:
    client = pubsub_publisher(local_stack.pubsub_host)
    yield client
    client.transport.close()


@pytest.fixture(scope="session")
def subscriber(local_stack: StackInfo) -> Iterator[Any]:
    client = pubsub_subscriber(local_stack.pubsub_host)
    yield client
    client.close()


@dataclass(frozen=True)
class SubscriptionRef:
    name: str  # short name, the form FARM_SUBSCRIPTION takes
    path: str  # projects/P/subscriptions/NAME, the form the clients take
    topic_path: str


@pytest.fixture
def fresh_subscription(local_stack: StackInfo, subscriber: Any) -> Iterator[SubscriptionRef]:
    """A subscription on drone_image that sees only what is published during this test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    path = subscriber.subscription_path(local_stack.project, name)
    topic_path = subscriber.topic_path(local_stack.project, DRONE_IMAGE_TOPIC)
    subscriber.create_subscription(
        request={"name": path, "topic": topic_path, "ack_deadline_seconds": 60}
    )
    yield SubscriptionRef(name=name, path=path, topic_path=topic_path)
    with contextlib.suppress(Exception):
        subscriber.delete_subscription(subscription=path)


# --------------------------------------------------------------------------- ingest

# Each ingest test's day is its own: the session's bucket is shared, and reconciliation
# lists a whole day. A random pick among 300 days collided (two tests drew one day). Two days
# apart, as a test may use the next day too; August to October 2026 lies in the trial, in
# the past (a future photo is a dead letter), and no other test module uses it.
_INGEST_DAYS = (dt.date(2026, 8, 1) + dt.timedelta(days=n) for n in itertools.count(step=2))


@pytest.fixture
def queue(tmp_path: Path) -> Any:
    """An arrival queue in a DuckDB warehouse of this test's own."""
    from farm_platform.ingest.arrivals import ArrivalQueue
    from farm_platform.resources.warehouse import WarehouseResource

    return ArrivalQueue(WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}"))


@pytest.fixture
def farm(stack_env: StackInfo, fresh_subscription: SubscriptionRef, queue: Any) -> tuple:
    """A unique date for this test, so its objects are its own; its own arrival queue."""
    from farm_platform.resources.bucket import BucketResource
    from farm_platform.resources.pubsub import PubSubResource

    pubsub = PubSubResource(project=stack_env.project, subscription=fresh_subscription.name)
    bucket = BucketResource(url=stack_env.bucket_url())
    return pubsub, bucket, next(_INGEST_DAYS), fresh_subscription


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server with a `farm` database; trust auth on 127.0.0.1 only."""
    with postgres_server() as url:
        yield url


def _clear_backlog(subscriber: Any, path: str) -> None:
    from google.protobuf import timestamp_pb2

    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    # Seeking to "now" acknowledges everything published before it (and keeps it retained).
    subscriber.seek(request={"subscription": path, "time": now})


@pytest.fixture
def default_subscription(local_stack: StackInfo, subscriber: Any) -> Iterator[SubscriptionRef]:
    """drone_image.dagster with no backlog from earlier tests, and none left for later ones."""
    path = subscriber.subscription_path(local_stack.project, DEFAULT_SUBSCRIPTION)
    topic_path = subscriber.topic_path(local_stack.project, DRONE_IMAGE_TOPIC)
    _clear_backlog(subscriber, path)
    yield SubscriptionRef(name=DEFAULT_SUBSCRIPTION, path=path, topic_path=topic_path)
    _clear_backlog(subscriber, path)


def pull_until_quiet(
    subscriber: Any, path: str, quiet_seconds: float = 3.0, timeout: float = 30.0
) -> list[Any]:
    """Pull (and ack) until nothing arrived for `quiet_seconds` after the first message, or
    until `timeout`; returns every message (PubsubMessage) received."""
    from google.api_core.exceptions import DeadlineExceeded

    deadline = time.monotonic() + timeout
    received: list[Any] = []
    last_arrival: float | None = None
    while time.monotonic() < deadline:
        if last_arrival is not None and time.monotonic() - last_arrival > quiet_seconds:
            break
        try:
            response = subscriber.pull(
                request={"subscription": path, "max_messages": 100}, timeout=2
            )
        except DeadlineExceeded:
            continue
        if response.received_messages:
            last_arrival = time.monotonic()
            received.extend(m.message for m in response.received_messages)
            subscriber.acknowledge(
                request={
                    "subscription": path,
                    "ack_ids": [m.ack_id for m in response.received_messages],
                }
            )
    return received


@pytest.fixture
def drain(subscriber: Any) -> Any:
    """`drain(path, quiet_seconds=3, timeout=30)`: every message on a subscription, acked."""
    return lambda path, **kwargs: pull_until_quiet(subscriber, path, **kwargs)


@pytest.fixture
def dead_letters(local_stack: StackInfo, subscriber: Any) -> Iterator[str]:
    """A subscription on the dead-letter topic that sees only this test's dead letters."""
    path = subscriber.subscription_path(local_stack.project, f"dead-{uuid.uuid4().hex[:10]}")
    topic = subscriber.topic_path(local_stack.project, DEAD_LETTER_TOPIC)
    subscriber.create_subscription(request={"name": path, "topic": topic})
    yield path
    with contextlib.suppress(Exception):
        subscriber.delete_subscription(subscription=path)


# --------------------------------------------------------------------------- fault tests


@pytest.fixture
def make_platform(local_stack, default_subscription, tmp_path, monkeypatch):
    """`make_platform(warehouse_url=None)`: a Platform (test_pipeline_e2e) for the fault
    tests, with short run and warehouse-lock timeouts and retry back-offs; DuckDB unless
    told otherwise."""
    from test_pipeline_e2e import Platform

    from farm_platform import config

    for name, value in local_stack.environment().items():
        monkeypatch.setenv(name, value)

    def make(warehouse_url: str | None = None) -> Any:
        platform = Platform(local_stack, tmp_path, warehouse_url=warehouse_url)
        platform.environment[config.FARM_RUN_TIMEOUT_SECONDS] = "20"
        platform.environment[config.FARM_WAREHOUSE_LOCK_SECONDS] = "3"
        # A failed run's photos retry after 2 s, 8 s, 32 s (the shipped 30 s, 2 min, 8 min
        # are the fault campaign's, test_retries_e2e).
        platform.environment[config.FARM_RETRY_BACKOFF_SECONDS] = "2"
        platform.record_active_models()
        return platform

    return make
