"""The Dagster instance the platform runs on: the shipped `dagster.yaml`, and opening the
instance named by `DAGSTER_HOME` for a command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from farm_platform.config import DAGSTER_HOME, REPO_ROOT, ConfigError

# The instance configuration shipped with the project (docs/operations.md, "Instance settings").
DAGSTER_YAML = REPO_ROOT / "dagster.yaml"


# Polling of the run queue and of run monitoring for tests and benchmarks, which wait on
# them: the shipped values (5 s and 20 s) suit a daemon that runs for days.
QUICK_POLLING = {
    "dequeue_interval_seconds: 5": "dequeue_interval_seconds: 1",
    "poll_interval_seconds: 20": "poll_interval_seconds: 3",
}

# The shipped limit of runs per day partition (the tag limit's value), which
# `prepare_dagster_home(runs_per_day=...)` replaces.
RUNS_PER_DAY_LIMIT = "applyLimitPerUniqueValue: true\n        limit: 1\n"


def prepare_dagster_home(
    dagster_home: Path,
    max_concurrent_runs: int = 1,
    postgres_db: dict[str, Any] | None = None,
    quick_polling: bool = False,
    run_launcher: dict[str, Any] | None = None,
    runs_per_day: int = 1,
) -> None:
    """A DAGSTER_HOME with the shipped dagster.yaml and its storage created: SQLite files in
    the folder, or dagster-postgres storage (runs, event logs, schedules and sensor ticks)
    in the database `postgres_db` names (dagster-postgres's `postgres_db` keys; give the
    password as `{"env": "VARIABLE"}` so that it is read from the environment, never
    written here). `run_launcher`: the instance's run launcher (module, class, config)
    instead of Dagster's default, which runs each run as a local process. `runs_per_day`:
    how many runs of one day partition may run at once (the `dagster/partition` tag
    limit); more than one only with the warehouse on PostgreSQL, whose per-day advisory
    locks keep a whole-day run from grading beside the sensor's runs."""
    config = DAGSTER_YAML.read_text().replace(
        "max_concurrent_runs: 1", f"max_concurrent_runs: {max_concurrent_runs}"
    )
    if runs_per_day < 1:
        raise ValueError(f"runs_per_day must be at least 1, not {runs_per_day}")
    assert RUNS_PER_DAY_LIMIT in config, f"dagster.yaml no longer says {RUNS_PER_DAY_LIMIT!r}"
    config = config.replace(
        RUNS_PER_DAY_LIMIT, RUNS_PER_DAY_LIMIT.replace("limit: 1", f"limit: {runs_per_day}")
    )
    for shipped, quick in QUICK_POLLING.items() if quick_polling else ():
        assert shipped in config, f"dagster.yaml no longer says {shipped!r}"
        config = config.replace(shipped, quick)
    import yaml

    if postgres_db:
        config += yaml.safe_dump({"storage": {"postgres": {"postgres_db": postgres_db}}})
    if run_launcher:
        config += yaml.safe_dump({"run_launcher": run_launcher})
    write_instance(dagster_home, config)


def write_instance(dagster_home: Path, config: str) -> None:
    """`config` as the dagster.yaml of `dagster_home`, and its storage created now: a daemon
    and a reader initialising a fresh instance at the same moment race on its schema
    migrations."""
    from dagster import DagsterInstance

    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(config)
    DagsterInstance.from_config(str(dagster_home)).dispose()


def open_instance() -> Any:
    """The instance of `$DAGSTER_HOME` (a DagsterInstance; close it, or use it in `with`).

    A folder without a dagster.yaml gets the shipped one, as `make demo` and README's
    Dagster UI steps set it up; a missing or unset DAGSTER_HOME is a ConfigError."""
    from dagster import DagsterInstance

    home = os.environ.get(DAGSTER_HOME)
    if not home:
        raise ConfigError(
            f"{DAGSTER_HOME} is not set: export it as the instance folder the daemon and "
            "webserver use (the demo's is .farm/demo/dagster)"
        )
    folder = Path(home)
    if not folder.is_dir():
        raise ConfigError(
            f"{DAGSTER_HOME}={home} is not a folder: point it at the daemon's instance folder"
        )
    if not (folder / "dagster.yaml").exists():
        prepare_dagster_home(folder)
    return DagsterInstance.get()
