"""Connections to the warehouse: DuckDB's file taken in turns, PostgreSQL's sessions.

DuckDB: one process at a time opens the file (a lock file beside it, shared by the
threads of one process), statement group by statement group, so that a sensor tick gets
its turn between a run's writes. PostgreSQL: a connection per `WarehouseResource.connect`,
or, inside `postgres_session`, one per thread reused for every transaction: a connection
costs PostgreSQL a backend process (~6 ms of server CPU and ~4 ms of client CPU here),
more than most of a run's statements.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class WarehouseError(RuntimeError):
    """The warehouse URL or a frame written to it is wrong."""


# url → {thread id → connection} of the open sessions of this process.
_sessions: dict[str, dict[int, Any]] = {}
_sessions_guard = threading.Lock()


@contextlib.contextmanager
def postgres_session(url: str) -> Iterator[None]:
    """Reuse a connection per thread for `url` while inside (closed on the way out). A
    session inside a session of the same URL is the outer one."""
    with _sessions_guard:
        if url in _sessions:
            outer = True
        else:
            outer, _sessions[url] = False, {}
    try:
        yield
    finally:
        if not outer:
            with _sessions_guard:
                connections = _sessions.pop(url, {})
            for connection in connections.values():
                with contextlib.suppress(Exception):
                    connection.close()


@contextlib.contextmanager
def postgres_connection(url: str) -> Iterator[Any]:
    """A connection inside a transaction, committed on success, rolled back on an error:
    the session's connection of this thread when `url` has a session, else a new one."""
    import psycopg

    with _sessions_guard:
        session = _sessions.get(url)
        connection = None if session is None else session.get(threading.get_ident())
    if session is None:
        with psycopg.connect(url) as connection:
            yield connection
        return
    if connection is None or connection.closed or connection.broken:
        # autocommit: each `transaction()` below is then one BEGIN … COMMIT of its own.
        connection = psycopg.connect(url, autocommit=True)
        with _sessions_guard:
            session[threading.get_ident()] = connection
    with connection.transaction():
        yield connection


def connect_duckdb(path: Path, timeout: float) -> Any:
    """A connection to the DuckDB file, waiting up to `timeout` for another program's hold."""
    import duckdb

    deadline = time.monotonic() + timeout
    # A process outside the platform (a notebook, the DuckDB CLI) may hold the file.
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# (file, thread id) → the connection of that thread's open `duckdb_batch`.
_duckdb_batches: dict[tuple[Path, int], Any] = {}


@contextlib.contextmanager
def duckdb_batch(path: Path, timeout: float) -> Iterator[None]:
    """While inside, this thread's statements on the file share one connection, and this
    process holds the file's turn: opening the file costs ~25 ms of CPU (its catalog, its
    threads), more than a sensor tick's statements. A batch inside a batch is the outer one."""
    key = (path, threading.get_ident())
    if key in _duckdb_batches:
        yield
        return
    with file_turn(path.with_name(path.name + ".lock"), timeout):
        connection = connect_duckdb(path, timeout)
        _duckdb_batches[key] = connection
        try:
            yield
        finally:
            del _duckdb_batches[key]
            connection.close()


def duckdb_batch_connection(path: Path) -> Any | None:
    """The connection of this thread's open batch on the file, if any."""
    return _duckdb_batches.get((path, threading.get_ident()))


def rollback_duckdb(connection: Any) -> None:
    """End a failed transaction. A statement that fails may have ended it already; the
    rollback's own error must then not replace the failure being raised."""
    import duckdb

    with contextlib.suppress(duckdb.Error):
        connection.execute("ROLLBACK")


@dataclass
class _Turn:
    """This process's hold on one lock file: every thread of the process shares it."""

    mutex: threading.Lock = field(default_factory=threading.Lock)
    handle: Any = None
    holders: int = 0


_turns: dict[Path, _Turn] = {}
_turns_guard = threading.Lock()


@contextlib.contextmanager
def file_turn(lock_path: Path, timeout: float) -> Iterator[None]:
    """An exclusive flock on `lock_path` held while any thread of this process is inside:
    the threads of one run (reader, writer) use the database together, other processes
    wait their turn."""
    with _turns_guard:
        turn = _turns.setdefault(lock_path, _Turn())
    deadline = time.monotonic() + timeout
    if not turn.mutex.acquire(timeout=timeout):
        raise _busy(lock_path, timeout)
    try:
        if turn.holders == 0:
            handle = open(lock_path, "a")  # noqa: SIM115 - held until the last holder leaves
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        handle.close()
                        raise _busy(lock_path, timeout) from None
                    time.sleep(0.05)
            turn.handle = handle
        turn.holders += 1
    finally:
        turn.mutex.release()
    try:
        yield
    finally:
        with turn.mutex:
            turn.holders -= 1
            if turn.holders == 0:
                fcntl.flock(turn.handle, fcntl.LOCK_UN)
                turn.handle.close()
                turn.handle = None


def _busy(lock_path: Path, timeout: float) -> WarehouseError:
    return WarehouseError(
        f"{lock_path.with_suffix('')} stayed busy for {timeout:.0f} s (another process of the "
        "platform holds it); raise FARM_WAREHOUSE_LOCK_SECONDS, or use PostgreSQL for "
        "concurrent work"
    )
