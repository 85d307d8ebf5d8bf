"""Processes of the local stack: spawning them detached or not, finding out whether a
recorded pid is still ours, and stopping them."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

STOP_TIMEOUT_SECONDS = 10.0

_Started = TypeVar("_Started")


class StartedInWith(Generic[_Started]):
    """`with thing as started:` runs `start()` and always `stop()` on leaving.

    The servers and daemons of the dev stack leave processes and folders behind when a
    test or command fails half-way; one base class keeps their `with` blocks alike.
    """

    def start(self) -> _Started:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Started:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The emulators are on 127.0.0.1; an http(s)_proxy in the environment must not capture them.


def terminate(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def spawn(
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


def pid_alive(pid: int, marker: str | None = None) -> bool:
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
                return marker in command_line(pid)
        except (OSError, IndexError):
            return False
    return True


def command_line(pid: int) -> str:
    """The process's arguments joined by spaces (/proc separates them with NUL bytes)."""
    return (
        (Path("/proc") / str(pid) / "cmdline")
        .read_bytes()
        .replace(b"\0", b" ")
        .decode(errors="replace")
    )


def _proc_pids() -> list[int]:
    return [int(proc.name) for proc in Path("/proc").iterdir() if proc.name.isdigit()]


def processes_in_group(group: int, marker: str) -> list[int]:
    """Live pids of process group `group` whose command line contains `marker`."""
    found = []
    for pid in _proc_pids():
        with contextlib.suppress(OSError, ProcessLookupError):
            if os.getpgid(pid) == group and marker in command_line(pid) and pid_alive(pid):
                found.append(pid)
    return found


def child_pids(parent: int) -> list[int]:
    found = []
    for pid in _proc_pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
            fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(pid)
    return found


def wait_until_gone(pids: list[int], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """Return once none of `pids` runs; RuntimeError naming the survivors after `timeout`."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes still running: {[p for p in pids if pid_alive(p)]}")
        time.sleep(0.05)


def kill_now(pids: list[int], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGKILL each process (a crash, not a shutdown) and return once all are gone;
    raise if one survives."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until_gone(pids, timeout)


def stop_pids(pids: list[int], marker: str | None, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    stop_processes([(pid, marker) for pid in pids], timeout)


def stop_processes(
    processes: list[tuple[int, str | None]], timeout: float = STOP_TIMEOUT_SECONDS
) -> None:
    """SIGTERM each (pid, marker) whose pid still runs the process the marker names, all at
    once, then SIGKILL what is left after `timeout`: a topology stops in its slowest
    process's time, not the sum of them all."""

    def alive() -> list[tuple[int, str | None]]:
        return [(pid, marker) for pid, marker in processes if pid_alive(pid, marker)]

    def signal_all(sig: int) -> None:
        for pid, _ in alive():
            try:
                # Detached emulators lead their own process group; take the group down.
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGKILL):
        signal_all(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            time.sleep(0.05)
        if not alive():
            return


def listening_addresses(port: int) -> set[str]:
    """The local addresses of this machine's listening TCP sockets on `port`."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                # Each 32-bit word is in host (little-endian) byte order.
                raw = b"".join(
                    bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 2 * width, 8)
                )
                ip = ipaddress.ip_address(raw)
                found.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return found
