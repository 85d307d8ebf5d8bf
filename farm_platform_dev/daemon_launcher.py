"""`python -m farm_platform_dev.daemon_launcher WORKSPACE SERVED_WORKSPACE`: the
dagster-daemon of the demo, the tests and the benchmarks, over code servers that live as
long as it does.

Over a workspace of `python_module` entries, `dagster-daemon run` starts a code server per
location itself and, on its workspace refresh every 60 s, replaces each with a new
process: every replacement imports Dagster and the definitions again (about 2 CPU s for
the image location, 4.5 for analytics) and rebuilds what its sensors keep across ticks.
Here, as `dagster dev` and the production topology do, one `dagster api grpc` per
location starts first, on a port of its own; SERVED_WORKSPACE (written here) points the
daemon at them (`grpc_server`), and its refresh only reads their definitions again. A code
server that exits (a fault test kills it) is started again on the same port. The
launcher, its code servers and the daemon share a process group (`DaemonProcess` stops
them together), and the daemon and the code servers die with the launcher.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import yaml

from farm_platform_dev.liveness import wait_until_answers
from farm_platform_dev.processes import free_port

START_TIMEOUT_SECONDS = 300.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # The launcher killed alone (as a test kills "the daemon") takes its children along.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def locations(workspace: Path) -> list[tuple[str, str]]:
    """(location name, module) of each `python_module` entry of the workspace file."""
    entries = yaml.safe_load(workspace.read_text())["load_from"]
    return [
        (entry["python_module"]["location_name"], entry["python_module"]["module_name"])
        for entry in entries
    ]


def served_workspace(ports: dict[str, int]) -> str:
    return yaml.safe_dump(
        {
            "load_from": [
                {"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": name}}
                for name, port in ports.items()
            ]
        }
    )


def _code_server(name: str, module: str, port: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "dagster", "api", "grpc", "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.Popen(
        [*args, "-m", module, "--location-name", name], preexec_fn=_die_with_parent
    )


def main(argv: Sequence[str] | None = None) -> int:
    workspace, served = (Path(arg) for arg in (argv or sys.argv[1:]))
    modules = dict(locations(workspace))
    ports = {name: free_port() for name in modules}
    servers = {name: _code_server(name, module, ports[name]) for name, module in modules.items()}
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    daemon: subprocess.Popen[bytes] | None = None
    try:
        for name, server in servers.items():
            # Their output is the launcher's own: no log file of theirs to quote.
            wait_until_answers(
                ports[name], server.pid, f"code server {name}", None, START_TIMEOUT_SECONDS
            )
        served.write_text(served_workspace(ports))
        executable = Path(sys.executable).with_name("dagster-daemon")
        daemon = subprocess.Popen(
            [str(executable), "run", "-w", str(served)], preexec_fn=_die_with_parent
        )
        while not stopping.is_set() and daemon.poll() is None:
            for name, server in servers.items():
                if server.poll() is not None:
                    print(f"code server {name} exited ({server.returncode}); starting it again")
                    servers[name] = _code_server(name, modules[name], ports[name])
            stopping.wait(1.0)
    finally:
        for process in [*servers.values(), *([daemon] if daemon else [])]:
            if process.poll() is None:
                process.terminate()
        for process in [*servers.values(), *([daemon] if daemon else [])]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    if stopping.is_set():
        return 0
    return 1 if daemon is None or daemon.returncode is None else daemon.returncode


if __name__ == "__main__":
    sys.exit(main())
