"""Analytics at trial scale: dbt and the daily report over N positions × D days of history.

    python benchmarks/analytics_scale.py [--positions 2000] [--days 30 90 180 360]
        [--db duckdb postgres] [--leaves 12] [--rss-limit-gb 12]

For each database and D, a warehouse of the contract's tables is generated inside the
database (no images, no models): the field map (half control, half treated), one photo per
position and day, `--leaves` leaf crops per photo, a grade per leaf for each of the 5
diseases (one grader version each, severity falling over time, faster when treated) and a
passed quality check per photo and asset, for days 1..D-1. Then, each in its own process:

1. full build: `dbt build --full-refresh` of that history;
2. daily incremental build: day D is written (stamped now, as a run stamps its rows), then
   `dbt build`, which rebuilds only the changed days;
3. report: `effectiveness_report`'s data and HTML page for day D.

Printed per step: wall seconds, CPU seconds (user + system of the measured process: dbt
with DuckDB inside it, or the dbt client of PostgreSQL, whose server works in its own
processes) and the process's peak RSS. A watchdog kills a step whose RSS passes
`--rss-limit-gb` (the machine is shared) and reports it as such. PostgreSQL is a
throwaway server, as the tests start, with the settings printed at the start.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from docs_table import add_write_docs_flag, write_docs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "farm_platform_tests"))

from analytics_history import (  # noqa: E402
    autocommit,
    first_day_of,
    generate_days,
    generate_history,
)

from farm_platform.resources.warehouse import TABLES, WarehouseResource  # noqa: E402
from farm_platform_dev.farm import dbt_workdir  # noqa: E402

# Server settings of the throwaway PostgreSQL: a modest production-like box's, not the
# defaults (128 MB shared_buffers, 4 MB work_mem) and not tuned to this benchmark.
POSTGRES_SETTINGS = (
    "-c shared_buffers=1GB -c work_mem=64MB -c maintenance_work_mem=1GB "
    "-c max_wal_size=8GB -c effective_cache_size=4GB"
)


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    ok: bool
    note: str = ""


def slowest_nodes(project: Path, count: int = 4) -> str:
    """The dbt nodes that took longest in the project's last run (run_results.json)."""
    results = json.loads((project / "target" / "run_results.json").read_text())["results"]
    timed = sorted(results, key=lambda r: r.get("execution_time") or 0, reverse=True)
    return ", ".join(
        f"{r['unique_id'].split('.')[-1][:40]} {r['execution_time']:.1f} s" for r in timed[:count]
    )


def measure(code: str, env: dict[str, str], rss_limit_mb: float) -> Measured:
    """Run `code` in a fresh Python process; its wall time, CPU time and peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed, done = threading.Event(), threading.Event()
    # The child's VmHWM (its peak RSS since exec). Not rusage's ru_maxrss: Linux carries the
    # forking parent's RSS into it, and this parent holds DuckDB's generation buffers.
    peak_kb = [0]

    def watchdog() -> None:
        # Never poll() here: only the os.wait4 below may reap the child, for its rusage.
        status = Path(f"/proc/{process.pid}/status")
        while not done.is_set():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = {
                    line.split(":")[0]: int(line.split()[1])
                    for line in status.read_text().splitlines()
                    if line.startswith(("VmRSS:", "VmHWM:"))
                }
                peak_kb[0] = max(peak_kb[0], fields.get("VmHWM", 0))
                if fields.get("VmRSS", 0) / 1024 > rss_limit_mb:
                    killed.set()
                    process.send_signal(signal.SIGKILL)
                    return
            time.sleep(0.1)

    threading.Thread(target=watchdog, daemon=True).start()
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    ok = process.returncode == 0
    note = ""
    if killed.is_set():
        note = f"killed: RSS over {rss_limit_mb / 1024:.0f} GB"
    elif not ok:
        note = "failed: " + output.strip().splitlines()[-1][:200] if output.strip() else "failed"
    return Measured(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=peak_kb[0] / 1024,
        ok=ok,
        note=note,
    )


DBT_BUILD = """
from pathlib import Path
from farm_platform_dev.farm import invoke_dbt_build
outcome = invoke_dbt_build(Path({project!r}), {url!r}, full_refresh={full!r})
assert outcome.success, outcome.failed()
"""

REPORT = """
import datetime as dt
from farm_platform.admin.configured import configured_registry
from farm_platform.report.data import load_report_data
from farm_platform.report.render import render_report
from farm_platform.resources.warehouse import WarehouseResource
data = load_report_data(
    WarehouseResource(url={url!r}), dt.date.fromisoformat({day!r}), configured_registry()
)
page = render_report(data)
assert "Does the medicine speed up healing" in page
"""


def run_one(
    url: str,
    workdir: Path,
    positions: int,
    days: int,
    leaves: int,
    rss_mb: float,
    partitioning: bool = False,
) -> tuple[int, float, int, dict[str, Measured]]:
    """Generate, then measure the full build, the daily incremental build and the report."""
    field_map = pl.DataFrame(
        {
            "position_id": [f"P{p:05d}" for p in range(positions)],
            "area": ["control" if p % 2 == 0 else "treated" for p in range(positions)],
            "latitude": [52.0] * positions,
            "longitude": [5.0 + p * 1e-5 for p in range(positions)],
            "dose_ml_per_sqft": [0.0 if p % 2 == 0 else 120.0 for p in range(positions)],
        }
    )
    project = dbt_workdir(field_map, workdir / f"project-{url.split(':')[0]}-{days}")
    first_day = first_day_of(days)
    started = time.perf_counter()
    generate_history(url, first_day, positions, days, leaves)
    rows = WarehouseResource(url=url).query("SELECT count(*) AS n FROM disease_grades")["n"][0]
    generated = time.perf_counter() - started
    results = {
        "full build": measure(
            DBT_BUILD.format(project=str(project), url=url, full=True), {}, rss_mb
        )
    }
    results["full build"].note += slowest_nodes(project)
    # The new day, written as the image runs write it (stamped now), then the morning's build.
    generate_days(
        WarehouseResource(url=url), first_day, positions, leaves, days - 1, days, stamp_now=True
    )
    results["daily incremental build"] = measure(
        DBT_BUILD.format(project=str(project), url=url, full=False), {}, rss_mb
    )
    results["daily incremental build"].note += slowest_nodes(project)
    changed = WarehouseResource(url=url).query("SELECT count(*) AS n FROM int_changed_days")
    new_day = (dt.date.fromisoformat(first_day) + dt.timedelta(days=days - 1)).isoformat()
    results["report"] = measure(REPORT.format(url=url, day=new_day), {}, rss_mb)
    if partitioning and url.startswith("postgresql"):
        for line in compare_partitioning(url, first_day, days):
            print(f"<!-- {days} days: {line} -->", flush=True)
    return rows, generated, int(changed["n"][0]), results


def compare_partitioning(url: str, first_day: str, days: int) -> list[str]:
    """PostgreSQL: disease_grades with its date index against a copy partitioned by month.
    Times (best of 5) what the morning build and the writer do to it: read one day, find
    the days written since a stamp, replace one photo's rows."""
    day = (dt.date.fromisoformat(first_day) + dt.timedelta(days=days // 2)).isoformat()
    months = sorted(
        {
            (dt.date.fromisoformat(first_day) + dt.timedelta(days=d)).replace(day=1)
            for d in range(days + 31)
        }
    )
    with contextlib.closing(autocommit(url)) as connection:
        connection.execute(
            "CREATE TABLE grades_by_month (LIKE disease_grades) PARTITION BY RANGE (date)"
        )
        for start, stop in zip(months, months[1:], strict=False):
            connection.execute(
                f"CREATE TABLE grades_{start:%Y%m} PARTITION OF grades_by_month"
                f" FOR VALUES FROM ('{start}') TO ('{stop}')"
            )
        connection.execute("INSERT INTO grades_by_month SELECT * FROM disease_grades")
        primary_key = ", ".join(TABLES["disease_grades"].primary_key)
        connection.execute(f"ALTER TABLE grades_by_month ADD PRIMARY KEY ({primary_key})")
        connection.execute("CREATE INDEX ON grades_by_month (graded_at, date)")
        connection.execute("VACUUM ANALYZE grades_by_month")
        lines = []
        for table in ("disease_grades", "grades_by_month"):
            queries = {
                "one day's grades": f"SELECT count(*), avg(predicted_grade) FROM {table}"
                f" WHERE date IN ('{day}')",
                "days stamped since": f"SELECT DISTINCT date FROM {table}"
                " WHERE graded_at > now() - interval '3 hours'",
                "replace one photo": f"DELETE FROM {table} WHERE position_id = 'P00007'"
                f" AND date = '{day}' AND disease_type = 'disease_0'",
            }
            timings = []
            for name, sql in queries.items():
                best = float("inf")
                for _ in range(5):
                    connection.execute("BEGIN")
                    started = time.perf_counter()
                    connection.execute(sql)
                    best = min(best, time.perf_counter() - started)
                    connection.execute("ROLLBACK")
                timings.append(f"{name} {best * 1000:.1f} ms")
            lines.append(f"{table}: " + ", ".join(timings))
        connection.execute("DROP TABLE grades_by_month")
    return lines


@contextlib.contextmanager
def warehouse_url(db: str, workdir: Path, days: int) -> Iterator[str]:
    if db == "duckdb":
        path = workdir / f"warehouse-{days}.duckdb"
        try:
            yield f"duckdb:///{path}"
        finally:
            path.unlink(missing_ok=True)
        return
    from farm_platform_dev.postgres import postgres_server

    with postgres_server(POSTGRES_SETTINGS) as url:
        yield url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=2000)
    parser.add_argument("--days", type=int, nargs="+", default=[30, 90, 180, 360])
    parser.add_argument("--db", nargs="+", default=["duckdb", "postgres"])
    parser.add_argument("--leaves", type=int, default=12)
    parser.add_argument("--rss-limit-gb", type=float, default=12.0)
    parser.add_argument(
        "--partitioning",
        action="store_true",
        help="PostgreSQL: also time disease_grades' date index against monthly partitions",
    )
    add_write_docs_flag(parser)
    args = parser.parse_args()
    table = []
    print(f"PostgreSQL settings: {POSTGRES_SETTINGS}", flush=True)
    print("| db | days | grade rows | step | wall s | CPU s | peak RSS MB | days rebuilt | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    with tempfile.TemporaryDirectory(prefix="farm-analytics-scale-") as tmp:
        workdir = Path(tmp)
        for db in args.db:
            for days in args.days:
                with warehouse_url(db, workdir, days) as url:
                    rows, generated, changed, results = run_one(
                        url,
                        workdir,
                        args.positions,
                        days,
                        args.leaves,
                        args.rss_limit_gb * 1024,
                        args.partitioning,
                    )
                for step, m in results.items():
                    rebuilt = changed if step == "daily incremental build" else ""
                    print(
                        f"| {db} | {days} | {rows:,} | {step} | {m.wall_s:.1f} | {m.cpu_s:.1f} "
                        f"| {m.peak_rss_mb:,.0f} | {rebuilt} | {m.note} |",
                        flush=True,
                    )
                print(f"<!-- {db} {days} days generated in {generated:.0f} s -->", flush=True)
                figures = [
                    f"{m.wall_s:.1f} s / {m.cpu_s:.1f} s / {m.peak_rss_mb:,.0f} MB"
                    for m in results.values()
                ]
                table.append((db, f"{days} days", f"{rows / 1e6:.1f} M", *figures))
    if args.write_docs:
        steps = [
            f"{step}: wall / CPU / peak RSS" for step in ("full build", "daily build", "report")
        ]
        note = f"{args.positions} positions, {args.leaves} leaves per photo."
        write_docs("analytics_scale", ["db", "history", "grade rows", *steps], table, note=note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
