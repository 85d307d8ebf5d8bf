"""A private local Google Cloud stack for the life of a `with` block: both emulators, their
topology, and on request a model server, in a temp dir (the demo, the tests, the
benchmarks). `farm-platform stack` keeps the detached one (`stack.py`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from farm_platform.config import DEFAULT_REGISTRY_WATCH_SECONDS, absolute_models_dir
from farm_platform_dev.emulators import (
    create_pubsub_topology,
    start_gcs_emulator,
    start_pubsub_emulator,
)
from farm_platform_dev.model_server import grpc_url, start_model_server
from farm_platform_dev.processes import (
    StartedInWith,
    free_port,
    pid_alive,
    stop_pids,
    terminate,
)
from farm_platform_dev.stack import StackInfo, create_topology, restart_dead_emulators

# Temp dirs of LocalStack instances; a crashed owner leaves them (and maybe emulators) behind.
_LOCAL_PREFIX = "farm-localstack-"
_OWNER_FILE = "owner.json"


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
        if pid_alive(int(owner.get("owner_pid", 0))):
            continue
        stop_pids([int(p) for p in owner.get("pids", [])], str(directory), timeout=5)
        shutil.rmtree(directory, ignore_errors=True)


class LocalStack(StartedInWith[StackInfo]):
    """Both emulators (and with `model_server`, a model server) in a private temp dir for
    the life of a `with` block (tests, demo).

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
        model_server: bool = False,
    ) -> None:
        self.project = project
        self.bucket = bucket
        self.pubsub_port = pubsub_port
        self.gcs_port = gcs_port
        self.keep_dir = keep_dir
        self.model_server = model_server
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
            create_pubsub_topology(self.project, pubsub_host)
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
            if self.model_server:
                grpc_port = free_port()
                proc = start_model_server(
                    absolute_models_dir(),
                    free_port(),
                    grpc_port,
                    self._dir / "model-server.log",
                    watch_seconds=DEFAULT_REGISTRY_WATCH_SECONDS,
                    detached=False,
                )
                self._procs.append(proc)
                self._record_owner()
                info = replace(info, oip_url=grpc_url(grpc_port))
        except BaseException:
            self.stop()
            raise
        self.info = info
        return info

    def kill_pubsub_emulator(self) -> None:
        """An outage, for fault tests: the emulator dies with every message it held."""
        self._procs[0].kill()
        self._procs[0].wait()

    def recover(self) -> StackInfo:
        """Restart whichever emulator died, on its port, and re-create the topology."""
        assert self.info is not None, "recover() a started LocalStack"
        pubsub_proc, gcs_proc, *model_server = self._procs
        pubsub, gcs = restart_dead_emulators(
            self.info, pubsub_proc.poll() is None, gcs_proc.poll() is None, detached=False
        )
        self._procs = [pubsub or pubsub_proc, gcs or gcs_proc, *model_server]
        self._record_owner()
        return self.info

    def stop(self) -> None:
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                terminate(proc)
        self._procs.clear()
        self.info = None
        if self._dir is not None and not self.keep_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
