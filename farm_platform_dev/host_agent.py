"""Starts one host's services from inside that host (farm_platform_dev.hosts runs it with
`nsenter` into the host's namespaces): `python -m farm_platform_dev.host_agent HOST STATE_DIR
[SERVICE]`. Every service listens on the host's own address; its environment (the shared
services' addresses, the host's private folders) is this process's, set by the harness.
Writes the started services' pids to `<state dir>/hosts/HOST/pids.json`, then exits; the
services live on, detached."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from farm_platform import config
from farm_platform_dev.hosts import PORTS, Hosts, load_hosts
from farm_platform_dev.topology_processes import CODE_LOCATIONS, start_detached, tool


def start_cloud(hosts: Hosts, address: str, only: str) -> dict[str, int]:
    from farm_platform_dev.emulators import (
        create_bucket,
        create_pubsub_topology,
        start_gcs_emulator,
        start_pubsub_emulator,
    )

    stack, data, pids = hosts.stack, hosts.host_dir("cloud") / "data", {}
    if only in ("", "pubsub"):
        pubsub, _ = start_pubsub_emulator(
            stack.project,
            PORTS["pubsub"],
            data / "pubsub",
            hosts.log("cloud", "pubsub"),
            detached=True,
            host=address,
        )
        pids["pubsub"] = pubsub.pid
        create_pubsub_topology(stack.project, stack.pubsub_host)
    if only in ("", "gcs"):
        gcs, _ = start_gcs_emulator(
            stack.project,
            stack.pubsub_host,
            PORTS["gcs"],
            data / "gcs",
            hosts.log("cloud", "gcs"),
            bucket=stack.bucket,
            detached=True,
            host=address,
        )
        pids["gcs"] = gcs.pid
        create_bucket(stack.project, stack.storage_host, stack.bucket)
    return pids


def start_db(hosts: Hosts, address: str, only: str) -> dict[str, int]:
    from farm_platform_dev.pooler import SERVER_MAX_CONNECTIONS
    from farm_platform_dev.postgres import PostgresServer
    from farm_platform_dev.production import (
        DAGSTER_DATABASE,
        PG_PASSWORD,
        WAREHOUSE_DATABASE,
        start_redis,
    )

    data, pids = hosts.host_dir("db") / "data", {}
    if only in ("", "postgres"):
        server = PostgresServer(
            f"-c max_connections={SERVER_MAX_CONNECTIONS}",
            base=data / "postgres",
            password=os.environ[PG_PASSWORD],
            databases=(WAREHOUSE_DATABASE, DAGSTER_DATABASE),
            port=PORTS["postgres"],
            durable=True,
            listen=address,
            clients=hosts.layout.subnet,
        ).start()
        pids["postgres"] = server.postmaster_pid() or 0
    if only in ("", "redis"):
        pids["redis"] = start_redis(PORTS["redis"], data, host=address)
    return pids


def start_pooler(hosts: Hosts, host: str, address: str, only: str) -> dict[str, int]:
    """The host's PgBouncer on its own address, holding its connections to PostgreSQL (on
    `db`, or through the delay proxy) open for the host's processes."""
    from farm_platform_dev.pooler import POOLER_PORT, Pooler
    from farm_platform_dev.production import PG_PASSWORD
    from farm_platform_dev.topology_processes import POOLER_FOLDER

    if not hosts.pooled or only not in ("", "pgbouncer"):
        return {}
    folder, log = hosts.host_dir(host) / POOLER_FOLDER, hosts.log(host, "pgbouncer")
    pooler = Pooler(folder, address, POOLER_PORT, *hosts.service("postgres"), log)
    return {"pgbouncer": pooler.start(os.environ[PG_PASSWORD])}


def start_control(hosts: Hosts, address: str, only: str) -> dict[str, int]:
    from farm_platform_dev.topology_processes import start_code_server, wait_for_port
    from farm_platform_dev.vm_artifacts import workspace_config
    from farm_platform_dev.webservers import own_origins, webserver_command

    logs, pids = hosts.host_dir("control") / "logs", start_pooler(hosts, "control", address, only)
    ports = {name: PORTS[f"code_server:{name}"] for name in CODE_LOCATIONS}
    for name, module in CODE_LOCATIONS.items():
        if only in ("", f"code_server:{name}"):
            pids[f"code_server:{name}"] = start_code_server(
                name, module, ports[name], logs, {}, host=address
            )
    workspace = hosts.dagster_home("control") / "workspace.yaml"
    workspace.write_text(workspace_config(ports, host=address))
    if only in ("", "daemon"):
        daemon = [tool("dagster-daemon"), "run", "-w", str(workspace)]
        pids["daemon"] = start_detached(daemon, "daemon", logs, {})
    if only in ("", "webserver"):
        port = PORTS["webserver"]
        args = webserver_command(port, ["-w", str(workspace)], host=address)
        origins = own_origins(port, dict(os.environ))
        origins[config.FARM_WEBSERVER_ALLOWED_ORIGINS] += f",http://{address}:{port}"
        pids["webserver"] = start_detached(args, "webserver", logs, origins)
        wait_for_port(port, pids["webserver"], "the webserver", logs / "webserver.log", address)
    return pids


def start_worker(hosts: Hosts, host: str, address: str, only: str) -> dict[str, int]:
    from farm_platform.images.run_tags import ANALYTICS_QUEUE, IMAGES_QUEUE
    from farm_platform_dev.vm_artifacts import worker_arguments

    logs, pids = hosts.host_dir(host) / "logs", start_pooler(hosts, host, address, only)
    # The report's worker on the first worker host only: one at a time, as shipped.
    queues = [IMAGES_QUEUE, *([ANALYTICS_QUEUE] if host == "worker-1" else [])]
    for queue in queues:
        if only in ("", f"worker:{queue}"):
            args = [tool("celery"), *worker_arguments(queue, hosts.max_concurrent_runs)]
            pids[f"worker:{queue}"] = start_detached(args, f"worker-{queue}", logs, {})
    return pids


def start_model(hosts: Hosts, host: str, address: str) -> dict[str, int]:
    from farm_platform_dev.model_server import start_model_server

    server = start_model_server(
        config.absolute_models_dir(),
        PORTS["model_http"],
        PORTS["model_grpc"],
        hosts.log(host, "model-server"),
        watch_seconds=config.DEFAULT_REGISTRY_WATCH_SECONDS,
        detached=True,
        host=address,
    )
    return {"model_server": server.pid}


def main(argv: list[str]) -> int:
    host, state_dir, only = argv[0], Path(argv[1]), (argv[2] if len(argv) > 2 else "")
    hosts = load_hosts(state_dir)
    if hosts is None:
        raise SystemExit(f"no hosts recorded in {state_dir}")
    address = hosts.address(host)
    if host == "cloud":
        pids = start_cloud(hosts, address, only)
    elif host == "db":
        pids = start_db(hosts, address, only)
    elif host == "control":
        pids = start_control(hosts, address, only)
    elif host.startswith("worker-"):
        pids = start_worker(hosts, host, address, only)
    else:
        pids = start_model(hosts, host, address)
    (hosts.host_dir(host) / "pids.json").write_text(json.dumps(pids))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
