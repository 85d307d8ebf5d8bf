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
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm_platform.config import DEAD_LETTER_TOPIC, DEFAULT_SUBSCRIPTION, DRONE_IMAGE_TOPIC
from farm_platform.dev.emulators import pubsub_publisher, pubsub_subscriber
from farm_platform.dev.stack import LocalStack, StackInfo

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


# --------------------------------------------------------------------------- PostgreSQL

_PG_PREFIX = "farm-pg-"
_PG_SUPERUSER = "farm"


def _postgres_bin_dir() -> Path | None:
    override = os.environ.get("FARM_PG_BIN")
    candidates = [override] if override else []
    # Newest installed major version first; Debian keeps each under its own directory.
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and all((Path(candidate) / b).exists() for b in ("initdb", "pg_ctl")):
            return Path(candidate)
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root; pick an account to run it as (None: we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.fail(
        "Running as root and neither a `postgres` nor a `nobody` user exists to run "
        "PostgreSQL as; create one (`useradd --system postgres`)."
    )


def _run_as(
    user: pwd.struct_passwd | None, args: list[str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    extra: dict[str, Any] = {}
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
    if user is not None:
        extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env["HOME"] = str(cwd)
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **extra
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_orphaned_postgres() -> None:
    """Stop servers and remove data dirs left by earlier sessions that died uncleanly."""
    for base in Path(tempfile.gettempdir()).glob(_PG_PREFIX + "*"):
        try:
            owner_pid = int(json.loads((base / "owner.json").read_text())["owner_pid"])
        except (OSError, ValueError, KeyError):
            with contextlib.suppress(OSError):
                if time.time() - base.stat().st_mtime > 600:
                    shutil.rmtree(base, ignore_errors=True)
            continue
        if _alive(owner_pid):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((base / "data" / "postmaster.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{postmaster}/cmdline").read_bytes()
            if str(base).encode() in cmdline:
                os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown
        shutil.rmtree(base, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server with a `farm` database; trust auth on 127.0.0.1 only."""
    with postgres_server() as url:
        yield url


@contextlib.contextmanager
def postgres_server(settings: str = "") -> Iterator[str]:
    """A throwaway PostgreSQL server with a `farm` database, stopped and removed on exit;
    `settings`: extra `-c name=value` server options. Also used outside pytest
    (benchmarks/analytics_scale.py)."""
    import psycopg

    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin "
            "or on PATH. Install them (`apt-get install postgresql-15`) or set FARM_PG_BIN to "
            "their directory."
        )
    _sweep_orphaned_postgres()
    user = _unprivileged_user()
    # Not under pytest's tmp dirs: those are 0700 root and the postgres user cannot enter them.
    base = Path(tempfile.mkdtemp(prefix=_PG_PREFIX)).resolve()
    (base / "owner.json").write_text(json.dumps({"owner_pid": os.getpid()}))
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    data = base / "data"
    log = base / "postgres.log"
    pg_ctl = str(bin_dir / "pg_ctl")
    started = False
    try:
        result = _run_as(
            user,
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                _PG_SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=base,
        )
        if result.returncode != 0:
            pytest.fail(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        port = 0
        for _attempt in range(3):
            port = _free_port()
            # Durability is pointless for a throwaway test server; speed is not.
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off {settings}"
            )
            result = _run_as(
                user,
                [pg_ctl, "start", "-w", "-t", "60", "-D", str(data), "-l", str(log), "-o", options],
                cwd=base,
                timeout=90,
            )
            if result.returncode == 0:
                started = True
                break
            # A port picked free can be taken before postgres binds it: try another.
            if "already in use" not in log.read_text(errors="replace"):
                break
        if not started:
            pytest.fail(
                f"PostgreSQL did not start:\n{result.stdout}\n{result.stderr}\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        admin_url = f"postgresql://{_PG_SUPERUSER}@127.0.0.1:{port}/postgres"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE DATABASE farm")
        yield f"postgresql://{_PG_SUPERUSER}@127.0.0.1:{port}/farm"
    finally:
        if started:
            _run_as(user, [pg_ctl, "stop", "-m", "fast", "-w", "-D", str(data)], cwd=base)
        shutil.rmtree(base, ignore_errors=True)


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
