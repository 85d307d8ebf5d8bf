"""Where dbt finds the warehouse: environment variables derived from `FARM_WAREHOUSE`.

`dbt_project/profiles.yml` reads only the variables returned by `dbt_environment`, so one
URL (the same one `WarehouseResource` takes) points both the inference assets and dbt at
the same database. Pure standard library: importing this must not import dbt.

    duckdb:///abs/path/farm.duckdb      -> FARM_DBT_TARGET=duckdb,   FARM_DUCKDB_PATH=/abs/path/…
    postgresql://user:pw@host:5432/db   -> FARM_DBT_TARGET=postgres, FARM_PG_HOST/PORT/USER/…

DuckDB paths are read by `config.duckdb_path`, as `WarehouseResource` reads them.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from farm_platform.config import REPO_ROOT, duckdb_path, process_environment

DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
# profiles.yml lives in the project directory.
DBT_PROFILES_DIR = DBT_PROJECT_DIR
# The dbt installed beside this interpreter, whether or not its venv is on PATH.
DBT_EXECUTABLE = str(Path(sys.executable).with_name("dbt"))

DUCKDB_SCHEMA = "main"
POSTGRES_SCHEMA = "public"
POSTGRES_DEFAULT_PORT = 5432


def dbt_environment(warehouse_url: str) -> dict[str, str]:
    """The FARM_* variables profiles.yml reads, for a `FARM_WAREHOUSE` URL.

    Keys, always: FARM_DBT_TARGET (`duckdb` or `postgres`), FARM_DBT_SCHEMA (where the
    warehouse tables are and the models go: `main` in DuckDB, `public` in PostgreSQL).
    DuckDB: FARM_DUCKDB_PATH. PostgreSQL: FARM_PG_HOST, FARM_PG_PORT, FARM_PG_USER,
    FARM_PG_PASSWORD (may be empty), FARM_PG_DBNAME, FARM_PG_SSLMODE (`prefer` unless the
    URL says `?sslmode=…`).
    """
    url = (warehouse_url or "").strip()
    if url.startswith("duckdb://"):
        return _duckdb_environment(url)
    if url.startswith(("postgresql://", "postgres://")):
        return _postgres_environment(url)
    raise ValueError(
        f"FARM_WAREHOUSE={warehouse_url!r} is not supported by dbt: use "
        "duckdb:////abs/path/farm.duckdb (or duckdb:///relative/path.duckdb) "
        "or postgresql://user[:password]@host[:port]/database"
    )


def warehouse_relation_prefix(warehouse_url: str) -> str:
    """`database.schema` of the warehouse's tables, as dbt names them: DuckDB calls a file's
    database by its stem, PostgreSQL by the database name."""
    environment = dbt_environment(warehouse_url)
    if environment["FARM_DBT_TARGET"] == "duckdb":
        database = Path(environment["FARM_DUCKDB_PATH"]).stem
    else:
        database = environment["FARM_PG_DBNAME"]
    return f"{database}.{environment['FARM_DBT_SCHEMA']}"


def _duckdb_environment(url: str) -> dict[str, str]:
    return {
        "FARM_DBT_TARGET": "duckdb",
        "FARM_DBT_SCHEMA": DUCKDB_SCHEMA,
        "FARM_DUCKDB_PATH": str(duckdb_path(url)),
    }


def _postgres_environment(url: str) -> dict[str, str]:
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
    sslmode = parse_qs(parts.query).get("sslmode", ["prefer"])[-1]
    return {
        "FARM_DBT_TARGET": "postgres",
        "FARM_DBT_SCHEMA": POSTGRES_SCHEMA,
        "FARM_PG_HOST": str(host),
        "FARM_PG_PORT": str(port),
        "FARM_PG_USER": user,
        "FARM_PG_PASSWORD": unquote(parts.password) if parts.password else "",
        "FARM_PG_DBNAME": dbname,
        "FARM_PG_SSLMODE": sslmode,
    }


@contextlib.contextmanager
def dbt_connection(warehouse_url: str) -> Iterator[None]:
    """The process environment that `profiles.yml` reads, for the duration of a dbt call;
    the environment as it was afterwards."""
    with process_environment(dbt_environment(warehouse_url)):
        yield


def dbt_project_copy(positions: Path | Any, destination: Path) -> Path:
    """The dbt project copied to `destination` with `positions` (a field-map CSV or frame)
    as its `positions` seed.

    The seed in the repository is the production field map; a simulated or corrupted farm
    must not overwrite it.
    """
    shutil.copytree(
        DBT_PROJECT_DIR,
        destination,
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", "positions.csv"),
    )
    seed = destination / "seeds" / "positions.csv"
    import polars as pl

    if isinstance(positions, pl.DataFrame):
        positions.write_csv(seed)
    else:
        shutil.copyfile(positions, seed)
    return destination


def manifest_is_stale(project_dir: Path) -> bool:
    """No manifest yet (a fresh checkout), or a model, macro, seed or the project file is
    newer than it (a `git pull` without `make`): a stale manifest loads, and the next dbt
    run fails on a model it does not know."""
    manifest = project_dir / "target" / "manifest.json"
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    sources = [project_dir / "dbt_project.yml"]
    for folder in ("models", "macros", "seeds"):
        sources += (project_dir / folder).rglob("*")
    return any(path.stat().st_mtime > built for path in sources if path.is_file())


def parse_dbt_project(project_dir: Path) -> None:
    """`dbt parse`: the manifest the analytics assets are built from (a few seconds)."""
    parsed = subprocess.run(
        [DBT_EXECUTABLE, "parse", "--quiet", "--profiles-dir", str(project_dir)],
        cwd=project_dir,
        capture_output=True,
        text=True,
    )
    if parsed.returncode != 0:
        raise RuntimeError(
            f"dbt parse failed in {project_dir}; fix the project, then run `make`:\n"
            + (parsed.stdout + parsed.stderr)[-2000:]
        )


@contextlib.contextmanager
def dbt_project_for(field_map: Path) -> Iterator[Path]:
    """The dbt project whose `positions` seed is `field_map`: the checkout's own when that
    is its seed, else a temporary copy (a demo or simulated farm never rewrites the
    tracked seed, which is the real farm's)."""
    seed = DBT_PROJECT_DIR / "seeds" / "positions.csv"
    if field_map.resolve() == seed.resolve():
        yield DBT_PROJECT_DIR
        return
    with tempfile.TemporaryDirectory(prefix="farm-dbt-") as folder:
        yield dbt_project_copy(field_map, Path(folder) / "dbt_project")
