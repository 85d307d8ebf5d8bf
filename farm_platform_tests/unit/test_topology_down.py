"""`stack down` of the production topology against the watchdog's repairs.

The watchdog replaces a silent code server under the topology's lock: it kills the old
process, starts a new one and only then records its pid. A `stack down` that read the pids
before the replacement was recorded would stop the old one and leave the new one running,
reparented to init, after its state folder is gone.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from farm_platform_dev.liveness import topology_lock
from farm_platform_dev.processes import pid_alive
from farm_platform_dev.production import production_down
from farm_platform_dev.topology_processes import read_production, write_production

LOCATION = "farm_platform"
KEY = f"code_server:{LOCATION}"
PORT = 47001  # never opened: the code server's port is only its marker here


def _code_server_stand_in() -> subprocess.Popen[bytes]:
    """A process whose command line carries a code server's marker (`-p PORT `)."""
    script = "import time; time.sleep(120)"
    return subprocess.Popen([sys.executable, "-c", script, "-p", str(PORT), "stand-in"])


def test_a_code_server_replaced_while_the_topology_stops_is_stopped_too(tmp_path: Path) -> None:
    old = _code_server_stand_in()
    write_production(tmp_path, {"pids": {KEY: old.pid}, "code_server_ports": {LOCATION: PORT}})
    replacements: list[subprocess.Popen[bytes]] = []
    replacing = threading.Event()

    def watchdog_replacing() -> None:
        with topology_lock(tmp_path):
            replacing.set()
            time.sleep(1.0)  # the new code server loads its definitions
            old.kill()
            replacements.append(_code_server_stand_in())
            state = read_production(tmp_path)
            assert state is not None
            state["pids"][KEY] = replacements[0].pid
            write_production(tmp_path, state)

    watchdog = threading.Thread(target=watchdog_replacing)
    watchdog.start()
    try:
        assert replacing.wait(10)
        assert production_down(tmp_path)
        watchdog.join()
        assert read_production(tmp_path) is None
        replacement = replacements[0]
        replacement.wait(timeout=10)
        assert not pid_alive(replacement.pid)
    finally:
        watchdog.join()
        for process in [old, *replacements]:
            process.kill()
            process.wait()


def test_down_without_a_recorded_topology_leaves_its_folder_alone(tmp_path: Path) -> None:
    state_dir = tmp_path / "never-started"
    assert not production_down(state_dir)
    assert not state_dir.exists()
