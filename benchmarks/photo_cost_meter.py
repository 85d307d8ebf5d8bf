"""What the platform's processes spend, for benchmarks/photo_cost.py.

`CpuMeter` samples every process under a set of root pids (and the roots themselves) a few
times a second and sums each one's CPU seconds into its group (daemon, code servers, run
workers, PostgreSQL, ...), named from its command line. A process that exits between two
samples loses at most its last interval to the sampler; its parent's children times get
all of it when the parent reaps it, so the meter also adds up the roots' trees' reaped
children times and gives the difference ("after the last sample") to the groups of the
processes that vanished, in proportion to what was sampled of them.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

# First match wins: (group, any of these in the command line).
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("PgBouncer", ("pgbouncer",)),
    ("PostgreSQL", ("postgres",)),
    ("Redis", ("redis-server",)),
    ("run workers", ("spawn_main", "execute_run", "api execute")),
    ("Celery", ("celery",)),
    ("replicas", ("models serve", "model_server", "models', 'serve")),
    ("daemon", ("dagster-daemon", "dagster_daemon")),
    ("code servers", ("code-server", "api grpc", "grpc")),
    ("webservers", ("dagster-webserver", "webserver")),
    ("watchdog", ("watchdog",)),
]


def classify(cmdline: Iterable[str], default: str) -> str:
    text = " ".join(cmdline)
    for group, markers in GROUPS:
        if any(marker in text for marker in markers):
            return group
    return default


class CpuMeter(threading.Thread):
    """CPU seconds by group over the processes under `roots` (pid → default group)."""

    def __init__(self, roots: Callable[[], dict[int, str]], interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.interval = interval
        self.baseline: dict[int, tuple[float, float]] = {}  # pid → own, children at start
        self.last: dict[int, tuple[str, float, float]] = {}  # pid → group, own, children
        self.started_at = 0.0
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def _sample(self, first: bool = False) -> None:
        for root, default in self.roots().items():
            try:
                top = psutil.Process(root)
                processes = [top, *top.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    own = times.user + times.system
                    children = times.children_user + times.children_system
                    with self.lock:
                        if process.pid not in self.last:
                            group = classify(process.cmdline(), default)
                            parent = self.last.get(process.ppid(), ("",))[0]
                            if group == "Celery" and parent == "Celery":
                                group = "run workers"  # a prefork pool process runs runs
                            if first:
                                self.baseline[process.pid] = (own, children)
                        else:
                            group = self.last[process.pid][0]
                        self.last[process.pid] = (group, own, children)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuMeter:
        self._sample(first=True)
        self.started_at = time.monotonic()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.join()
        self._sample()

    def by_group(self) -> dict[str, float]:
        """CPU seconds each group spent since the meter started."""
        with self.lock:
            last = dict(self.last)
        alive = {pid for pid in last if psutil.pid_exists(pid)}
        spent: dict[str, float] = {}
        vanished: dict[str, float] = {}
        reaped = 0.0  # reaped children's whole time, sampled part included
        for pid, (group, own_s, children_s) in last.items():
            own_0, children_0 = self.baseline.get(pid, (0.0, 0.0))
            if pid in alive:
                spent[group] = spent.get(group, 0.0) + own_s - own_0
                reaped += children_s - children_0
            else:
                vanished[group] = vanished.get(group, 0.0) + own_s + children_s - own_0 - children_0
        # Reaped children's time that the samples of vanished processes did not see.
        unseen = max(0.0, reaped - sum(vanished.values()))
        total_vanished = sum(vanished.values()) or 1.0
        for group, seconds in vanished.items():
            share = unseen * seconds / total_vanished
            spent[group] = spent.get(group, 0.0) + seconds + share
        return {group: seconds for group, seconds in sorted(spent.items()) if seconds > 0.005}


def busy_cpu_seconds() -> float:
    """The whole machine's busy CPU seconds (everyone's, shown beside the platform's)."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


class LatencyTracker:
    """Upload → graded seconds: when each photo's rows first appear in the warehouse."""

    def __init__(self, warehouse: Any) -> None:
        self.warehouse = warehouse
        self.uploaded_at: dict[str, float] = {}
        self.latencies: dict[str, float] = {}

    def uploaded(self, position_ids: Iterable[str]) -> None:
        now = time.time()
        for position_id in position_ids:
            self.uploaded_at[position_id] = now

    def poll(self) -> int:
        """Note the photos graded since the last look; how many are graded in all."""
        now = time.time()
        try:
            rows = self.warehouse.query("SELECT position_id FROM drone_images")
        except Exception:  # noqa: BLE001 - the table appears with the first run
            return len(self.latencies)
        for position_id in rows["position_id"].to_list():
            if position_id not in self.latencies and position_id in self.uploaded_at:
                self.latencies[position_id] = now - self.uploaded_at[position_id]
        return len(self.latencies)

    def percentiles(self) -> tuple[float, float]:
        ordered = sorted(self.latencies.values())
        if not ordered:
            return float("nan"), float("nan")
        return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def postgres_sessions(url: str) -> int:
    """Sessions (connections) PostgreSQL has opened so far, over all its databases."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SELECT sum(sessions) FROM pg_stat_database").fetchone()
    return int(row[0] or 0) if row else 0
