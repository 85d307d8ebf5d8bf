"""The warehouse on real DuckDB and real PostgreSQL: schema, keys, idempotent writes."""

import datetime as dt
from collections.abc import Sequence

import polars as pl
import pytest

from farm_platform.resources.tables import (
    DISEASE_GRADES_COLUMNS,
    DISEASE_GRADES_TABLE,
    LEAF_CROPS_COLUMNS,
)
from farm_platform.resources.warehouse import WarehouseError, WarehouseResource

GRADED_AT = dt.datetime(2026, 6, 2, 8, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse(request, tmp_path):
    if request.param == "duckdb":
        resource = WarehouseResource(url=f"duckdb:///{tmp_path}/farm.duckdb")
    else:
        resource = WarehouseResource(url=request.getfixturevalue("postgres_url"))
        with resource.connect() as connection:
            for table in ("disease_grades", "leaf_crops", "drone_images"):
                connection.execute(f"DROP TABLE IF EXISTS {table}")
    resource.create_schema()
    return resource


def grades(position="P000", date=dt.date(2026, 6, 1), leaves=3, version="v1", grade=1):
    return pl.DataFrame(
        {
            "position_id": [position] * leaves,
            "date": [date] * leaves,
            "leaf_crop_idx": list(range(leaves)),
            "disease_type": ["disease_3"] * leaves,
            "predicted_grade": [grade] * leaves,
            "cropper_model_id": ["leaf_detector"] * leaves,
            "cropper_model_version": ["v1"] * leaves,
            "disease_model_id": ["disease_3_grader"] * leaves,
            "disease_model_version": [version] * leaves,
            "confidence": [0.9] * leaves,
            "graded_at": [GRADED_AT] * leaves,
            "dagster_run_id": ["run-1"] * leaves,
        }
    )


def count(warehouse, where="TRUE"):
    return warehouse.query(f"SELECT count(*) AS n FROM disease_grades WHERE {where}")["n"][0]


def test_tables_have_the_contract_columns(warehouse):
    for table, columns in (
        ("disease_grades", DISEASE_GRADES_COLUMNS),
        ("leaf_crops", LEAF_CROPS_COLUMNS),
    ):
        found = warehouse.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
            [table],
        )["column_name"].to_list()
        assert sorted(found) == sorted(columns)


def test_rewriting_a_partition_with_the_same_models_replaces_its_rows(warehouse):
    warehouse.replace_rows("disease_grades", grades(leaves=3, grade=1))
    warehouse.replace_rows("disease_grades", grades(leaves=2, grade=2))
    assert count(warehouse) == 2
    assert count(warehouse, "predicted_grade = 2") == 2


def test_a_new_model_version_adds_rows_beside_the_old(warehouse):
    warehouse.replace_rows("disease_grades", grades(version="v1"))
    warehouse.replace_rows("disease_grades", grades(version="v2"))
    assert count(warehouse, "disease_model_version = 'v1'") == 3
    assert count(warehouse, "disease_model_version = 'v2'") == 3


def test_other_partitions_are_untouched(warehouse):
    warehouse.replace_rows("disease_grades", grades(position="P000"))
    warehouse.replace_rows("disease_grades", grades(position="P001", leaves=1))
    assert count(warehouse, "position_id = 'P000'") == 3


def test_scopes_clear_a_partition_that_has_no_rows_any_more(warehouse):
    warehouse.replace_rows("disease_grades", grades())
    empty = grades().head(0)
    scopes = grades().head(1).select(DISEASE_GRADES_TABLE.replace_scope)
    warehouse.replace_rows("disease_grades", empty, scopes=scopes)
    assert count(warehouse) == 0


def test_writes_of_one_table_in_one_call_each_replace_their_own_scope(warehouse):
    """A run's chunk hands `replace_many` one grades write per disease (they become one
    DELETE and one INSERT): each write's rows replace its scope, none removes another's."""
    warehouse.replace_many(
        [
            ("disease_grades", grades(position="P000", grade=1), None),
            ("disease_grades", grades(position="P001", grade=1), None),
            ("disease_grades", grades(position="P002", grade=1), None),
        ]
    )
    gone = grades(position="P001").head(1).select(DISEASE_GRADES_TABLE.replace_scope)
    warehouse.replace_many(
        [
            ("disease_grades", grades(position="P000", leaves=2, grade=2), None),
            ("disease_grades", grades(position="P001").head(0), gone),
            ("disease_grades", grades(position="P003", leaves=1, grade=3), None),
        ]
    )
    rows = warehouse.query(
        "SELECT position_id, predicted_grade, count(*) AS n FROM disease_grades"
        " GROUP BY 1, 2 ORDER BY 1"
    ).rows()
    assert rows == [("P000", 2, 2), ("P002", 1, 3), ("P003", 3, 1)]


def test_primary_key_rejects_duplicate_rows(warehouse):
    duplicated = pl.concat([grades(leaves=1), grades(leaves=1)])
    with pytest.raises(Exception, match="(?i)duplicate|primary key|unique"):
        warehouse.replace_rows("disease_grades", duplicated)
    assert count(warehouse) == 0  # the failed write left nothing behind


def test_a_commit_that_fails_on_a_full_disk_reports_the_full_disk(tmp_path):
    """A DuckDB warehouse on a real 1 MiB tmpfs: the write's commit cannot write its WAL.
    The error is the commit's own (no space left), not the failed ROLLBACK's after it."""
    import subprocess

    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here (needs root): {mounted.stderr!r}")
    try:
        warehouse = WarehouseResource(url=f"duckdb:///{disk / 'farm.duckdb'}")
        warehouse.create_schema()
        leaves = 20_000  # about 3 MB of rows: more than the disk has left
        with pytest.raises(Exception) as failed:
            warehouse.replace_rows("disease_grades", grades(leaves=leaves))
        assert "No space left on device" in str(failed.value), failed.value
        assert "rollback" not in str(failed.value).lower(), failed.value
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_commit_that_postgresql_refuses_reports_its_own_cause(postgres_url):
    """A unique constraint checked at COMMIT (deferred) refuses the transaction there:
    the error raised is PostgreSQL's refusal, naming the constraint."""
    warehouse = WarehouseResource(url=postgres_url)
    table = "deferred_commit_check"
    with warehouse.connect() as connection:
        connection.execute(f"DROP TABLE IF EXISTS {table}")
        connection.execute(
            f"CREATE TABLE {table} (k INTEGER, UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"
        )
    try:
        insert = (f"INSERT INTO {table} VALUES (%s)", [1])
        with pytest.raises(Exception, match=f"{table}_k_key") as failed:
            warehouse.execute([insert, insert])  # accepted; refused at COMMIT
        assert type(failed.value).__name__ == "UniqueViolation"
        assert warehouse.query(f"SELECT count(*) AS n FROM {table}")["n"][0] == 0
    finally:
        with warehouse.connect() as connection:
            connection.execute(f"DROP TABLE {table}")


def test_missing_columns_are_named(warehouse):
    with pytest.raises(WarehouseError, match="confidence"):
        warehouse.replace_rows("disease_grades", grades().drop("confidence"))


def test_unsupported_url_says_what_is_supported():
    with pytest.raises(WarehouseError, match="duckdb:///"):
        WarehouseResource(url="mysql://farm@localhost/farm").create_schema()


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
