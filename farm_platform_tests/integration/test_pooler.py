"""PgBouncer in session mode (farm_platform_dev.pooler, deploy/vm/pgbouncer.ini) between
Dagster's instance storage and the warehouse and a real PostgreSQL with SCRAM passwords:
few server connections for many client connections, and the day's advisory lock still
excluding another session."""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from farm_platform_dev.pooler import USERLIST_FILE, Pooler, stop_pooler
from farm_platform_dev.postgres import PostgresServer
from farm_platform_dev.processes import free_port

PASSWORD = 'pooled "secret"'
DAY = dt.date(2026, 9, 1)


@pytest.fixture(scope="module")
def pooled() -> Iterator[tuple[PostgresServer, Pooler]]:
    # Not under pytest's tmp dirs (0700 root): PgBouncer runs as PostgreSQL's account.
    folder = Path(tempfile.mkdtemp(prefix="farm-pooler-"))
    folder.chmod(0o755)
    with PostgresServer(password=PASSWORD, databases=("farm", "dagster")) as server:
        port, log = free_port(), folder / "pgbouncer.log"
        pooler = Pooler(folder / "pgbouncer", "127.0.0.1", port, "127.0.0.1", server.port, log)
        pid = pooler.start(PASSWORD)
        try:
            yield server, pooler
        finally:
            stop_pooler(pid, pooler.marker)
            shutil.rmtree(folder, ignore_errors=True)


def _server_sessions(server: PostgresServer) -> int:
    """Sessions PostgreSQL has opened so far (this one included)."""
    with psycopg.connect(server.database_url("farm")) as connection:
        return int(connection.execute("SELECT sum(sessions) FROM pg_stat_database").fetchone()[0])


def _materialize_twice(dagster_home: Path, host: str, port: int) -> None:
    """Two runs of a one-asset job on a PostgreSQL instance at host:port (its storage opens
    a connection per operation)."""
    from dagster import DagsterInstance, asset, materialize

    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_db:\n      username: farm\n"
        f"      password: '{PASSWORD}'\n      hostname: {host}\n      port: {port}\n"
        "      db_name: dagster\n      scheme: postgresql+psycopg2\n"
        "telemetry:\n  enabled: false\n"
    )

    @asset
    def pooled_asset() -> int:
        return 1

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for _ in range(2):
            assert materialize([pooled_asset], instance=instance).success


def test_instance_storage_through_the_pooler_opens_few_server_connections(pooled, tmp_path):
    """Directly, Dagster's storage makes PostgreSQL open a session per operation; through the
    pooler the same runs open at most its pool's few, and the pooler's files hold the
    password only in its owner-only userlist."""
    server, pooler = pooled
    before = _server_sessions(server)
    _materialize_twice(tmp_path / "direct", "127.0.0.1", server.port)
    direct = _server_sessions(server) - before - 1
    before = _server_sessions(server)
    _materialize_twice(tmp_path / "pooled", pooler.listen_host, pooler.listen_port)
    through_pooler = _server_sessions(server) - before - 1
    assert direct >= 20, direct  # what the pooler is for
    print(f"sessions for the same two runs: {direct} direct, {through_pooler} through the pooler")
    assert through_pooler <= 5, (through_pooler, direct)
    admin = pooler.url(quote(PASSWORD, safe=""), "pgbouncer")
    with psycopg.connect(admin, autocommit=True) as console:
        pools = console.execute("SHOW POOLS")
        columns = [column.name for column in pools.description]
        rows = [dict(zip(columns, row, strict=True)) for row in pools.fetchall()]
    dagster = next(row for row in rows if row["database"] == "dagster")
    assert dagster["pool_mode"] == "session"
    assert dagster["sv_active"] + dagster["sv_idle"] + dagster["sv_used"] <= 5
    userlist = pooler.folder / USERLIST_FILE
    assert stat.S_IMODE(userlist.stat().st_mode) == 0o600
    assert "secret" not in pooler.config_file.read_text().split("[databases]")[1]


def test_the_days_advisory_lock_through_the_pooler_excludes_another_session(pooled):
    """The day's grading lock taken through the pooler (session mode) keeps another session,
    through the pooler or not, out until released; a client that leaves holding a session
    lock does not hand it to the next client (server_reset_query)."""
    from farm_platform.resources.warehouse import DAY_GRADING_LOCK_PREFIX, WarehouseResource

    server, pooler = pooled
    farm = pooler.url(quote(PASSWORD, safe=""), "farm")
    key = f"{DAY_GRADING_LOCK_PREFIX}{DAY.isoformat()}"
    try_lock = "SELECT pg_try_advisory_lock_shared(hashtext(%s))"

    def others_get_it() -> list[bool]:
        taken = []
        for url in (farm, server.database_url("farm")):
            with psycopg.connect(url, autocommit=True) as other:
                taken.append(other.execute(try_lock, [key]).fetchone()[0])
        return taken

    warehouse = WarehouseResource(url=farm)
    with warehouse.day_grading_lock(DAY, exclusive=True) as held:
        assert held
        assert others_get_it() == [False, False]
    assert others_get_it() == [True, True]
    # A client that disconnects with the lock held (a killed run): its server connection
    # goes back to the pool only after DISCARD ALL, which drops the lock.
    leaving = psycopg.connect(farm, autocommit=True)
    leaving.execute("SELECT pg_advisory_lock(hashtext(%s))", [key])
    assert others_get_it() == [False, False]
    leaving.close()
    # The pooler sees the disconnect and resets the connection a moment later.
    deadline = time.monotonic() + 30
    while (taken := others_get_it()) != [True, True] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert taken == [True, True]
