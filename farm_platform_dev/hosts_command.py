"""`farm-platform hosts up|down|env|status`: the production topology across network
namespaces (farm_platform_dev.hosts). Root only; the credentials come from the environment,
as for `stack up --production`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from farm_platform import config

DEFAULT_STATE_DIR = Path(".farm") / "hosts"
DELAYED_HELP = (
    "up: reach every shared service through a delay proxy on this machine (the latency "
    "between hosts, without tc netem); `hosts delay --ms N` sets it"
)


def _hosts(args: argparse.Namespace) -> int:
    from farm_platform_dev import hosts
    from farm_platform_dev.emulators import StackError

    state_dir = Path(args.state_dir or DEFAULT_STATE_DIR).resolve()
    if args.action == "up":
        try:
            started = hosts.hosts_up(
                state_dir, max_concurrent_runs=args.max_concurrent_runs, delayed=args.delayed
            )
        except StackError as exc:
            print(f"farm-platform hosts up: {exc}")
            return 1
        for host in hosts.HOSTS:
            print(f"# {host:9} {started.address(host):12} {started.host_dir(host)}")
        print(f"# Dagster UI (control): {started.webserver_url}")
        print(f'# eval "$(farm-platform hosts env --state-dir {state_dir})" to point here')
        return 0
    if args.action == "down":
        stopped = hosts.hosts_down(state_dir)
        print("hosts stopped" if stopped else f"no hosts were running from {state_dir}")
        return 0
    loaded = hosts.load_hosts(state_dir)
    if loaded is None:
        print(f"no hosts are running from {state_dir}: `farm-platform hosts up` first")
        return 1
    if args.action == "delay":
        if not loaded.delayed or args.ms is None or args.ms < 0:
            print("hosts delay --ms N (N >= 0) needs hosts started with `hosts up --delayed`")
            return 1
        hosts.set_delay(loaded, args.ms)
        print(f"every shared service is now {args.ms:g} ms away each way")
        return 0
    if args.action == "env":
        for name, value in operator_environment(loaded).items():
            print(f"export {name}={value}")
        return 0
    lines, all_run = hosts_status(state_dir)
    print("\n".join(lines))
    return 0 if all_run else 1


def operator_environment(hosts: Any) -> dict[str, str]:
    """What a shell on this machine needs to use the hosts (simulate, query, open the UI):
    the shared services by address, the passwords left as references for the shell."""
    from farm_platform_dev.model_server import oip_environment
    from farm_platform_dev.production import PG_PASSWORD

    return {
        **hosts.stack.environment(),
        **oip_environment(hosts.oip_url()),
        config.FARM_WAREHOUSE: hosts.warehouse_url("${" + PG_PASSWORD + "}"),
        config.DAGSTER_HOME: str(hosts.dagster_home("control")),
        config.DAGSTER_WEBSERVER_URL: hosts.webserver_url,
        config.FARM_FIELD_MAP: str(hosts.field_map("control")),
    }


def add_hosts_command(commands: Any) -> None:
    parser = commands.add_parser(
        "hosts",
        help="the production topology across network namespaces on this machine (root): "
        "cloud, db, control, worker-1, worker-2, model-1, model-2",
    )
    parser.add_argument(
        "action",
        choices=["up", "down", "env", "status", "delay"],
        help="up: build the hosts and start every service on its own; down: stop them and "
        "remove every namespace and link; env: the variables a shell here needs; status: one "
        "line per service (exit 1 unless all run); delay: set the delay of `up --delayed`",
    )
    parser.add_argument("--delayed", action="store_true", help=DELAYED_HELP)
    parser.add_argument("--ms", type=float, help="delay: milliseconds each way")
    parser.add_argument(
        "--state-dir",
        help=f"where the hosts' folders, logs and state live (default: ./{DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=4,
        help="the run queue's limit; each worker host runs as many (default: %(default)s)",
    )
    parser.set_defaults(handler=_hosts)


def hosts_status(state_dir: Path) -> tuple[list[str], bool]:
    """One line per host and service (`running (pid N)` or `DEAD`), and whether all run."""
    from farm_platform_dev.hosts import HOSTS, read_state
    from farm_platform_dev.processes import pid_alive

    state = read_state(state_dir) or {"init": {}, "pids": {}}
    lines, all_run = [], bool(state["init"])
    for host in HOSTS:
        services = {"init": state["init"].get(host, 0), **state["pids"].get(host, {})}
        for name, pid in services.items():
            alive = pid_alive(int(pid))
            all_run &= alive
            lines.append(f"{host:9} {name:38} {f'running (pid {pid})' if alive else 'DEAD'}")
    return lines, all_run
