"""The production topology across hosts: `farm-platform hosts up` / `hosts down`.

Seven hosts, each a Linux network namespace on a bridge of its own (farm_platform_dev.netns)
with a mount and UTS namespace of its own (its own hostname, and the other hosts' folders
covered by an empty read-only tmpfs):

- `cloud`: the Pub/Sub emulator and fake-gcs-server, standing for the managed services;
- `db`: PostgreSQL (Dagster's storage and the warehouse) and Redis (the Celery broker);
- `control`: the two code servers, the daemon and the operators' webserver;
- `worker-1`, `worker-2`: Celery `images` workers (worker-1 also the `analytics` one) and
  the runs they execute;
- on `control` and each worker, its processes' PgBouncer (farm_platform_dev.pooler);
- `model-1`, `model-2`: model-server replicas.

Each host has its own DAGSTER_HOME, TMPDIR, cache (FARM_MODELS_CACHE, XDG_CACHE_HOME) and
logs under `<state dir>/hosts/HOST/`, which no other host can see; every service listens on
its host's address only. What hosts share is what production shares, reached by address: the
bucket, Pub/Sub, PostgreSQL and Redis (and the model servers). The platform's code and
models/ are the same files on every host, as an installed image would be.

A host is its `init` process (`sleep infinity` in the host's namespaces); every service is
started inside it with `nsenter` by farm_platform_dev.host_agent. `hosts down` ends every
process in the hosts' network namespaces and removes namespaces, links and bridge; the
mounts live in the hosts' private mount namespaces and go with their last process.
State: `<state dir>/hosts.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm_platform import config
from farm_platform_dev.emulators import StackError
from farm_platform_dev.netns import DEFAULT_PREFIX, DEFAULT_SUBNET, NetworkLayout
from farm_platform_dev.pooler import POOLER_PORT
from farm_platform_dev.stack import StackInfo
from farm_platform_dev.topology_processes import read_state_file, write_state_file

HOSTS = ("cloud", "db", "control", "worker-1", "worker-2", "model-1", "model-2")
WORKER_HOSTS = ("worker-1", "worker-2")
MODEL_HOSTS = ("model-1", "model-2")
# The hosts that run platform code and open the Dagster instance.
INSTANCE_HOSTS = ("control", *WORKER_HOSTS)
# Each service's port on its own host's address (one address per host: no port clashes).
PORTS = {
    "pubsub": 8085,
    "gcs": 4443,
    "postgres": 5432,
    "redis": 6379,
    "code_server:farm_platform": 4000,
    "code_server:farm_platform_analytics": 4001,
    "webserver": 3000,
    "model_http": 8080,
    "model_grpc": 8081,
}
# What hosts share, by address, and where each runs.
SHARED_SERVICES = {
    "pubsub": "cloud",
    "gcs": "cloud",
    "postgres": "db",
    "redis": "db",
    "model_grpc": "model-1",
}
PROXY_OFFSET = 10000
STATE_FILE = "hosts.json"
PROJECT, BUCKET = "farm-local", "farm-images"


@dataclass(frozen=True)
class Hosts:
    """A multi-host topology's layout: addresses, private folders, what each host needs."""

    state_dir: Path
    layout: NetworkLayout = field(default_factory=lambda: NetworkLayout(HOSTS))
    max_concurrent_runs: int = 4
    quick_polling: bool = False
    # Platform settings every host's processes run with (FARM_SENSOR_INTERVAL_SECONDS, ...).
    settings: dict[str, str] = field(default_factory=dict)
    # Every connection to a shared service through the delay proxy (farm_platform_dev.
    # delay_proxy) on this machine's bridge address, delayed by `<state dir>/delay_ms`.
    delayed: bool = False
    # A PgBouncer on each INSTANCE_HOSTS host (False: they reach PostgreSQL itself).
    pooled: bool = True

    def address(self, host: str) -> str:
        return self.layout.address(host)

    def service(self, name: str) -> tuple[str, int]:
        """Where clients reach the shared service `name` (a PORTS key on its own host, or
        the delay proxy's port for it)."""
        if self.delayed:
            return self.layout.gateway, PROXY_OFFSET + PORTS[name]
        return self.address(SHARED_SERVICES[name]), PORTS[name]

    def proxy_routes(self) -> list[str]:
        """The delay proxy's LISTEN=TARGET pairs, one per shared service."""
        return [
            f"{self.layout.gateway}:{PROXY_OFFSET + PORTS[name]}={self.address(host)}:{PORTS[name]}"
            for name, host in SHARED_SERVICES.items()
        ]

    @property
    def delay_file(self) -> Path:
        return self.state_dir / "delay_ms"

    def host_dir(self, host: str) -> Path:
        return self.state_dir / "hosts" / host

    def dagster_home(self, host: str) -> Path:
        return self.host_dir(host) / "dagster"

    def log(self, host: str, name: str) -> Path:
        return self.host_dir(host) / "logs" / f"{name}.log"

    def field_map(self, host: str) -> Path:
        return self.host_dir(host) / "positions.csv"

    @property
    def stack(self) -> StackInfo:
        """The bucket and broker on `cloud`, as the emulator stack's variables name them."""
        pubsub, gcs = ":".join(map(str, self.service("pubsub"))), self.service("gcs")
        return StackInfo(PROJECT, BUCKET, pubsub, f"http://{gcs[0]}:{gcs[1]}", self.state_dir)

    @property
    def webserver_url(self) -> str:
        return f"http://{self.address('control')}:{PORTS['webserver']}"

    def postgres_for(self, host: str) -> tuple[str, int]:
        """Where `host`'s processes reach PostgreSQL: its own pooler, or the server."""
        if self.pooled and host in INSTANCE_HOSTS:
            return self.address(host), POOLER_PORT
        return self.service("postgres")

    def warehouse_url(self, password: str, host: str = "control") -> str:
        return "postgresql://farm:{}@{}:{}/farm".format(password, *self.postgres_for(host))

    def oip_url(self) -> str:
        if self.delayed:  # one proxied replica: the delay, not the spread, is measured
            return "grpc://{}:{}".format(*self.service("model_grpc"))
        grpc = PORTS["model_grpc"]
        return ",".join(f"grpc://{self.address(host)}:{grpc}" for host in MODEL_HOSTS)

    def environment(self, host: str) -> dict[str, str]:
        """What every process on `host` runs with: the shared services by address, and its
        own private folders. Needs the credentials exported (production.credentials)."""
        from farm_platform_dev.model_server import oip_environment
        from farm_platform_dev.production import credentials

        password, redis_password = credentials()
        private = self.host_dir(host)
        broker = "redis://:{}@{}:{}/0".format(redis_password, *self.service("redis"))
        return {
            **self.settings,
            **self.stack.environment(),
            **oip_environment(self.oip_url()),
            config.DAGSTER_HOME: str(self.dagster_home(host)),
            config.FARM_WAREHOUSE: self.warehouse_url(password, host),
            config.DAGSTER_WEBSERVER_URL: self.webserver_url,
            config.FARM_CELERY_BROKER: broker,
            config.FARM_FIELD_MAP: str(self.field_map(host)),
            config.FARM_MODELS_CACHE: str(private / "cache" / "models"),
            "DAGSTER_EVENT_BATCH_SIZE": "1000",
            "TMPDIR": str(private / "tmp"),
            "XDG_CACHE_HOME": str(private / "cache"),
            "HOME": str(private / "home"),
            # Nothing between hosts goes through a proxy.
            "NO_PROXY": self.layout.subnet,
            "no_proxy": self.layout.subnet,
        }

    def private_dirs(self, host: str) -> list[Path]:
        return [self.host_dir(host) / name for name in ("dagster", "tmp", "cache", "home", "logs")]


def read_state(state_dir: Path) -> dict[str, Any] | None:
    return read_state_file(state_dir / STATE_FILE)


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    write_state_file(state_dir / STATE_FILE, state)


def load_hosts(state_dir: Path) -> Hosts | None:
    state = read_state(state_dir)
    return None if state is None else _recorded_hosts(state_dir, state)


def _recorded_hosts(state_dir: Path, state: dict[str, Any]) -> Hosts:
    layout = NetworkLayout(HOSTS, prefix=state["prefix"], subnet=state["subnet"])
    runs, quick, settings = state["max_concurrent_runs"], state["quick_polling"], state["settings"]
    delayed, pooled = state.get("delayed", False), state.get("pooled", False)
    return Hosts(state_dir, layout, runs, quick, settings, delayed, pooled)


def hosts_up(
    state_dir: Path,
    max_concurrent_runs: int = 4,
    quick_polling: bool = False,
    settings: dict[str, str] | None = None,
    prefix: str = DEFAULT_PREFIX,
    subnet: str = DEFAULT_SUBNET,
    delayed: bool = False,
    pooled: bool = True,
) -> Hosts:
    """Build the hosts and start every service on its own; on any failure, everything made
    is removed again (StackError naming the host and its agent's log). `delayed`: the
    shared services are reached through the delay proxy (`set_delay`). `pooled`: a
    PgBouncer on each host that opens the instance."""
    from farm_platform_dev.production import credentials

    credentials()  # before anything is made
    layout = NetworkLayout(HOSTS, prefix=prefix, subnet=subnet)
    options = (max_concurrent_runs, quick_polling, settings or {}, delayed, pooled)
    hosts = Hosts(state_dir.resolve(), layout, *options)
    state = build_hosts(hosts)
    try:
        if delayed:
            state["proxy"] = _start_proxy(hosts)
            write_state(hosts.state_dir, state)
        for host in HOSTS:
            state["pids"][host] = run_agent(hosts, state, host)
            write_state(hosts.state_dir, state)
    except BaseException:
        hosts_down(hosts.state_dir)
        raise
    return hosts


def build_hosts(hosts: Hosts) -> dict[str, Any]:
    """The hosts without their services: namespaces, links, private folders and each
    host's init; returns the recorded state (removed again on a failure)."""
    if read_state(hosts.state_dir) is not None:
        raise StackError(
            f"hosts already run from {hosts.state_dir}: `farm-platform hosts down` first"
        )
    if hosts.layout.exists():
        raise StackError(
            f"the bridge {hosts.layout.bridge} exists already: other hosts run on this "
            f"machine (`farm-platform hosts down --state-dir DIR` for theirs, or pick "
            f"--prefix and --subnet)"
        )
    state: dict[str, Any] = {
        "prefix": hosts.layout.prefix,
        "subnet": hosts.layout.subnet,
        "max_concurrent_runs": hosts.max_concurrent_runs,
        "quick_polling": hosts.quick_polling,
        "settings": hosts.settings,
        "delayed": hosts.delayed,
        "pooled": hosts.pooled,
        "init": {},
        "pids": {},
    }
    hosts.state_dir.mkdir(parents=True, exist_ok=True)
    write_state(hosts.state_dir, state)
    try:
        hosts.layout.up()
        for host in HOSTS:
            _make_private_dirs(hosts, host)
        for host in HOSTS:
            state["init"][host] = _start_init(hosts, host)
        write_state(hosts.state_dir, state)
    except BaseException:
        hosts_down(hosts.state_dir)
        raise
    return state


def _start_proxy(hosts: Hosts) -> int:
    """The delay proxy on this machine's bridge address, one port per shared service."""
    from farm_platform_dev.processes import spawn
    from farm_platform_dev.topology_processes import wait_for_port

    set_delay(hosts, 0)
    args = [sys.executable, "-m", "farm_platform_dev.delay_proxy", str(hosts.delay_file)]
    log = hosts.state_dir / "delay-proxy.log"
    pid = spawn([*args, *hosts.proxy_routes()], log, None, detached=True).pid
    for name in SHARED_SERVICES:
        wait_for_port(hosts.service(name)[1], pid, "the delay proxy", log, hosts.layout.gateway)
    return pid


def set_delay(hosts: Hosts, milliseconds: float) -> None:
    """Each way between a host and a shared service, through the delay proxy (a round trip
    costs twice this); taken up by the proxy within a second."""
    hosts.delay_file.write_text(f"{milliseconds}\n")


def _make_private_dirs(hosts: Hosts, host: str) -> None:
    for folder in [*hosts.private_dirs(host), hosts.host_dir(host) / "data"]:
        folder.mkdir(parents=True, exist_ok=True)
    # PostgreSQL runs as an unprivileged user, which must reach its data folder.
    for folder in (hosts.state_dir, hosts.state_dir / "hosts", hosts.host_dir(host)):
        folder.chmod(0o755)


def _start_init(hosts: Hosts, host: str) -> int:
    """The host's init: in its network namespace, a mount and UTS namespace of its own, its
    hostname, every other host's folder covered; returns its pid once that is done."""
    others = [str(hosts.host_dir(other)) for other in HOSTS if other != host]
    script = (
        f'hostname "$1" && shift && for d in "$@"; do '
        f'mount -t tmpfs -o ro,size=16k,mode=0555 {hosts.layout.prefix}-hidden "$d" || exit 1; '
        f"done && exec sleep infinity"
    )
    command = [*hosts.layout.exec_prefix(host), "unshare", "--mount", "--uts"]
    command += ["--propagation", "private", "sh", "-c", script, "sh", host, *others]
    log = hosts.log(host, "init")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"host {host} did not start: {log.read_text(errors='replace')}")
        if Path(f"/proc/{process.pid}/comm").read_text().strip() == "sleep":
            return process.pid
        time.sleep(0.05)
    raise StackError(f"host {host} did not start in 30 s: {log}")


def on_host(hosts: Hosts, state: dict[str, Any], host: str) -> list[str]:
    """The command prefix that runs a program inside `host` (all its namespaces)."""
    return ["nsenter", "-t", str(state["init"][host]), "-n", "-m", "-u", "--"]


def run_agent(hosts: Hosts, state: dict[str, Any], host: str, only: str = "") -> dict[str, int]:
    """Start `host`'s services (or only the one named `only`) from inside the host and
    return their pids by name."""
    if host in INSTANCE_HOSTS and not (hosts.dagster_home(host) / "dagster.yaml").exists():
        _write_instance(hosts, host)
    pids_file = hosts.host_dir(host) / "pids.json"
    pids_file.unlink(missing_ok=True)
    command = [*on_host(hosts, state, host), sys.executable, "-m", "farm_platform_dev.host_agent"]
    command += [host, str(hosts.state_dir), *([only] if only else [])]
    log = hosts.log(host, "agent")
    environment = {**os.environ, **hosts.environment(host), "PYTHONPATH": _code_path()}
    with open(log, "ab") as out:
        result = subprocess.run(
            command,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if result.returncode != 0 or not pids_file.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise StackError(f"host {host}: its services did not start; {log}:\n{tail}")
    return json.loads(pids_file.read_text())


def _code_path() -> str:
    """The platform's code as this process imports it, for the hosts' processes."""
    return str(config.REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")


def _write_instance(hosts: Hosts, host: str) -> None:
    """deploy/vm/dagster.yaml, filled in for the hosts, as the DAGSTER_HOME of `host`: every
    host that opens the instance (the control host and each worker) holds its own copy."""
    from farm_platform.admin.instance import write_instance
    from farm_platform_dev.vm_artifacts import instance_config

    runs, bucket = hosts.max_concurrent_runs, hosts.stack.bucket_url()

    def text(pg_host: str, pg_port: int) -> str:
        return instance_config(
            pg_port, runs, runs, hosts.quick_polling, pg_host=pg_host, bucket=bucket
        )

    # The storage made through PostgreSQL itself: the pooler starts with the host's services.
    with config.process_environment(hosts.environment(host)):
        write_instance(hosts.dagster_home(host), text(*hosts.service("postgres")))
    (hosts.dagster_home(host) / "dagster.yaml").write_text(text(*hosts.postgres_for(host)))


def hosts_down(state_dir: Path) -> bool:
    """End every process on the hosts and remove namespaces, links and bridge; False if
    none were recorded here."""
    state = read_state(state_dir)
    if state is None:
        return False
    _recorded_hosts(state_dir, state).layout.down()
    if "proxy" in state:
        from farm_platform_dev.processes import stop_pids

        stop_pids([int(state["proxy"])], "farm_platform_dev.delay_proxy")
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return True
