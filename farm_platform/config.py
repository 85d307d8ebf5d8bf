"""Every `FARM_*` variable: its name and its default (docs/configuration.md is generated
from this module), and the readers of the settings that are not a resource's.

How a setting reaches the code: the code locations' `definitions.py` fill the Dagster
resources' fields (`farm_platform.resources`) from the environment, through `EnvVar` or
once when the definitions load, and the per-run knobs are run config; the resources check
their fields with the validators in `farm_platform.config_values`. Command-line code reads
a setting with `value(NAME)` and the same validators, or the readers below (at call time,
never at import, so a test or a command can set the environment first).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

# The checkout: models/, dbt_project/ and workspace.yaml live here (editable install).
REPO_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE_FILE = REPO_ROOT / "workspace.yaml"
# The image pipeline's code location, as workspace.yaml names it.
IMAGE_LOCATION = "farm_platform"

FARM_BUCKET = "FARM_BUCKET"
FARM_WAREHOUSE = "FARM_WAREHOUSE"
FARM_GCP_PROJECT = "FARM_GCP_PROJECT"
FARM_SUBSCRIPTION = "FARM_SUBSCRIPTION"
PUBSUB_EMULATOR_HOST = "PUBSUB_EMULATOR_HOST"
STORAGE_EMULATOR_HOST = "STORAGE_EMULATOR_HOST"
DAGSTER_HOME = "DAGSTER_HOME"
# Not in the original contract: lets a test or a second farm use its own positions.csv.
FARM_FIELD_MAP = "FARM_FIELD_MAP"
DEFAULT_FIELD_MAP_PATH = REPO_ROOT / "dbt_project" / "seeds" / "positions.csv"
# The models folder (cards, weights, registry.json): a local folder or a bucket folder
# (gs://BUCKET/models), and where weights read from a bucket are kept (by sha256).
FARM_MODELS_DIR = "FARM_MODELS_DIR"
REPO_MODELS_DIR = REPO_ROOT / "models"
FARM_MODELS_CACHE = "FARM_MODELS_CACHE"
# First day of the trial's calendar; photos dated earlier are dead-lettered.
FARM_TRIAL_START_DATE = "FARM_TRIAL_START_DATE"
DEFAULT_TRIAL_START_DATE = "2026-01-01"
# The farm's time zone (IANA name): a photo's date is its local calendar day there, and
# day partitions and the report's schedule follow that calendar.
FARM_TRIAL_TIMEZONE = "FARM_TRIAL_TIMEZONE"
DEFAULT_TRIAL_TIMEZONE = "UTC"
# The severity_jump check warns when a position's mean grade moves more than this in a day.
FARM_MAX_SEVERITY_JUMP = "FARM_MAX_SEVERITY_JUMP"
DEFAULT_MAX_SEVERITY_JUMP = 1.5
# The Dagster UI's address, for the links commands print.
DAGSTER_WEBSERVER_URL = "DAGSTER_WEBSERVER_URL"
DEFAULT_WEBSERVER_URL = "http://localhost:3000"
# Origins (scheme://host[:port], comma-separated) whose pages may send the guarded webserver
# anything but a GET (farm_platform/webserver_guard.py); unset: the host the request names.
FARM_WEBSERVER_ALLOWED_ORIGINS = "FARM_WEBSERVER_ALLOWED_ORIGINS"
# Where daily reports go; default {FARM_BUCKET}/reports.
FARM_REPORTS = "FARM_REPORTS"

# Batching of arrivals into day runs (docs/ingest.md, "The sensor"): a run starts when this many
# photos of one day wait, or when the oldest nears the latency budget: a run's cost is
# mostly fixed, so a flight's photos are graded in few large runs, not one every few seconds.
FARM_RUN_MAX_PHOTOS = "FARM_RUN_MAX_PHOTOS"
DEFAULT_RUN_MAX_PHOTOS = 2000
FARM_GRADE_WITHIN_SECONDS = "FARM_GRADE_WITHIN_SECONDS"
DEFAULT_GRADE_WITHIN_SECONDS = 300.0
# An upper bound on the wait the budget gives (unset: none), for a farm that wants its runs
# sooner than the budget without changing it.
FARM_BATCH_MAX_WAIT_SECONDS = "FARM_BATCH_MAX_WAIT_SECONDS"
# ... or when its day has gone quiet: nothing announced for it in this long (the flight's
# upload is over). The tests' farms upload in one burst and set it to 1.
FARM_BATCH_QUIET_SECONDS = "FARM_BATCH_QUIET_SECONDS"
DEFAULT_BATCH_QUIET_SECONDS = 5.0
# Photos a run reads, decodes, grades and writes at a time: bounds a run's memory.
FARM_RUN_CHUNK_PHOTOS = "FARM_RUN_CHUNK_PHOTOS"
DEFAULT_RUN_CHUNK_PHOTOS = 64
# The production topology's Celery broker (redis://:password@host:port/0), for Dagster's
# CeleryRunLauncher and the run workers; set in their environment, never in a file.
FARM_CELERY_BROKER = "FARM_CELERY_BROKER"
# How often the ingest sensors tick (the model-registry sensor: three times as long).
# Dagster's sensor daemon loops every 5 s at best, so values under 5 act as 5.
FARM_SENSOR_INTERVAL_SECONDS = "FARM_SENSOR_INTERVAL_SECONDS"
DEFAULT_SENSOR_INTERVAL_SECONDS = 10
# A sensor run that has not finished after this many seconds, plus half a second per photo,
# is failed by Dagster's run monitoring (its worker may be dead) and its photos requeued.
FARM_RUN_TIMEOUT_SECONDS = "FARM_RUN_TIMEOUT_SECONDS"
DEFAULT_RUN_TIMEOUT_SECONDS = 600.0
RUN_TIMEOUT_SECONDS_PER_PHOTO = 0.5
# How long a writer waits for a DuckDB warehouse file another process holds.
FARM_WAREHOUSE_LOCK_SECONDS = "FARM_WAREHOUSE_LOCK_SECONDS"
DEFAULT_WAREHOUSE_LOCK_SECONDS = 120.0
# How often a photo is handed to a run before a failure dead-letters it. Between runs it
# waits, so that an outage of ten minutes costs no photo.
FARM_MAX_PHOTO_ATTEMPTS = "FARM_MAX_PHOTO_ATTEMPTS"
DEFAULT_MAX_PHOTO_ATTEMPTS = 4
# The wait before a failed photo's second run; each later wait is 4 times longer (30 s,
# 2 min, 8 min).
FARM_RETRY_BACKOFF_SECONDS = "FARM_RETRY_BACKOFF_SECONDS"
DEFAULT_RETRY_BACKOFF_SECONDS = 30.0
RETRY_BACKOFF_FACTOR = 4
# No photo gets another run that would start more than this long after its first failed
# run: it is dead-lettered instead.
FARM_RETRY_BUDGET_SECONDS = "FARM_RETRY_BUDGET_SECONDS"
DEFAULT_RETRY_BUDGET_SECONDS = 1800.0
# Where the models run: in the run's own process (`local`) or on an Open Inference Protocol
# model server at FARM_OIP_URL (`oip`; docs/model-server-and-gpu.md).
FARM_INFERENCE = "FARM_INFERENCE"
INFERENCE_MODES = ("local", "oip")
# One address, or several replicas' comma-separated: the client spreads requests over them.
FARM_OIP_URL = "FARM_OIP_URL"
# A bearer token: the server requires it when set, the client sends it when set.
FARM_OIP_TOKEN = "FARM_OIP_TOKEN"
# One request's limit; a request that times out or cannot connect is tried this many times.
FARM_OIP_TIMEOUT_SECONDS = "FARM_OIP_TIMEOUT_SECONDS"
DEFAULT_OIP_TIMEOUT_SECONDS = 60.0
OIP_ATTEMPTS = 3
# An external_oip model card (docs/models.md) may name variables of this prefix for its
# server's address and bearer token (`server.url_setting`, `server.token_setting`), so that
# neither is committed with the card; it may name no other variable.
EXTERNAL_OIP_SETTING_PREFIX = "FARM_EXTERNAL_OIP_"
# How often `models serve` checks the registry for a new active version (0: never).
DEFAULT_REGISTRY_WATCH_SECONDS = 5.0
# Where the models run (docs/model-server-and-gpu.md, "Inference on a GPU"): auto is
# CUDA when torch sees a GPU.
FARM_TORCH_DEVICE = "FARM_TORCH_DEVICE"
DEFAULT_TORCH_DEVICE = "auto"
# bfloat16 is only accepted for models whose recorded agreement with float32 passes the
# rule in farm_platform/ml/inference.py.
FARM_TORCH_DTYPE = "FARM_TORCH_DTYPE"
DEFAULT_TORCH_DTYPE = "float32"
TORCH_DTYPES = ("float32", "bfloat16")
# The decode pool's workers, and torch's CPU threads when the models run on CPU;
# default: the cores this process may use.
FARM_TORCH_THREADS = "FARM_TORCH_THREADS"
# OpenMP's own variable, read when torch loads: how torch's idle CPU threads wait between
# operations. ACTIVE spins (burning a core's CPU while the run's other threads, reading,
# decoding and writing, want it); PASSIVE sleeps. farm_platform.ml sets the default before
# torch loads, unless the environment sets it.
OMP_WAIT_POLICY = "OMP_WAIT_POLICY"
DEFAULT_OMP_WAIT_POLICY = "PASSIVE"
OMP_WAIT_POLICIES = ("ACTIVE", "PASSIVE")
# Kubernetes settings of the image runs' pods (deploy/README.md): a JSON
# object in the form of dagster-k8s's `dagster-k8s/config` run tag (GPU, CPU, node pool).
FARM_RUN_K8S_CONFIG = "FARM_RUN_K8S_CONFIG"
# How often the production topology's watchdog (farm_platform_dev.watchdog) asks each code
# server for its id.
FARM_WATCHDOG_INTERVAL_SECONDS = "FARM_WATCHDOG_INTERVAL_SECONDS"
DEFAULT_WATCHDOG_INTERVAL_SECONDS = 5.0
# How long one code server's answer is waited for (watchdog, stack up, stack status,
# code-server-check and the Kubernetes probe).
FARM_CODE_SERVER_CHECK_TIMEOUT_SECONDS = "FARM_CODE_SERVER_CHECK_TIMEOUT_SECONDS"
DEFAULT_CODE_SERVER_CHECK_TIMEOUT_SECONDS = 5.0
# Missed answers in a row before the watchdog replaces a code server.
FARM_WATCHDOG_FAILURES = "FARM_WATCHDOG_FAILURES"
DEFAULT_WATCHDOG_FAILURES = 3
# `models activate` refuses a version whose AP, AP50 or F1 (detector) or exact or within-one
# accuracy (grader) on a registered evaluation dataset is lower than the active version's by
# more than this (an absolute share, 0..1); `--force --reason` overrides it.
FARM_GATE_TOLERANCE = "FARM_GATE_TOLERANCE"
DEFAULT_GATE_TOLERANCE = 0.01
# The day treatment begins (YYYY-MM-DD); photos dated earlier form the pre-period: the
# report tests the arms' pre-treatment trends on them (placebo looks) and decides on the
# effect net of each position's pre-treatment trend. Unset: no pre-period. dbt reads it as
# its var treatment_start.
FARM_TREATMENT_START = "FARM_TREATMENT_START"

DEFAULT_SUBSCRIPTION = "drone_image.dagster"
DRONE_IMAGE_TOPIC = "drone_image"
DEAD_LETTER_TOPIC = "drone_image.dead"
# Dead letters are only useful if someone can read them: the stack creates this
# subscription so `farm-platform dlq list` has something to pull from.
DEAD_LETTER_SUBSCRIPTION = "drone_image.dead.inspect"

CONFIG_VARIABLES = (
    FARM_BUCKET,
    FARM_WAREHOUSE,
    FARM_GCP_PROJECT,
    FARM_SUBSCRIPTION,
    PUBSUB_EMULATOR_HOST,
    STORAGE_EMULATOR_HOST,
    DAGSTER_HOME,
    FARM_FIELD_MAP,
    FARM_REPORTS,
    FARM_RUN_MAX_PHOTOS,
    FARM_GRADE_WITHIN_SECONDS,
    FARM_BATCH_MAX_WAIT_SECONDS,
    FARM_BATCH_QUIET_SECONDS,
    FARM_RUN_CHUNK_PHOTOS,
    FARM_MAX_PHOTO_ATTEMPTS,
    FARM_RETRY_BACKOFF_SECONDS,
    FARM_RETRY_BUDGET_SECONDS,
    FARM_RUN_TIMEOUT_SECONDS,
    FARM_SENSOR_INTERVAL_SECONDS,
    FARM_WAREHOUSE_LOCK_SECONDS,
    FARM_MODELS_DIR,
    FARM_MODELS_CACHE,
    FARM_TRIAL_START_DATE,
    FARM_TRIAL_TIMEZONE,
    FARM_MAX_SEVERITY_JUMP,
    FARM_INFERENCE,
    FARM_OIP_URL,
    FARM_OIP_TOKEN,
    FARM_OIP_TIMEOUT_SECONDS,
    FARM_TORCH_DEVICE,
    FARM_TORCH_DTYPE,
    FARM_TORCH_THREADS,
    OMP_WAIT_POLICY,
    FARM_RUN_K8S_CONFIG,
    FARM_WEBSERVER_ALLOWED_ORIGINS,
    FARM_WATCHDOG_INTERVAL_SECONDS,
    FARM_CODE_SERVER_CHECK_TIMEOUT_SECONDS,
    FARM_WATCHDOG_FAILURES,
    FARM_GATE_TOLERANCE,
    FARM_TREATMENT_START,
)


class ConfigError(ValueError):
    """A missing or malformed setting; the message names the variable and what to do."""


DUCKDB_URL_PREFIX = "duckdb:///"


def duckdb_path(url: str) -> Path:
    """The file of a `duckdb:///…` warehouse URL, always absolute.

    Read like a `file:` URL: `duckdb:///srv/farm.duckdb` and `duckdb:////srv/farm.duckdb`
    (SQLAlchemy's spelling) are both `/srv/farm.duckdb`. A relative path would be resolved
    against the working folder of whichever process reads it (daemon, code server, CLI)
    and quietly make a second warehouse, so there is none.
    """
    if not url.startswith(DUCKDB_URL_PREFIX):
        raise ConfigError(
            f"FARM_WAREHOUSE={url!r}: a DuckDB URL is duckdb:/// followed by an absolute "
            "file path, e.g. duckdb:///srv/farm/warehouse.duckdb"
        )
    raw = url.removeprefix(DUCKDB_URL_PREFIX).lstrip("/")
    if not raw or raw == ":memory:":
        raise ConfigError(f"FARM_WAREHOUSE={url!r}: the warehouse must be a DuckDB file")
    return Path("/" + raw)


def field_map_path() -> Path:
    """`$FARM_FIELD_MAP`, else the shipped field map (dbt_project/seeds/positions.csv)."""
    return Path(os.environ.get(FARM_FIELD_MAP) or DEFAULT_FIELD_MAP_PATH)


def simulated_field_map_path() -> Path:
    """Where a simulated farm's positions.csv goes: `$FARM_FIELD_MAP`, else
    ./.farm/positions.csv. Never the tracked dbt seed, which is the real farm's."""
    return Path(os.environ.get(FARM_FIELD_MAP) or Path(".farm") / "positions.csv").resolve()


def parse_models_dir(location: Path | str) -> Path | str:
    """A models folder as the platform keeps it: the URL of a bucket folder
    (`gs://BUCKET/models`, no trailing slash) as a str, or a local Path (`file://` too)."""
    text = str(location)
    if text.startswith(("gs://", "gcs://")):
        return text.rstrip("/")
    return Path(text.removeprefix("file://"))


def models_dir() -> Path | str:
    """`$FARM_MODELS_DIR` (a folder or a bucket folder's URL), else the repository's models/."""
    return parse_models_dir(os.environ.get(FARM_MODELS_DIR) or REPO_MODELS_DIR)


def models_cache_dir() -> Path | None:
    """`$FARM_MODELS_CACHE`: where weights read from a bucket are kept (None: the default)."""
    raw = os.environ.get(FARM_MODELS_CACHE)
    return Path(raw) if raw else None


def absolute_models_dir() -> Path | str:
    """`models_dir()` with a local folder made absolute (for a process started elsewhere)."""
    location = models_dir()
    return location.resolve() if isinstance(location, Path) else location


def webserver_url() -> str:
    return os.environ.get(DAGSTER_WEBSERVER_URL) or DEFAULT_WEBSERVER_URL


def value(name: str) -> str | None:
    """`$name`, or None when it is unset or empty (a validator in config_values reads it)."""
    return os.environ.get(name) or None


def require(name: str, hint: str = "") -> str:
    """The variable's value, or ConfigError naming it (and `hint`: where a value comes from)."""
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{name} is not set" + (f": {hint}" if hint else ""))
    return value


def require_for_location(location: str, names: tuple[str, ...]) -> None:
    """Fail a code location's load, naming every missing variable, instead of letting each
    run fail later on Dagster's long resource-config error."""
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"code location {location} needs {', '.join(missing)} set in the environment of "
            "the webserver, daemon and code server (docs/configuration.md)"
        )


def bucket_url(value: str) -> str:
    """`value` if it is a bucket URL with a scheme (gs://, file://); else ConfigError.

    A bare name would be read as a local folder and silently fill the working directory."""
    if "://" not in value:
        raise ConfigError(
            f"{FARM_BUCKET}={value!r} has no scheme: use gs://{value} for a GCS bucket "
            f"(or file:///abs/path for a local folder)"
        )
    if not value.startswith(("gs://", "gcs://", "file://")):
        raise ConfigError(
            f"{FARM_BUCKET}={value!r}: only gs:// (Cloud Storage or its emulator) and file:// "
            "buckets are supported"
        )
    return value


@contextlib.contextmanager
def process_environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in this process's environment until the block ends; then the environment
    as it was (a command run in-process, as tests run it, must not leak its stack's
    settings into the next caller)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
