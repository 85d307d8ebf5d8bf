"""Where a PostgreSQL pooler belongs when a link's latency lies between the clients and the
server: what one Dagster storage operation (a new connection, one statement, close) costs
with no pooler, with PgBouncer beside PostgreSQL, and with PgBouncer beside the client.

    python benchmarks/pooler_placement.py [--delays 0 1 5 20] [--operations 40] [--write-docs]

A real PostgreSQL (SCRAM passwords) and real PgBouncers (farm_platform_dev.pooler,
deploy/vm/pgbouncer.ini) on this machine; the link is farm_platform_dev.delay_proxy, which
delays every byte one way by the given milliseconds (a round trip costs twice that):

- no pooler: client → link → PostgreSQL;
- beside PostgreSQL: client → link → PgBouncer → PostgreSQL (a single pooler on the `db`
  host): no server process is forked per connection, but the client's handshake with the
  pooler still crosses the link;
- beside the client: client → PgBouncer → link → PostgreSQL (one per client host, what
  `hosts up` and `stack up --production` run): the handshake stays on the client's host,
  and only the statement crosses the link.

Reported: the median milliseconds of one operation, and PostgreSQL's own sessions opened
per operation (`pg_stat_database.sessions`). A second table gives the CPU a client
connection costs the client and the pooler with each way a client can log in to the pooler
(no delay): md5 (deploy/vm/pgbouncer.ini) or SCRAM (PBKDF2 in both, on every connection).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from docs_table import add_write_docs_flag, write_docs
from hosts_latency import connect_ms
from photo_cost_meter import postgres_sessions

from farm_platform_dev.pooler import Pooler, stop_pooler
from farm_platform_dev.postgres import PostgresServer
from farm_platform_dev.processes import free_port, stop_pids
from farm_platform_dev.topology_processes import wait_for_port

HOST = "127.0.0.1"
PASSWORD = os.urandom(12).hex()
PLACEMENTS = ("no pooler", "PgBouncer beside PostgreSQL", "PgBouncer beside the client")


def cpu_ms_per_connection(url: str, pooler_pid: int | None, connections: int) -> tuple[str, str]:
    """This process's and the pooler's CPU milliseconds per new connection and `SELECT 1`."""
    import psutil

    def pooler_cpu() -> float:
        return sum(psutil.Process(pooler_pid).cpu_times()[:2]) if pooler_pid else 0.0

    connect_ms(url, 5)  # warm
    pooler_before, client_before = pooler_cpu(), time.process_time()
    connect_ms(url, connections)
    client = (time.process_time() - client_before) * 1000 / connections
    pooler = (pooler_cpu() - pooler_before) * 1000 / connections
    return f"{client:.2f}", f"{pooler:.2f}" if pooler_pid else "—"


def measure_logins(server: PostgresServer, folder: Path, connections: int) -> list[tuple[str, ...]]:
    """CPU per connection: straight to PostgreSQL (SCRAM), to a pooler by md5 (shipped) and
    to the same pooler by SCRAM (its configuration changed and reloaded)."""
    import signal

    pooler = Pooler(folder / "logins", HOST, free_port(), HOST, server.port, folder / "l.log")
    pid = pooler.start(PASSWORD)
    secret = quote(PASSWORD, safe="")
    rows = [("PostgreSQL itself, SCRAM", *cpu_ms_per_connection(server.url, None, connections))]
    try:
        rows.append(
            ("PgBouncer, md5", *cpu_ms_per_connection(pooler.url(secret, "farm"), pid, connections))
        )
        text = pooler.config_file.read_text().replace(
            "auth_type = md5", "auth_type = scram-sha-256"
        )
        pooler.config_file.write_text(text)
        os.kill(pid, signal.SIGHUP)  # PgBouncer reloads its configuration
        time.sleep(1)
        rows.append(
            (
                "PgBouncer, SCRAM",
                *cpu_ms_per_connection(pooler.url(secret, "farm"), pid, connections),
            )
        )
    finally:
        stop_pooler(pid, pooler.marker)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", type=float, nargs="+", default=[0, 1, 5, 20])
    parser.add_argument("--operations", type=int, default=40, help="operations per figure")
    add_write_docs_flag(parser)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="farm-pooler-placement-"))
    folder.chmod(0o755)  # PgBouncer runs as PostgreSQL's unprivileged account
    delay_file = folder / "delay_ms"
    rows = []
    with PostgresServer(password=PASSWORD, databases=("farm",)) as server:
        logins = measure_logins(server, folder, 10 * args.operations)
        for row in logins:
            print(" | ".join(row), flush=True)
        link_to_pg, link_to_pooler = free_port(), free_port()
        near_db = Pooler(folder / "db", HOST, free_port(), HOST, server.port, folder / "db.log")
        # Beside the client: its server connections go through the link.
        near_client = Pooler(
            folder / "client", HOST, free_port(), HOST, link_to_pg, folder / "c.log"
        )
        routes = [f"{HOST}:{link_to_pg}={HOST}:{server.port}"]
        routes.append(f"{HOST}:{link_to_pooler}={HOST}:{near_db.listen_port}")
        delay_file.write_text("0\n")
        proxy = subprocess.Popen(
            [sys.executable, "-m", "farm_platform_dev.delay_proxy", str(delay_file), *routes]
        )
        pids = [near_db.start(PASSWORD), near_client.start(PASSWORD)]
        try:
            for port in (link_to_pg, link_to_pooler):
                wait_for_port(port, proxy.pid, "the delay proxy", folder / "proxy.log")
            secret = quote(PASSWORD, safe="")
            urls = {
                PLACEMENTS[0]: f"postgresql://farm:{secret}@{HOST}:{link_to_pg}/farm",
                PLACEMENTS[1]: f"postgresql://farm:{secret}@{HOST}:{link_to_pooler}/farm",
                PLACEMENTS[2]: near_client.url(secret, "farm"),
            }
            for delay in args.delays:
                delay_file.write_text(f"{delay}\n")
                time.sleep(1.5)  # the proxy reads its delay every second
                for placement, url in urls.items():
                    connect_ms(url, 2)  # the pooler's server connection, opened once
                    before = postgres_sessions(server.url)
                    spent = connect_ms(url, args.operations)
                    opened = (postgres_sessions(server.url) - before - 1) / args.operations
                    rows.append((f"{delay:g} ms", placement, f"{spent:.1f}", f"{opened:.2f}"))
                    print(" | ".join(rows[-1]), flush=True)
        finally:
            for pid, pooler in zip(pids, (near_db, near_client), strict=True):
                stop_pooler(pid, pooler.marker)
            stop_pids([proxy.pid], "farm_platform_dev.delay_proxy")
            proxy.wait()
            shutil.rmtree(folder, ignore_errors=True)
    if args.write_docs:
        write_docs(
            "pooler_placement",
            ["delay, one way", "where PgBouncer sits", "ms per operation (median)"]
            + ["PostgreSQL sessions opened per operation"],
            rows,
            note="An operation: a new connection, `SELECT 1`, close (what Dagster's "
            f"storage does for each of its operations); {args.operations} per figure.",
        )
        write_docs(
            "pooler_placement-logins",
            ["a client logs in to", "client CPU ms per connection", "pooler CPU ms per connection"],
            logins,
            note=f"{10 * args.operations} connections, each with `SELECT 1`, no delay.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
