"""The warehouse's connections on real DuckDB and real PostgreSQL: processes taking turns
at a DuckDB file, a session's one connection, a tick's batch, the day's grading lock."""

import datetime as dt
from collections.abc import Sequence

import polars as pl
import pytest
from test_warehouse import GRADED_AT, count, grades

from farm_platform.resources.warehouse import WarehouseError, WarehouseResource


def test_processes_take_turns_at_a_duckdb_warehouse_and_threads_share_one(tmp_path):
    """While one process has its turn (as the dbt build does), another process's write waits
    for it instead of failing on DuckDB's file lock; threads of one process share a turn."""
    import subprocess
    import sys
    import threading
    import time

    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'farm.duckdb'}")
    warehouse.create_schema()
    writer = (
        "import sys, time; from farm_platform.resources.warehouse import WarehouseResource;"
        f"w = WarehouseResource(url={warehouse.url!r}, lock_timeout_seconds=60);"
        "print(time.time(), flush=True);"
        "w.execute([('CREATE TABLE waited (written_at DOUBLE)', []),"
        " ('INSERT INTO waited SELECT epoch(get_current_timestamp())', [])])"
    )
    with warehouse.exclusive_access():
        # A thread of this process is not locked out by its own process's turn.
        inside = threading.Thread(target=lambda: warehouse.query("SELECT 1"))
        inside.start()
        inside.join(timeout=30)
        assert not inside.is_alive()
        other = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        started = float(other.stdout.readline())
        time.sleep(2)
        released = time.time()
        assert other.poll() is None, "the other process did not wait for its turn"
    assert other.wait(timeout=60) == 0
    waited_until = warehouse.query("SELECT written_at FROM waited")["written_at"][0]
    assert started < released <= waited_until


def test_postgres_has_the_indexes_of_incremental_builds(postgres_url):
    # dbt's incremental builds read disease_grades, leaf_crops, drone_images and
    # partition_quality by date, and find the changed days by their write stamps.
    resource = WarehouseResource(url=postgres_url)
    with resource.connect() as connection:
        for table in ("disease_grades", "leaf_crops", "drone_images", "partition_quality"):
            connection.execute(f"DROP TABLE IF EXISTS {table}")
    resource.create_schema()
    indexes = resource.query(
        "SELECT tablename, indexdef FROM pg_indexes WHERE indexname NOT LIKE '%%_pkey'"
    )
    found = {(t, d.split("USING btree ")[1]) for t, d in indexes.iter_rows()}
    assert {
        ("disease_grades", "(date)"),
        ("disease_grades", "(graded_at, date)"),
        ("leaf_crops", "(date)"),
        ("drone_images", "(date)"),
        ("drone_images", "(ingested_at, date)"),
        ("partition_quality", "(date)"),
        ("partition_quality", "(checked_at, date)"),
    } <= found


def test_day_grading_lock_lets_sensor_runs_share_a_day_and_a_whole_day_run_wait(postgres_url):
    """On PostgreSQL, shared holders of a day's grading lock (the sensor's runs) hold it
    together; an exclusive request (a whole-day run) waits until they leave, and a shared
    request made after it queues behind it, so it is not starved. Other days are free."""
    import threading

    warehouse = WarehouseResource(url=postgres_url)
    day = dt.date(2026, 7, 1)
    with warehouse.day_grading_lock(day, exclusive=False) as first:
        with warehouse.day_grading_lock(day, exclusive=False) as second:
            assert first and second  # two sensor runs of one day at once
        waiting = threading.Event()
        holding = threading.Event()
        release = threading.Event()

        def whole_day_run() -> None:
            with warehouse.day_grading_lock(day, exclusive=True, waiting=waiting.set):
                holding.set()
                release.wait(30)

        exclusive = threading.Thread(target=whole_day_run)
        exclusive.start()
        assert waiting.wait(30), "the exclusive request did not wait for the shared holder"
        _wait_for_ungranted_locks(warehouse, 1)
        late_waiting = threading.Event()
        late_holding = threading.Event()

        def late_sensor_run() -> None:
            with warehouse.day_grading_lock(day, exclusive=False, waiting=late_waiting.set):
                late_holding.set()

        late = threading.Thread(target=late_sensor_run)
        late.start()
        assert late_waiting.wait(30), "a later shared request went past the waiting exclusive"
        _wait_for_ungranted_locks(warehouse, 2)
        assert not holding.is_set()
        # Another day is not held up.
        with warehouse.day_grading_lock(day + dt.timedelta(days=1), exclusive=True) as other:
            assert other
    assert holding.wait(30), "the exclusive request never got the lock"
    assert not late_holding.is_set(), "a shared holder ran beside the exclusive one"
    release.set()
    exclusive.join(30)
    late.join(30)
    assert late_holding.is_set()


def test_the_sensor_records_a_days_photos_while_a_run_of_that_day_waits_to_commit(
    postgres_url,
):
    """A run's write of a day holds the day's write lock while it waits behind another
    writer of the grades table. The arrival queue took that lock too, so the sensor's tick
    recording more photos of the day hung until the run committed: the production e2e's
    9-photo day timed out after 300 s, its sensor's tick still running. The queue's tables
    are the sensor's own and take no day lock."""
    import threading

    import psycopg

    from farm_platform.ingest.arrivals import Arrival, ArrivalQueue
    from farm_platform.layout import ImageKey
    from farm_platform.resources.pubsub import PulledMessage
    from farm_platform_dev.postgres import fresh_database

    url = fresh_database(postgres_url, "farm_day_lock")
    warehouse = WarehouseResource(url=url)
    warehouse.create_schema()
    day = dt.date(2026, 6, 1)
    with psycopg.connect(url) as other_writer:
        other_writer.execute("LOCK TABLE disease_grades IN SHARE MODE")
        run = threading.Thread(
            target=warehouse.replace_many, args=([("disease_grades", grades(date=day), None)],)
        )
        run.start()
        _wait_for_ungranted_locks(warehouse, 1, "c.relname = %s", ["disease_grades"])

        arrival = Arrival(
            ImageKey("P001", day),
            "1",
            f"gs://farm/P001/{day}/image.png",
            PulledMessage("ack-1", "1", GRADED_AT.isoformat(), b"{}", {}),
        )
        recorded = []
        tick = threading.Thread(
            target=lambda: recorded.append(ArrivalQueue(warehouse).record([arrival], GRADED_AT))
        )
        tick.start()
        tick.join(60)
        hung = tick.is_alive()
        other_writer.rollback()  # the run may commit now, whatever the outcome
    run.join(60)
    tick.join(60)
    assert not hung, "recording the day's new photo waited for the run's commit"
    assert recorded[0].new == 1
    assert count(warehouse) == 3  # the run committed afterwards


def test_day_grading_lock_is_none_on_duckdb(tmp_path):
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'farm.duckdb'}")
    with warehouse.day_grading_lock(dt.date(2026, 7, 1), exclusive=True) as locked:
        assert locked is False


def _wait_for_ungranted_locks(
    warehouse: WarehouseResource,
    expected: int,
    which: str = "l.locktype = 'advisory'",
    parameters: Sequence[object] = (),
) -> None:
    """Wait until `expected` lock requests matching `which` (pg_locks `l`, pg_class `c` of
    a relation lock) wait in PostgreSQL."""
    import time

    deadline = time.monotonic() + 30
    while True:
        frame = warehouse.query(
            "SELECT count(*) AS n FROM pg_locks AS l LEFT JOIN pg_class AS c"
            f" ON l.relation = c.oid WHERE NOT l.granted AND {which}",
            parameters,
        )
        if frame["n"][0] == expected:
            return
        assert time.monotonic() < deadline, f"{frame['n'][0]} lock requests wait ({which})"
        time.sleep(0.05)


def test_a_session_reuses_one_postgres_connection_per_thread_and_rolls_back_a_failure(
    postgres_url,
):
    """Inside `session()` a run's statements share a connection per thread (one backend),
    each `connect` still one transaction: a failed write leaves nothing and the connection
    goes on; outside a session every `connect` is a connection of its own."""
    import threading

    warehouse = WarehouseResource(url=postgres_url)
    warehouse.create_schema()
    warehouse.execute([("DELETE FROM disease_grades", [])])

    def backend() -> int:
        return warehouse.query("SELECT pg_backend_pid() AS pid")["pid"][0]

    with warehouse.session():
        first = backend()
        warehouse.replace_rows("disease_grades", grades(position="P001"))
        with pytest.raises(WarehouseError, match="lacks columns"):
            warehouse.replace_rows("disease_grades", grades(position="P002").drop("confidence"))
        with pytest.raises(Exception, match="(?i)duplicate|unique"):
            warehouse.replace_rows("disease_grades", pl.concat([grades("P003"), grades("P003")]))
        assert count(warehouse, "position_id = 'P003'") == 0  # rolled back, connection usable
        assert backend() == first
        other: list[int] = []
        thread = threading.Thread(target=lambda: other.append(backend()))
        thread.start()
        thread.join()
        assert other and other[0] != first
    assert count(warehouse, "position_id = 'P001'") == 3
    assert backend() != backend()  # no session: a connection per statement


def test_a_duckdb_batch_opens_the_file_once_and_holds_its_turn(tmp_path, monkeypatch):
    """Inside `batch()` a thread's statements share one connection to the file (a sensor
    tick's confirm and claim open it once, not once a statement), each `connect` still one
    transaction; another process waits for the batch's end."""
    import subprocess
    import sys

    from farm_platform.resources import warehouse as warehouse_module
    from farm_platform.resources import warehouse_connections

    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'farm.duckdb'}")
    warehouse.create_schema()
    opened: list[object] = []
    connect_duckdb = warehouse_connections.connect_duckdb

    def counting_connect(*args):  # the real one, counted
        opened.append(args)
        return connect_duckdb(*args)

    for module in (warehouse_connections, warehouse_module):
        monkeypatch.setattr(module, "connect_duckdb", counting_connect)
    reader = (
        "from farm_platform.resources.warehouse import WarehouseResource;"
        f"w = WarehouseResource(url={warehouse.url!r}, lock_timeout_seconds=1);"
        "w.query('SELECT 1')"
    )
    with warehouse.batch():
        warehouse.replace_rows("disease_grades", grades(position="P001"))
        with pytest.raises(Exception, match="(?i)duplicate|constraint"):
            warehouse.replace_rows("disease_grades", pl.concat([grades("P003"), grades("P003")]))
        assert count(warehouse, "position_id = 'P003'") == 0  # rolled back, connection usable
        with warehouse.batch():  # a batch inside a batch is the outer one
            assert count(warehouse, "position_id = 'P001'") == 3
        # Another process gets no turn while the batch lasts: it fails after its timeout.
        other = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True)
        assert other.returncode != 0 and "stayed busy" in other.stderr
    assert len(opened) == 1
    assert count(warehouse, "position_id = 'P001'") == 3
    assert len(opened) == 2  # no batch: a connection per statement again
