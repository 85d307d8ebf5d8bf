"""The local Google Cloud stack: both emulators, their topics, subscriptions and bucket,
and on request a model server (`models serve`) beside them.

`farm-platform stack up|down|env` keeps a detached stack whose state lives in a folder
(`.farm/stack` by default); `local_stack.LocalStack` gives the demo and the tests a
private one for the life of a `with` block. Nothing here needs a cloud account or the network beyond
127.0.0.1. How the emulators behave (and why things start in this order) is in
docs/local-stack.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm_platform.config import (
    DEFAULT_REGISTRY_WATCH_SECONDS,
    DEFAULT_SUBSCRIPTION,
    FARM_BUCKET,
    FARM_GCP_PROJECT,
    FARM_SUBSCRIPTION,
    PUBSUB_EMULATOR_HOST,
    STORAGE_EMULATOR_HOST,
    absolute_models_dir,
    parse_models_dir,
)
from farm_platform_dev.emulators import (
    StackError,
    create_bucket,
    create_pubsub_topology,
    start_gcs_emulator,
    start_pubsub_emulator,
)
from farm_platform_dev.model_server import grpc_url, oip_environment, start_model_server
from farm_platform_dev.processes import free_port, pid_alive, stop_processes, terminate

STATE_FILE = "stack.json"
STACK_DIR_ENV = "FARM_STACK_DIR"


@dataclass(frozen=True)
class StackInfo:
    """Where a running local stack answers."""

    project: str
    bucket: str
    pubsub_host: str  # "127.0.0.1:PORT" (PUBSUB_EMULATOR_HOST form)
    storage_host: str  # "http://127.0.0.1:PORT" (STORAGE_EMULATOR_HOST form)
    state_dir: Path
    oip_url: str | None = None  # "grpc://127.0.0.1:PORT" when a model server runs beside

    def bucket_url(self) -> str:
        return f"gs://{self.bucket}"

    def environment(self) -> dict[str, str]:
        """The variables a process needs to use this stack (docs/contracts.md, Configuration)."""
        return {
            FARM_BUCKET: self.bucket_url(),
            FARM_GCP_PROJECT: self.project,
            FARM_SUBSCRIPTION: DEFAULT_SUBSCRIPTION,
            PUBSUB_EMULATOR_HOST: self.pubsub_host,
            STORAGE_EMULATOR_HOST: self.storage_host,
            # gcsfs otherwise probes a gRPC endpoint the emulator lacks and stalls 60 s.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            **(oip_environment(self.oip_url) if self.oip_url else {}),
        }


def default_state_dir() -> Path:
    """`$FARM_STACK_DIR`, else `./.farm/stack` (absolute, resolved against the cwd)."""
    configured = os.environ.get(STACK_DIR_ENV)
    return Path(configured or Path(".farm") / "stack").expanduser().resolve()


def create_topology(info: StackInfo) -> None:
    """Create (idempotently) the bucket, both topics and both subscriptions."""
    create_pubsub_topology(info.project, info.pubsub_host)
    create_bucket(info.project, info.storage_host, info.bucket)


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
    grpc_port = state.get("model_server_grpc_port")
    return StackInfo(
        project=state["project"],
        bucket=state["bucket"],
        pubsub_host=state["pubsub_host"],
        storage_host=state["storage_host"],
        state_dir=state_dir,
        oip_url=grpc_url(int(grpc_port)) if grpc_port else None,
    )


_EMULATOR_PIDS = ("pubsub_pid", "gcs_pid")
_PROCESS_KEYS = (*_EMULATOR_PIDS, "model_server_pid")


def _process_marker(state: dict[str, Any], key: str, state_dir: Path) -> str:
    """What the recorded process's command line contains, so a reused pid is not ours: the
    emulators' data folders are in the state dir; the model server is known by its port."""
    if key == "model_server_pid":
        return f"--grpc-port {state['model_server_grpc_port']} "
    return str(state_dir)


def _live_processes(state: dict[str, Any], state_dir: Path) -> list[str]:
    """The recorded processes that still run, by state key."""
    return [
        key
        for key in _PROCESS_KEYS
        if key in state and pid_alive(int(state[key]), _process_marker(state, key, state_dir))
    ]


def _dead_processes(state: dict[str, Any], state_dir: Path) -> list[str]:
    """The stack's processes that do not run: an emulator dead or never recorded, the model
    server if the stack has one and it died."""
    live = _live_processes(state, state_dir)
    expected = [*_EMULATOR_PIDS, *(["model_server_pid"] if "model_server_pid" in state else [])]
    return [key for key in expected if key not in live]


def other_running_stacks(state_dir: Path, under: Path = Path(".farm")) -> list[Path]:
    """State dirs below `under` (the demo's `.farm/demo/stack`, a `--state-dir` of one's
    own) whose emulators run, other than `state_dir`: what a `stack` command given no
    `--state-dir` points the user at when nothing runs at the default."""
    found = []
    for state_file in sorted([*under.glob(f"*/{STATE_FILE}"), *under.glob(f"*/*/{STATE_FILE}")]):
        other = state_file.parent.resolve()
        with contextlib.suppress(StackError):
            state = _read_state(other)
            if other != state_dir.resolve() and state and not _dead_processes(state, other):
                found.append(other)
    return found


def elsewhere_hint(state_dir: Path) -> str:
    """How to reach the stacks that run elsewhere; "" if none does."""
    others = other_running_stacks(state_dir)
    flags = " or ".join(f"`--state-dir {other}`" for other in others)
    return f"one runs elsewhere: add {flags} to the command" if others else ""


def load_stack(state_dir: Path | None = None) -> StackInfo:
    """The stack recorded in `state_dir`; StackError unless both emulators still run."""
    state_dir = (state_dir or default_state_dir()).resolve()
    state = _read_state(state_dir)
    if state is None:
        raise StackError(
            f"No local stack is running in {state_dir} (no {STATE_FILE}); "
            + (elsewhere_hint(state_dir) or "start one with `farm-platform stack up`.")
        )
    dead = _dead_processes(state, state_dir)
    if dead:
        raise StackError(
            f"The local stack recorded in {state_dir / STATE_FILE} is not running "
            f"({', '.join(dead)} gone; logs in {state_dir}). "
            "Run `farm-platform stack up` to repair it, or `farm-platform stack down` first "
            "to start afresh."
        )
    return _info_from_state(state, state_dir)


def stack_up(
    state_dir: Path | None = None,
    project: str = "farm-local",
    bucket: str = "farm-images",
    pubsub_port: int | None = None,
    gcs_port: int | None = None,
    model_server: bool = False,
) -> StackInfo:
    """Start both emulators detached (they outlive this process), or return the live one,
    repaired if part of it died. With `model_server`, a model server runs beside them (the
    models of `$FARM_MODELS_DIR`) and the stack's environment sends inference to it."""
    state_dir = (state_dir or default_state_dir()).resolve()
    with _locked(state_dir):
        state = _read_state(state_dir)
        if state is not None:
            try:
                _repair(state, state_dir)
            except StackError:
                # Its ports are taken: clear the leftovers so a fresh stack can start.
                _stop_recorded(state, state_dir)
                (state_dir / STATE_FILE).unlink(missing_ok=True)
            else:
                if model_server and "model_server_pid" not in state:
                    _start_recorded_model_server(state, state_dir)
                return _info_from_state(state, state_dir)

        pubsub_proc, pubsub_host = start_pubsub_emulator(
            project,
            pubsub_port,
            state_dir / "pubsub-data",
            state_dir / "pubsub.log",
            detached=True,
        )
        started = [pubsub_proc]
        try:
            create_pubsub_topology(project, pubsub_host)
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
                terminate(proc)
            raise
        if model_server:
            _start_recorded_model_server(state, state_dir)
        return _info_from_state(state, state_dir)


def _start_recorded_model_server(state: dict[str, Any], state_dir: Path) -> None:
    """Start the stack's model server, on its recorded ports if it had one, and record it.
    It watches the registry, so `farm-platform models activate` reaches it unrestarted."""
    state.setdefault("model_server_port", free_port())
    state.setdefault("model_server_grpc_port", free_port())
    state.setdefault("models_dir", str(absolute_models_dir()))
    process = start_model_server(
        parse_models_dir(state["models_dir"]),
        int(state["model_server_port"]),
        int(state["model_server_grpc_port"]),
        state_dir / "model-server.log",
        watch_seconds=DEFAULT_REGISTRY_WATCH_SECONDS,
        detached=True,
    )
    state["model_server_pid"] = process.pid
    _write_state(state_dir, state)


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
    create_pubsub_topology(info.project, info.pubsub_host)
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
    create_bucket(info.project, info.storage_host, info.bucket)
    return pubsub, gcs


def _repair(state: dict[str, Any], state_dir: Path) -> None:
    """Restart whatever part of the recorded stack died, in place; nothing if all runs."""
    dead = _dead_processes(state, state_dir)
    if not dead:
        return
    info = _info_from_state(state, state_dir)
    pubsub, gcs = restart_dead_emulators(
        info, "pubsub_pid" not in dead, "gcs_pid" not in dead, detached=True
    )
    if pubsub is not None:
        state["pubsub_pid"] = pubsub.pid
    if gcs is not None:
        state["gcs_pid"] = gcs.pid
    _write_state(state_dir, state)
    if "model_server_pid" in dead:
        _start_recorded_model_server(state, state_dir)


def _stop_recorded(state: dict[str, Any], state_dir: Path) -> None:
    stop_processes(
        [
            (int(state[key]), _process_marker(state, key, state_dir))
            for key in _PROCESS_KEYS
            if key in state
        ]
    )


def stack_down(state_dir: Path | None = None) -> bool:
    """Stop the recorded emulators and forget them; False if nothing was running."""
    state_dir = (state_dir or default_state_dir()).resolve()
    if not (state_dir / STATE_FILE).exists():
        return False
    with _locked(state_dir):
        state = _read_state(state_dir)
        if state is None:
            return False
        was_running = bool(_live_processes(state, state_dir))
        _stop_recorded(state, state_dir)
        still = [int(state[key]) for key in _live_processes(state, state_dir)]
        if still:
            raise StackError(f"Could not stop process(es) {still}; kill them by hand.")
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        return was_running
