"""A `farm-platform models serve` process: on free ports for the tests and the benchmark
(`ModelServerProcess`), or detached beside the emulators (`farm-platform stack up
--model-server`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from types import TracebackType

from farm_platform.config import FARM_INFERENCE, FARM_OIP_TOKEN, FARM_OIP_URL
from farm_platform_dev.emulators import wait_ready
from farm_platform_dev.processes import free_port, spawn, terminate

# kserve and torch import in ~10 s on an idle 2-core machine; a loaded CI machine takes
# several times that. A bound on waiting only.
START_TIMEOUT_SECONDS = 180.0


def start_model_server(
    models_dir: Path | str,
    port: int,
    grpc_port: int,
    log_path: Path,
    *,
    watch_seconds: float,
    detached: bool,
    token: str | None = None,
    emulate_batch_ms: float = 0.0,
    plain: tuple[str, ...] = (),
    host: str = "127.0.0.1",
) -> Popen[bytes]:
    """Start `farm-platform models serve` on `host` and return once it answers ready
    (StackError if it exits or stays silent first, with its log's last lines); with a
    `token`, it requires it (FARM_OIP_TOKEN in its environment only)."""
    process = spawn(
        [
            sys.executable,
            "-m",
            "farm_platform.cli",
            "models",
            "--models-dir",
            str(models_dir),
            "serve",
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--host",
            host,
            "--watch-seconds",
            str(watch_seconds),
            *(["--emulate-batch-ms", str(emulate_batch_ms)] if emulate_batch_ms else []),
            *(arg for spec in plain for arg in ("--plain", spec)),
        ],
        log_path,
        env={**os.environ, FARM_OIP_TOKEN: token} if token else None,
        detached=detached,
    )
    wait_ready(
        process,
        f"http://{host}:{port}/v2/health/ready",
        log_path,
        "the model server",
        START_TIMEOUT_SECONDS,
    )
    return process


def grpc_url(grpc_port: int, host: str = "127.0.0.1") -> str:
    """The FARM_OIP_URL of a server's gRPC port (gRPC carries the data)."""
    return f"grpc://{host}:{grpc_port}"


def oip_environment(url: str) -> dict[str, str]:
    """What a pipeline process needs to infer on the server at `url`."""
    return {FARM_INFERENCE: "oip", FARM_OIP_URL: url}


@dataclass
class ModelServerProcess:
    """`with ModelServerProcess(models_dir, log) as server:` serves until the block ends
    (`models_dir`: a folder or a bucket folder's URL)."""

    models_dir: Path | str
    log_path: Path
    port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    # Off by default: a test that switches versions decides when the server follows.
    watch_seconds: float = 0.0
    token: str | None = None
    # Benchmarks: a remote accelerator's batch time (`models serve --emulate-batch-ms`).
    emulate_batch_ms: float = 0.0
    # `models serve --plain` specs: versions also served plain (ml/serving_plain.py).
    plain: tuple[str, ...] = ()
    _process: Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "the server is not started"
        return self._process.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return grpc_url(self.grpc_port)

    def environment(self) -> dict[str, str]:
        return oip_environment(self.grpc_url)

    def __enter__(self) -> ModelServerProcess:
        self._process = start_model_server(
            self.models_dir,
            self.port,
            self.grpc_port,
            self.log_path,
            watch_seconds=self.watch_seconds,
            detached=False,
            token=self.token,
            emulate_batch_ms=self.emulate_batch_ms,
            plain=self.plain,
        )
        return self

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, timeout=30)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
