"""Where dbt finds the warehouse: a dbt profile built from the `FARM_WAREHOUSE` URL.

The definitions write it once when they load (`write_dbt_profile`), and the `dbt` resource
names its folder, so one URL (the same one `WarehouseResource` takes) points both the
inference assets and dbt at the same database. Pure standard library: importing this must
not import dbt.

    duckdb:///abs/path/farm.duckdb      -> type duckdb,   path /abs/path/farm.duckdb, schema main
    postgresql://user:pw@host:5432/db   -> type postgres, host, port, user, …, schema public

DuckDB paths are read by `config.duckdb_path`, as `WarehouseResource` reads them.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from farm_platform.config import REPO_ROOT, duckdb_path

DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
# The dbt installed beside this interpreter, whether or not its venv is on PATH.
DBT_EXECUTABLE = str(Path(sys.executable).with_name("dbt"))
# The profile's name (dbt_project.yml `profile:`) and its one target.
DBT_PROFILE = "farm"
DBT_TARGET = "warehouse"

DUCKDB_SCHEMA = "main"
POSTGRES_SCHEMA = "public"
POSTGRES_DEFAULT_PORT = 5432


def dbt_output(warehouse_url: str) -> dict[str, Any]:
    """The dbt target (a profile's `outputs` entry) of a `FARM_WAREHOUSE` URL.

    DuckDB: `path`, schema `main`. PostgreSQL: host, port (5432), user, password (may be
    empty), dbname, sslmode (`prefer` unless the URL says `?sslmode=…`), schema `public`.
    The models go where the warehouse tables are."""
    url = (warehouse_url or "").strip()
    if url.startswith("duckdb://"):
        return _duckdb_output(url)
    if url.startswith(("postgresql://", "postgres://")):
        return _postgres_output(url)
    raise ValueError(
        f"FARM_WAREHOUSE={warehouse_url!r} is not supported by dbt: use "
        "duckdb:////abs/path/farm.duckdb (or duckdb:///relative/path.duckdb) "
        "or postgresql://user[:password]@host[:port]/database"
    )


def warehouse_relation_prefix(warehouse_url: str) -> str:
    """`database.schema` of the warehouse's tables, as dbt names them: DuckDB calls a file's
    database by its stem, PostgreSQL by the database name."""
    output = dbt_output(warehouse_url)
    database = Path(output["path"]).stem if output["type"] == "duckdb" else output["dbname"]
    return f"{database}.{output['schema']}"


def _duckdb_output(url: str) -> dict[str, Any]:
    return {
        "type": "duckdb",
        "path": str(duckdb_path(url)),
        "schema": DUCKDB_SCHEMA,
        # One thread: with 4, a full refresh failed at random (a model read a table that
        # another thread was swapping for its __dbt_backup), though it took 2/3 of the time.
        "threads": 1,
        # DuckDB takes up to 80 % of RAM by default: a full build of a year of grades
        # (43 M rows) peaked at 5 GB. With a limit it spills to `<file>.tmp` instead.
        "settings": {"memory_limit": "{{ env_var('FARM_DUCKDB_MEMORY_LIMIT', '1GB') }}"},
    }


def _postgres_output(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    try:
        port = parts.port or POSTGRES_DEFAULT_PORT
    except ValueError as exc:  # e.g. a non-numeric port
        raise ValueError(f"FARM_WAREHOUSE={url!r}: bad port ({exc})") from None
    host = parts.hostname
    user = unquote(parts.username) if parts.username else ""
    dbname = unquote(parts.path.lstrip("/"))
    missing = [
        name for name, value in (("host", host), ("user", user), ("database", dbname)) if not value
    ]
    if missing:
        raise ValueError(
            f"FARM_WAREHOUSE={url!r}: dbt needs {', '.join(missing)} in the URL "
            "(postgresql://user[:password]@host[:port]/database)"
        )
    return {
        "type": "postgres",
        "host": str(host),
        "port": port,
        "user": user,
        "password": unquote(parts.password) if parts.password else "",
        "dbname": dbname,
        "sslmode": parse_qs(parts.query).get("sslmode", ["prefer"])[-1],
        "schema": POSTGRES_SCHEMA,
        "threads": 2,
    }


def write_dbt_profile(warehouse_url: str, folder: Path) -> Path:
    """`folder/profiles.yml` with the one target of `warehouse_url`; `folder`.

    The file may hold the PostgreSQL password, as the URL does: only its owner reads it."""
    profile = {
        DBT_PROFILE: {"target": DBT_TARGET, "outputs": {DBT_TARGET: dbt_output(warehouse_url)}}
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "profiles.yml"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(profile, handle, indent=2)  # JSON is YAML
    return folder


@functools.cache
def dbt_profiles_dir(warehouse_url: str) -> Path:
    """A private folder holding the profile of `warehouse_url`, written once per process
    (the definitions build the `dbt` resource from it) and removed when the process ends."""
    folder = Path(tempfile.mkdtemp(prefix="farm-dbt-profile-"))
    atexit.register(shutil.rmtree, folder, True)
    return write_dbt_profile(warehouse_url, folder)
