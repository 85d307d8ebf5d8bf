"""Throughput and CPU per photo of the production topology across hosts
(`farm-platform hosts`) with latency between the hosts and the services they share.

    python benchmarks/hosts_latency.py [--photos 12] [--delays 0 1 5 20] [--pooler both]
        [--write-docs]

One set of hosts (root only) whose clients reach every shared service (Pub/Sub, the bucket,
PostgreSQL, Redis, a model server) through farm_platform_dev.delay_proxy on this machine's
bridge address: `tc netem` needs the kernel's sch_netem, which the machines this ran on lack,
so the delay is the proxy's, one way, on every byte each way (a round trip costs twice the
delay). For each delay a day of `--photos` photos is sent and timed from the first upload to
the last photo graded; the hosts' CPU is every process in their namespaces (the proxy's own
CPU, an artefact of emulating the link, is left out). A first day, not counted, warms the
hosts up. The PostgreSQL column is one new connection plus `SELECT 1`, as a connection per
statement pays it; and the sessions PostgreSQL saw opened during the day, per photo
(`pg_stat_database.sessions`: Dagster's PostgreSQL storage opens a connection per operation).

`--pooler both` (the default) measures every delay twice: on hosts whose processes reach
PostgreSQL itself, and on hosts with a PgBouncer beside them (`hosts up`'s default, one on
`control` and each worker, farm_platform_dev.pooler), which holds its server connections
open across the link. With the pooler, "connect + SELECT 1" is what a client on `control`
pays: a connection to its own pooler, and one round trip across the link.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from docs_table import add_write_docs_flag, write_docs
from photo_cost_meter import postgres_sessions

from farm_platform import config
from farm_platform_dev.daemon import processed_photos, wait_for_photos
from farm_platform_dev.hosts import HOSTS, Hosts, hosts_down, hosts_up, set_delay
from farm_platform_dev.hosts_ops import publish_field_map
from farm_platform_dev.netns import processes_in
from farm_platform_dev.production import PG_PASSWORD, throwaway_credentials
from farm_platform_dev.simulate import DroneMessagePublisher, FarmConfig, write_farm

FIRST_DAY = dt.date(2026, 9, 1)
WARM_UP_PHOTOS = 4
SETTINGS = {config.FARM_SENSOR_INTERVAL_SECONDS: "5", config.FARM_RUN_MAX_PHOTOS: "6"}
# Its own bridge and subnet: `hosts up` or a test may run the default ones beside it.
LAYOUT = {"prefix": "fp45l", "subnet": "10.45.2.0/24"}


def hosts_cpu_seconds(hosts: Hosts) -> float:
    total = 0.0
    for host in HOSTS:
        for pid in processes_in(hosts.layout.namespace(host)):
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
    return total


def connect_ms(url: str, tries: int = 20) -> float:
    """One new PostgreSQL connection and `SELECT 1`, in milliseconds (the median)."""
    import psycopg

    spent = []
    for _ in range(tries):
        started = time.perf_counter()
        with psycopg.connect(url) as connection:
            connection.execute("SELECT 1").fetchall()
        spent.append((time.perf_counter() - started) * 1000)
    return sorted(spent)[len(spent) // 2]


def measure(hosts: Hosts, delay_ms: float, index: int, photos: int, done: int) -> dict[str, Any]:
    from farm_platform.resources.warehouse import WarehouseResource

    environment = {**hosts.environment("control"), **throwaway_credentials()}
    set_delay(hosts, delay_ms)
    time.sleep(2)  # the proxy reads its delay every second
    day = FIRST_DAY + dt.timedelta(days=index)
    farm = FarmConfig(positions=photos, days=1, start_date=day, seed=700 + index)
    publish_field_map(hosts, farm)
    warehouse = WarehouseResource(url=environment[config.FARM_WAREHOUSE])
    # PostgreSQL's own count, asked of the server itself, not through a pooler.
    server = "postgresql://farm:{}@{}:{}/farm".format(
        environment[PG_PASSWORD], *hosts.service("postgres")
    )
    sessions_before = postgres_sessions(server)
    cpu_before, started = hosts_cpu_seconds(hosts), time.monotonic()
    with config.process_environment(environment):
        write_farm(farm, hosts.stack.bucket_url(), None, DroneMessagePublisher(hosts.stack.project))
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(hosts.dagster_home("control"))) as instance:
            wait_for_photos(instance, warehouse, done + photos, 1800)
    seconds = time.monotonic() - started
    cpu = hosts_cpu_seconds(hosts) - cpu_before
    opened = postgres_sessions(server) - sessions_before - 1
    assert processed_photos(warehouse) == done + photos
    return {
        "pooled": hosts.pooled,
        "load": os.getloadavg()[0],
        "delay_ms": delay_ms,
        "seconds": seconds,
        "photos_per_s": photos / seconds,
        "cpu_s_per_photo": cpu / photos,
        "connect_ms": connect_ms(environment[config.FARM_WAREHOUSE]),
        "sessions_per_photo": opened / photos,
    }


def measure_delays(delays: list[float], photos: int, pooled: bool) -> list[dict[str, Any]]:
    """One set of hosts (with or without their poolers), a day at each delay."""
    state_dir = Path(tempfile.mkdtemp(prefix="farm-hosts-latency-"))
    state_dir.chmod(0o755)  # PostgreSQL runs as another user
    rows = []
    try:
        hosts = hosts_up(
            state_dir, quick_polling=True, settings=SETTINGS, delayed=True, pooled=pooled, **LAYOUT
        )
        # A first day, not counted: the daemon records the models' versions, the workers
        # import and load what a run needs.
        measure(hosts, 0, 0, WARM_UP_PHOTOS, 0)
        for index, delay in enumerate(delays, start=1):
            done = WARM_UP_PHOTOS + (index - 1) * photos
            rows.append(measure(hosts, delay, index, photos, done))
            print(rows[-1], flush=True)
    finally:
        hosts_down(state_dir)
    return rows


def table_row(row: dict[str, Any], base: float) -> tuple[str, ...]:
    return (
        "PgBouncer on each host" if row["pooled"] else "none",
        f"{row['delay_ms']:g} ms ({2 * row['delay_ms']:g} ms round trip)",
        f"{row['seconds']:.0f}",
        f"{row['photos_per_s']:.3f}",
        f"{row['photos_per_s'] / base:.2f}",
        f"{row['cpu_s_per_photo']:.2f}",
        f"{row['connect_ms']:.1f}",
        f"{row['sessions_per_photo']:.1f}",
        f"{row['load']:.1f}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=12, help="photos per delay")
    parser.add_argument("--delays", type=float, nargs="+", default=[0, 1, 5, 20])
    parser.add_argument(
        "--pooler",
        choices=["both", "on", "off"],
        default="both",
        help="hosts with a PgBouncer beside their clients, without, or both (default)",
    )
    add_write_docs_flag(parser)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("hosts_latency: network namespaces need root")
        return 1
    throwaway_credentials()
    table = []
    for pooled in {"both": (False, True), "on": (True,), "off": (False,)}[args.pooler]:
        rows = measure_delays(args.delays, args.photos, pooled)
        table += [table_row(row, rows[0]["photos_per_s"]) for row in rows]
    for line in table:
        print(" | ".join(line))
    if args.write_docs:
        write_docs(
            "hosts_latency",
            ["pooler", "delay, one way", "seconds for the day", "photos/s"]
            + [f"vs {args.delays[0]:g} ms, same pooler", "CPU s per photo (all hosts)"]
            + ["PostgreSQL: connect + SELECT 1 (ms)", "PostgreSQL sessions opened per photo"]
            + ["load average (1 min)"],
            table,
            note=f"{args.photos} photos a day, the sensor's runs of up to 6 photos, one model "
            "server through the proxy; delays from farm_platform_dev.delay_proxy (no netem). "
            "Without the pooler every Dagster storage operation is a new PostgreSQL session "
            "across the link; with it, the hosts' poolers keep theirs open.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
