"""The production topology on one machine: `farm-platform stack up --production`.

Beside the emulator stack, each process production runs, on its own:

- PostgreSQL: Dagster's instance storage (dagster-postgres: runs, event logs, schedules,
  sensor ticks; database `dagster`) and the warehouse (database `farm`), every client
  reaching both through PgBouncer in session mode (farm_platform_dev.pooler), which keeps
  a few server connections open where Dagster's storage opens one per operation;
- one gRPC code server per code location (`dagster code-server start`), and a workspace
  file that points at them (`grpc_server`): a code change restarts a code server, not
  the daemon or the webserver;
- `dagster-daemon` (exactly one: Dagster does not support two) and two `dagster-webserver`s,
  guarded against forged mutations (farm_platform/webserver_guard.py): the operators' one
  and the viewers' read-only one (farm_platform_dev/webservers.py);
- Redis and two Celery workers: Dagster's `CeleryRunLauncher` (dagster-celery) runs each
  whole run as a Celery task on a worker, routed by its `dagster-celery/queue` tag (image
  runs to the `images` worker, the report's to the `analytics` one); workers could sit on
  other machines;
- model-server replicas (`models serve`), which every run shares (FARM_OIP_URL lists them).

Everything binds 127.0.0.1. The credentials come from the environment of `stack up`:
`FARM_PG_PASSWORD` (PostgreSQL's password for `farm`), `FARM_REDIS_PASSWORD` (the Celery
broker's) and `FARM_OIP_TOKEN` (the model servers' bearer token). The files here (state,
dagster.yaml, workspace) only name those variables; `stack env` prints the warehouse URL
with `${FARM_PG_PASSWORD}` unexpanded. `stack up` on a half-dead topology restarts what
died, and a code server that runs but does not answer over gRPC, in dependency order; the
watchdog it starts (`stack watch`, farm_platform_dev.liveness) does the same for the code
servers on its own. `stack down` stops it all. State lives in `<stack dir>/production.json`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm_platform import config
from farm_platform_dev.emulators import StackError
from farm_platform_dev.liveness import hold_topology_lock, topology_lock
from farm_platform_dev.model_server import grpc_url, oip_environment, start_model_server
from farm_platform_dev.pooler import SERVER_MAX_CONNECTIONS, topology_pooler
from farm_platform_dev.postgres import SUPERUSER, PostgresServer
from farm_platform_dev.processes import free_port, stop_processes
from farm_platform_dev.topology_processes import (
    CODE_LOCATIONS,
    PRODUCTION_FILE,
    WORKER_QUEUES,
    dead_processes,
    process_marker,
    read_production,
    replace_silent_code_servers,
    start_code_server,
    start_detached,
    start_watchdog,
    tool,
    wait_for_port,
    write_production,
)
from farm_platform_dev.vm_artifacts import instance_config, worker_arguments, workspace_config
from farm_platform_dev.webservers import WEBSERVERS, own_origins, port_key, webserver_command

PG_PASSWORD = "FARM_PG_PASSWORD"
REDIS_PASSWORD = "FARM_REDIS_PASSWORD"
OIP_TOKEN = "FARM_OIP_TOKEN"
CREDENTIALS = (PG_PASSWORD, REDIS_PASSWORD, OIP_TOKEN)
DAGSTER_DATABASE = "dagster"
WAREHOUSE_DATABASE = "farm"


@dataclass(frozen=True)
class Production:
    """A running production topology: where each part answers."""

    state_dir: Path
    pg_port: int
    code_server_ports: dict[str, int]
    webserver_port: int
    replica_grpc_ports: list[int]
    viewer_webserver_port: int = 0
    # PgBouncer's port (0: clients reach PostgreSQL itself).
    pooler_port: int = 0

    @property
    def client_pg_port(self) -> int:
        """Where the platform's processes reach PostgreSQL: the pooler, if there is one."""
        return self.pooler_port or self.pg_port

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster"

    @property
    def workspace(self) -> Path:
        return self.state_dir / "workspace.yaml"

    @property
    def webserver_url(self) -> str:
        return f"http://127.0.0.1:{self.webserver_port}"

    @property
    def viewer_url(self) -> str:
        """The read-only webserver's address, for people who only look."""
        return f"http://127.0.0.1:{self.viewer_webserver_port}"

    def warehouse_url(self, password: str) -> str:
        """The warehouse's URL with `password` in it (pass "${FARM_PG_PASSWORD}" for a shell)."""
        port = self.client_pg_port
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{port}/{WAREHOUSE_DATABASE}"

    def environment(self, password: str) -> dict[str, str]:
        """What the platform's processes need, beyond the emulator stack's variables."""
        urls = ",".join(grpc_url(port) for port in self.replica_grpc_ports)
        return {
            config.DAGSTER_HOME: str(self.dagster_home),
            config.FARM_WAREHOUSE: self.warehouse_url(password),
            config.DAGSTER_WEBSERVER_URL: self.webserver_url,
            **oip_environment(urls),
        }


def credentials() -> tuple[str, str]:
    """The PostgreSQL password and the Celery broker's URL, URL-quoted, from the environment
    (StackError naming what is unset; FARM_OIP_TOKEN too, which the processes inherit)."""
    from urllib.parse import quote

    missing = [name for name in CREDENTIALS if not os.environ.get(name)]
    if missing:
        raise StackError(
            f"the production topology takes its credentials from the environment: export "
            f"{' and '.join(missing)} first (e.g. `export {missing[0]}=$(openssl rand -hex 16)`)"
        )
    return quote(os.environ[PG_PASSWORD], safe=""), quote(os.environ[REDIS_PASSWORD], safe="")


def throwaway_credentials() -> dict[str, str]:
    """The credentials of a topology that lives only as long as a benchmark: those exported,
    random ones for the rest, put in os.environ (the processes inherit them)."""
    for name in CREDENTIALS:
        if not os.environ.get(name):
            os.environ[name] = os.urandom(12).hex()
    return {name: os.environ[name] for name in CREDENTIALS}


def production_up(
    state_dir: Path,
    stack_environment: dict[str, str],
    replicas: int,
    max_concurrent_runs: int,
    quick_polling: bool = False,
    runs_per_day: int | None = None,
    replica_batch_ms: float = 0.0,
    pooler: bool = True,
) -> Production:
    """Start the topology (or restart what died of a recorded one) and return it.
    `stack_environment`: the emulator stack's variables, and any setting its processes
    should run with. `runs_per_day`: runs of one day partition at once (default: as many
    as the run queue allows); the `images` worker runs `max_concurrent_runs` at once.
    `pooler`: False for none (benchmarks/photo_cost.py measures without it)."""
    password, redis_password = credentials()
    state = read_production(state_dir) or {
        "pg_port": free_port(),
        "pooler_port": free_port() if pooler else 0,
        "redis_port": free_port(),
        "code_server_ports": {name: free_port() for name in CODE_LOCATIONS},
        "webserver_port": free_port(),
        "replica_ports": [[free_port(), free_port()] for _ in range(replicas)],
        "max_concurrent_runs": max_concurrent_runs,
        "runs_per_day": runs_per_day or max_concurrent_runs,
        # benchmarks/scale_out.py: replicas that time batches like a remote accelerator.
        "replica_batch_ms": replica_batch_ms,
        "pids": {},
    }
    state.setdefault(port_key("viewer_webserver"), free_port())  # recorded before it existed
    production = _production(state, state_dir)
    environment = {
        **stack_environment,
        **production.environment(password),
        config.FARM_FIELD_MAP: str(state_dir / "positions.csv"),
        # Materializations stored in batches, not an INSERT each.
        "DAGSTER_EVENT_BATCH_SIZE": "1000",
        config.FARM_CELERY_BROKER: f"redis://:{redis_password}@127.0.0.1:{state['redis_port']}/0",
    }
    lock = hold_topology_lock(state_dir)
    try:
        dead = set(dead_processes(state, state_dir))
        dead |= replace_silent_code_servers(state, state_dir, dead)
        _restart_dead(production, state, dead, environment, quick_polling)
    finally:
        write_production(state_dir, state)
        lock.close()
    return production


def _restart_dead(
    production: Production,
    state: dict[str, Any],
    dead: set[str],
    environment: dict[str, str],
    quick_polling: bool,
) -> None:
    """Start each of the topology's processes named in `dead`, in dependency order, and
    record its pid in `state`."""
    state_dir, pids = production.state_dir, state["pids"]
    if "postgres" in dead:
        pids["postgres"] = _start_postgres(state, state_dir)
    if "pgbouncer" in dead:
        pids["pgbouncer"] = topology_pooler(state, state_dir).start(os.environ[PG_PASSWORD])
    if "redis" in dead:
        pids["redis"] = start_redis(int(state["redis_port"]), state_dir)
    if not production.dagster_home.exists():
        runs_per_day = int(state.get("runs_per_day", 1))
        max_runs = int(state["max_concurrent_runs"])
        bucket = _compute_log_bucket(state_dir, environment)
        # Opening it reaches the bucket (compute logs) as its processes will.
        with config.process_environment(environment):
            _prepare_instance(production, max_runs, quick_polling, runs_per_day, bucket)
    for name, module in CODE_LOCATIONS.items():
        if f"code_server:{name}" in dead:
            port = production.code_server_ports[name]
            pids[f"code_server:{name}"] = start_code_server(
                name, module, port, state_dir, environment
            )
    if dead & {"daemon", *WEBSERVERS}:
        _write_workspace(production)
    if "daemon" in dead:
        daemon = [tool("dagster-daemon"), "run", "-w", str(production.workspace)]
        pids["daemon"] = start_detached(daemon, "daemon", state_dir, environment)
    for name in WEBSERVERS:
        if name in dead:
            pids[name] = _start_webserver(production, name, state, environment)
    for queue in WORKER_QUEUES:
        if f"worker:{queue}" in dead:
            runs = int(state["max_concurrent_runs"])
            pids[f"worker:{queue}"] = _start_worker(queue, runs, state_dir, environment)
    for index, (port, grpc_port) in enumerate(state["replica_ports"]):
        if f"model_server:{index}" in dead:
            pids[f"model_server:{index}"] = start_model_server(
                config.absolute_models_dir(),
                port,
                grpc_port,
                state_dir / f"model-server-{index}.log",
                watch_seconds=config.DEFAULT_REGISTRY_WATCH_SECONDS,
                detached=True,
                emulate_batch_ms=float(state.get("replica_batch_ms", 0.0)),
            ).pid
    if "watchdog" in dead:
        pids["watchdog"] = start_watchdog(state_dir, environment)


def load_production(state_dir: Path) -> Production | None:
    state = read_production(state_dir)
    return _production(state, state_dir) if state else None


def production_down(state_dir: Path) -> bool:
    """Stop every process of the topology (PostgreSQL last); False if none was recorded.

    Holds the topology's lock throughout, and reads the recorded pids only once it has it: a
    code server the watchdog is replacing meanwhile is then recorded before it is stopped,
    instead of outliving the topology."""
    if read_production(state_dir) is None:
        return False
    with topology_lock(state_dir):
        return _stop_recorded(state_dir)


def _stop_recorded(state_dir: Path) -> bool:
    state = read_production(state_dir)
    if state is None:
        return False

    def stop(keys: list[str]) -> None:
        stop_processes([(int(state["pids"][k]), process_marker(state, k, state_dir)) for k in keys])

    # The watchdog first: it would start again a code server stopped before it. Then the
    # rest at once.
    stop([key for key in state["pids"] if key == "watchdog"])
    stop([key for key in state["pids"] if key not in ("watchdog", "postgres")])
    if "postgres" in state["pids"]:
        PostgresServer(base=state_dir / "postgres", port=int(state["pg_port"])).stop()
    (state_dir / PRODUCTION_FILE).unlink(missing_ok=True)
    return True


def _production(state: dict[str, Any], state_dir: Path) -> Production:
    return Production(
        state_dir=state_dir,
        pg_port=int(state["pg_port"]),
        code_server_ports={name: int(port) for name, port in state["code_server_ports"].items()},
        webserver_port=int(state["webserver_port"]),
        replica_grpc_ports=[int(grpc_port) for _, grpc_port in state["replica_ports"]],
        viewer_webserver_port=int(state.get(port_key("viewer_webserver"), 0)),
        pooler_port=int(state.get("pooler_port", 0)),
    )


def _start_postgres(state: dict[str, Any], state_dir: Path) -> int:

    server = PostgresServer(
        f"-c max_connections={SERVER_MAX_CONNECTIONS}",
        base=state_dir / "postgres",
        password=os.environ[PG_PASSWORD],
        databases=(WAREHOUSE_DATABASE, DAGSTER_DATABASE),
        port=int(state["pg_port"]),
        durable=True,
    ).start()
    pid = server.postmaster_pid()
    assert pid is not None
    return pid


def _compute_log_bucket(state_dir: Path, environment: dict[str, str]) -> str:
    """Where the compute logs go: FARM_BUCKET, or the emulator stack's bucket where the
    photos live in a folder instead (a benchmark's file:// bucket)."""
    from farm_platform_dev.stack import load_stack

    bucket = environment[config.FARM_BUCKET]
    return bucket if bucket.startswith("gs://") else load_stack(state_dir).bucket_url()


def _prepare_instance(
    production: Production,
    max_concurrent_runs: int,
    quick_polling: bool,
    runs_per_day: int,
    bucket: str,
) -> None:
    """The instance is deploy/vm/dagster.yaml, filled in for this machine."""
    from farm_platform.admin.instance import write_instance

    text = instance_config(
        production.client_pg_port, max_concurrent_runs, runs_per_day, quick_polling, bucket=bucket
    )
    write_instance(production.dagster_home, text)


def _write_workspace(production: Production) -> None:
    production.workspace.write_text(workspace_config(production.code_server_ports))


def _start_webserver(
    production: Production, name: str, state: dict[str, Any], environment: dict[str, str]
) -> int:
    port = int(state[port_key(name)])
    args = webserver_command(port, ["-w", str(production.workspace)], read_only=WEBSERVERS[name])
    guarded = {**environment, **own_origins(port, environment)}
    pid = start_detached(args, name, production.state_dir, guarded)
    wait_for_port(port, pid, f"the {name}", production.state_dir / f"{name}.log")
    return pid


def start_redis(port: int, state_dir: Path, host: str = "127.0.0.1") -> int:
    """Redis as the Celery broker and result backend on `host` only, every write appended
    to `<state dir>/appendonlydir` and synced before it is answered, so that a Redis
    restarted in place (even after kill -9) still holds the queued runs' tasks and the
    running ones' states. Without them a restart would strand the queued runs until run
    monitoring's start timeout, and make every running run's task state unknown, which run
    monitoring takes for a dead worker: it would fail runs that are still grading. Its
    configuration, password included, goes in on stdin, not in a file."""
    import shutil
    import subprocess

    executable = shutil.which("redis-server")
    if executable is None:
        raise StackError("redis-server is not installed: `apt-get install redis-server`")
    log = state_dir / "redis.log"
    settings = (
        f"bind {host}\nport {port}\nrequirepass {os.environ[REDIS_PASSWORD]}\n"
        f'save ""\nappendonly yes\nappendfsync always\ndir {state_dir}\nlogfile {log}\n'
    )
    process = subprocess.Popen(
        [executable, "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert process.stdin is not None
    process.stdin.write(settings.encode())
    process.stdin.close()
    wait_for_port(port, process.pid, "redis-server", log, host)
    return process.pid


def _start_worker(queue: str, runs: int, state_dir: Path, environment: dict[str, str]) -> int:
    """The Celery worker of `queue` as deploy/vm/workers.yaml says; the `images` worker runs
    up to `runs` runs at once."""
    args = [tool("celery"), *worker_arguments(queue, images_concurrency=runs)]
    return start_detached(args, f"worker-{queue}", state_dir, environment)
