"""The hosts of `farm-platform hosts up` without their services (farm_platform_dev.hosts,
netns): namespaces on a bridge of their own, each host reaching another only by address,
private folders no other host sees, and everything removed again by `hosts down`. Root only;
a few seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm_platform import config
from farm_platform_dev.hosts import HOSTS, Hosts, build_hosts, hosts_down, on_host, read_state
from farm_platform_dev.netns import NetworkLayout, ip, processes_in
from farm_platform_dev.production import CREDENTIALS

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None,
    reason="network namespaces need root, iproute2 and nsenter",
)
# Not the default layout's: a story running beside this test keeps its own.
LAYOUT = NetworkLayout(HOSTS, prefix="fp45q", subnet="10.45.1.0/24")


@pytest.fixture(autouse=True)
def _no_leftover_of_this_layout() -> None:
    """A run killed before its teardown must not fail every later one: this layout is the
    tests' own."""
    if LAYOUT.leftovers():
        LAYOUT.down()


@pytest.fixture
def built(monkeypatch) -> Iterator[tuple[Hosts, dict]]:
    for name in CREDENTIALS:
        monkeypatch.setenv(name, "x")
    state_dir = Path(tempfile.mkdtemp(prefix="farm-hosts-"))
    hosts = Hosts(state_dir, LAYOUT)
    try:
        yield hosts, build_hosts(hosts)
    finally:
        hosts_down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


def on(hosts: Hosts, state: dict, host: str, code: str) -> str:
    result = subprocess.run(
        [*on_host(hosts, state, host), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_hosts_reach_each_other_by_address_and_see_only_their_own_folders(built):
    hosts, state = built
    assert sorted(LAYOUT.leftovers()) == sorted(
        [*map(LAYOUT.namespace, HOSTS), *map(LAYOUT.link, HOSTS), LAYOUT.bridge]
    )
    for host in HOSTS:
        # One address in the private subnet, and no route anywhere else.
        routes = ip("-n", LAYOUT.namespace(host), "route").splitlines()
        assert routes and all(line.startswith("10.45.1.0/24 ") for line in routes), routes
        assert on(hosts, state, host, "import socket; print(socket.gethostname())") == host
    # A server bound to db's address answers a client on worker-1, across the bridge.
    db = LAYOUT.address("db")
    server = subprocess.Popen(
        [*on_host(hosts, state, "db"), sys.executable, "-m", "http.server", "-b", db, "8000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        fetch = (
            "import time, urllib.request\n"
            "for _ in range(100):\n"
            "    try:\n"
            f"        print(urllib.request.urlopen('http://{db}:8000/', timeout=2).status); break\n"
            "    except OSError: time.sleep(0.1)\n"
        )
        assert on(hosts, state, "worker-1", fetch) == "200"
        # db's loopback is db's own: worker-1's 127.0.0.1 has no server.
        refused = "import socket; print(socket.socket().connect_ex(('127.0.0.1', 8000)) != 0)"
        assert on(hosts, state, "worker-1", refused) == "True"
    finally:
        server.terminate()
        server.wait(10)
    # Each host writes its own folders and sees nothing of another's.
    home = hosts.dagster_home("control")
    (home / "dagster.yaml").write_text("control's instance\n")
    where = f"import os; print(os.path.exists({str(home)!r}), os.listdir({str(home.parent)!r}))"
    assert on(hosts, state, "worker-2", where) == "False []"
    assert on(hosts, state, "control", f"import os; print(os.listdir({str(home)!r}))") == (
        "['dagster.yaml']"
    )


def test_no_host_s_settings_point_into_another_host_s_folders(monkeypatch):
    for name in CREDENTIALS:
        monkeypatch.setenv(name, "x")
    hosts = Hosts(Path("/var/tmp/farm-hosts-settings"), LAYOUT)
    for host in HOSTS:
        environment = hosts.environment(host)
        paths = [value for value in environment.values() if value.startswith("/")]
        assert environment[config.DAGSTER_HOME].startswith(str(hosts.host_dir(host)))
        for path in paths:
            assert Path(path).is_relative_to(hosts.host_dir(host)), (host, path)
        # Shared services by address, on the hosts' subnet only.
        assert "127.0.0.1" not in "".join(environment.values()), host


def test_hosts_down_removes_every_namespace_link_mount_and_process(monkeypatch):
    for name in CREDENTIALS:
        monkeypatch.setenv(name, "x")
    state_dir = Path(tempfile.mkdtemp(prefix="farm-hosts-"))
    try:
        hosts = Hosts(state_dir, LAYOUT)
        state = build_hosts(hosts)
        inits = list(state["init"].values())
        assert all(processes_in(LAYOUT.namespace(host)) for host in HOSTS)
    finally:
        assert hosts_down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
    assert LAYOUT.leftovers() == []
    assert read_state(state_dir) is None
    assert not any(Path(f"/proc/{pid}").exists() for pid in inits)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "fp45q-hidden" not in mounts and str(state_dir) not in mounts
