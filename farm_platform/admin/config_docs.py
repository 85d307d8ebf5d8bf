"""docs/configuration.md, generated from `farm_platform.config.CONFIG_VARIABLES` and the
resources' `VARIABLES`.

    python -m farm_platform.admin.config_docs --write    # regenerate docs/configuration.md
    python -m farm_platform.admin.config_docs            # print it

A setting's row is its name, what it means and its default. The meaning is the entry in
`MEANINGS` below, else the comment block right above the setting's name in config.py (so a
setting added there with a comment is documented by regenerating alone). The default is
the entry's own text, else config's `DEFAULT_<NAME without FARM_>` constant, else "—".
`farm_platform_tests/unit/test_docs.py` fails when the page and CONFIG_VARIABLES disagree.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from farm_platform import config

PAGE = config.REPO_ROOT / "docs" / "configuration.md"
REGENERATE = "python -m farm_platform.admin.config_docs --write"

# name → (meaning, default as shown or None to take config's DEFAULT_* constant).
MEANINGS: dict[str, tuple[str, str | None]] = {
    config.FARM_BUCKET: (
        "fsspec URL of the image bucket: `gs://NAME`, or `file:///abs/path`. Required",
        "—",
    ),
    config.FARM_WAREHOUSE: (
        "`duckdb:///abs/path/farm.duckdb` (an absolute path; `duckdb:////abs/…` reads the "
        "same) or `postgresql://user@host:port/db`. Required",
        "—",
    ),
    config.FARM_GCP_PROJECT: ("project of the Pub/Sub topics. Required by the image location", "—"),
    config.FARM_SUBSCRIPTION: ("the subscription the ingest sensor pulls", None),
    config.PUBSUB_EMULATOR_HOST: (
        "the Google Pub/Sub client's emulator variable",
        "unset (real GCP)",
    ),
    config.STORAGE_EMULATOR_HOST: (
        "the Google Cloud Storage clients' emulator variable (gcsfs reads it too)",
        "unset (real GCP)",
    ),
    config.DAGSTER_HOME: ("the Dagster instance folder (its `dagster.yaml`)", "—"),
    config.FARM_FIELD_MAP: (
        "the field map (`positions.csv` form): the sensor trusts it, and the `positions` "
        "asset copies it into the warehouse table dbt reads. Replace it by renaming a "
        "complete file over it",
        "`dbt_project/seeds/positions.csv`",
    ),
    config.FARM_REPORTS: ("where the daily reports go", "`$FARM_BUCKET/reports`"),
    config.FARM_RUN_MAX_PHOTOS: (
        "photos of one day that make a full batch: a run starts at once",
        None,
    ),
    config.FARM_GRADE_WITHIN_SECONDS: (
        "a photo's latency budget while its day's flight is still uploading: a run grows "
        "until its oldest photo has waited this less one sensor interval, then grades "
        "(a photo is graded within the budget plus one run). Larger: fewer, larger runs "
        "and less CPU per photo; smaller: photos graded sooner, at more CPU per photo",
        None,
    ),
    config.FARM_BATCH_MAX_WAIT_SECONDS: (
        "an upper bound on how long a photo waits for its batch to grow (below the budget's)",
        "unset (the budget decides)",
    ),
    config.FARM_BATCH_QUIET_SECONDS: (
        "a day with nothing announced for this long has finished uploading: its waiting "
        "photos run at once. Raise it for drones that pause longer between uploads",
        None,
    ),
    config.FARM_RUN_CHUNK_PHOTOS: (
        "photos a run reads, grades and writes at a time (its memory)",
        None,
    ),
    config.FARM_MAX_PHOTO_ATTEMPTS: (
        "runs a photo is handed to before a failure dead-letters it",
        None,
    ),
    config.FARM_RUN_TIMEOUT_SECONDS: (
        "a sensor run is failed by run monitoring after this, plus 0.5 s per photo, and its "
        "photos requeued",
        None,
    ),
    config.FARM_SENSOR_INTERVAL_SECONDS: (
        "how often the ingest and requeue sensors tick (the model-registry sensor: 3×); "
        "Dagster's sensor loop runs every 5 s at best",
        None,
    ),
    config.FARM_WAREHOUSE_LOCK_SECONDS: (
        "how long a writer waits for a DuckDB file another process holds",
        None,
    ),
    config.FARM_MODELS_DIR: (
        "the models folder (`registry.json`, cards, weights) of the code location, the model "
        "server and `farm-platform models`: a local folder or `gs://BUCKET/models`",
        "`models/` in the checkout",
    ),
    config.FARM_MODELS_CACHE: (
        "where weights read from a bucket are kept, one folder per sha256",
        "`$XDG_CACHE_HOME/farm_platform/models` (`~/.cache/…`)",
    ),
    config.FARM_TRIAL_START_DATE: (
        "the trial's first day partition (photos dated earlier are dead-lettered); set it in "
        "the environment of the daemon, webserver and code servers",
        None,
    ),
    config.FARM_TRIAL_TIMEZONE: (
        "the farm's IANA time zone: a photo's path date is its day there, `captured_at` must "
        "fall on it (a time without a zone is farm time), and the day partitions, 'today' "
        "and the 06:00 report schedule follow it",
        None,
    ),
    config.FARM_MAX_SEVERITY_JUMP: (
        "the `severity_jump` check warns when a position's mean grade moves more than this "
        "in a day",
        None,
    ),
    config.FARM_INFERENCE: (
        "where runs infer: `local` (in the run) or `oip` (on the model server)",
        "`local`",
    ),
    config.FARM_OIP_URL: (
        "the model server: `grpc://host:port` (its `--grpc-port`) or `http://host:port`; or "
        "several replicas, comma-separated, taken in turn. Required when `FARM_INFERENCE=oip`",
        "—",
    ),
    config.FARM_OIP_TOKEN: (
        "bearer token: the model server requires it on every call but the health checks when "
        "set in its environment; the client sends it when set in its own. Keep it in the "
        "environment or a secret store, never in a file of this repository",
        "—",
    ),
    config.FARM_OIP_TIMEOUT_SECONDS: ("one model-server request's limit (3 tries)", None),
    config.FARM_TORCH_DEVICE: (
        "where the models run: `auto` (CUDA when torch sees a GPU, else CPU), `cpu`, `cuda` or "
        "`cuda:N`; a CUDA device that is not there is an error",
        None,
    ),
    config.FARM_TORCH_DTYPE: (
        "`float32` or `bfloat16` (only for weights whose recorded agreement meets the rule: "
        "docs/model-server-and-gpu.md)",
        None,
    ),
    config.FARM_TORCH_THREADS: (
        "the decode pool's workers, and torch's CPU threads when the models run on CPU (1 on CUDA)",
        "the cores the process may use",
    ),
    config.OMP_WAIT_POLICY: (
        "OpenMP's variable: how torch's idle CPU threads wait between operations, "
        "`PASSIVE` (sleep) or `ACTIVE` (spin, burning CPU the run's other threads want)",
        None,
    ),
    config.FARM_RUN_K8S_CONFIG: (
        "on Kubernetes: a JSON object in dagster-k8s's `dagster-k8s/config` form put on every "
        "image run as that tag, plus `farm/device: gpu` when it asks for a GPU",
        "unset (no tag)",
    ),
    config.FARM_TREATMENT_START: (
        "the day treatment begins (YYYY-MM-DD): earlier photos form the pre-period; the "
        "report tests the arms' pre-treatment trends on them (placebo looks) and decides on "
        "the effect net of each position's pre-treatment trend. dbt reads it as its var "
        "`treatment_start` (mart `trend_adjusted_effect`)",
        "unset (no pre-period)",
    ),
}

# How a setting reaches the code besides the resources of `resource_routes` (appended there).
ROUTES: dict[str, str] = {
    config.FARM_BUCKET: "`bucket` resource `url`; analytics: `reports` resource `bucket_url`",
    config.FARM_WAREHOUSE: "`warehouse` resource `url` (both code locations)",
    config.FARM_GCP_PROJECT: "`pubsub` resource `project`",
    config.FARM_SUBSCRIPTION: "`pubsub` resource `subscription`",
    config.PUBSUB_EMULATOR_HOST: "the Google clients read it themselves",
    config.STORAGE_EMULATOR_HOST: "the Google clients and gcsfs read it themselves",
    config.DAGSTER_HOME: "Dagster reads it itself",
    config.OMP_WAIT_POLICY: "OpenMP reads it when torch loads; importing `farm_platform.ml` "
    "sets the default first unless the environment sets it (a bad value is refused when a "
    "model loads)",
    config.FARM_FIELD_MAP: "`field_map` resource `path`; dbt's build and commands: "
    "`config.field_map_path()`",
    config.FARM_REPORTS: "analytics: `reports` resource `reports_url`",
    config.FARM_SENSOR_INTERVAL_SECONDS: "the sensors' minimum interval, set when "
    "`images/sensors.py` builds them",
    config.FARM_WAREHOUSE_LOCK_SECONDS: "`warehouse` resource `lock_timeout_seconds`",
    config.FARM_MODELS_DIR: "`models` resource `models_dir`; commands: "
    "`admin.configured.configured_registry()`",
    config.FARM_MODELS_CACHE: "`models` resource `models_cache` (the sensors' and the "
    "report's registry reads); commands: `admin.configured.configured_registry()`",
    config.FARM_TRIAL_START_DATE: "`trial_calendar` resource `start_date`, read once when the "
    "definitions load: the day partitions and the sensor's tick (which dates are valid)",
    config.FARM_TRIAL_TIMEZONE: "`trial_calendar` resource `timezone`, read once when the "
    "definitions load: the day partitions, the report's schedule and the sensor's tick (a "
    "photo's day)",
    config.FARM_WEBSERVER_ALLOWED_ORIGINS: "the guarded webserver "
    "(`farm_platform/webserver_guard.py`, not Dagster code)",
    config.FARM_WATCHDOG_INTERVAL_SECONDS: "the production topology's watchdog (a command)",
    config.FARM_CODE_SERVER_CHECK_TIMEOUT_SECONDS: "the watchdog and the `stack` commands",
    config.FARM_WATCHDOG_FAILURES: "the production topology's watchdog (a command)",
    config.FARM_GATE_TOLERANCE: "`farm-platform models activate` (a command)",
    config.FARM_TREATMENT_START: "analytics: `trial_calendar` resource `treatment_start`, "
    "dbt's var `treatment_start` in the dbt asset's build",
}
# Per-run knobs: run config of image_pipeline whose default is a resource field.
RUN_CONFIG_FIELDS = {
    config.FARM_RUN_CHUNK_PHOTOS: "chunk_photos",
    config.FARM_MAX_SEVERITY_JUMP: "max_severity_jump",
}


def resource_routes() -> dict[str, str]:
    """Each setting a resource of the image location carries: where it lands."""
    from farm_platform.resources.inference import InferenceResource
    from farm_platform.resources.ingest_policy import IngestPolicyResource

    routes = {}
    for key, resource in (
        ("inference", InferenceResource),
        ("ingest_policy", IngestPolicyResource),
    ):
        for field, name in resource.VARIABLES.items():
            routes[name] = f"`{key}` resource `{field}`"
            if name in ROUTES:
                routes[name] += f"; {ROUTES[name]}"
            if name in RUN_CONFIG_FIELDS:
                routes[name] = (
                    f"run config `{RUN_CONFIG_FIELDS[name]}` of `image_pipeline` (the sensor "
                    f"writes it into each run; default: {routes[name]})"
                )
    return routes


def route_rows() -> list[tuple[str, str]]:
    """(name, how it reaches the code) of every CONFIG_VARIABLES entry, in its order."""
    routes = {**ROUTES, **resource_routes()}
    missing = [name for name in config.CONFIG_VARIABLES if name not in routes]
    if missing:
        raise ConfigDocsError(
            f"{', '.join(missing)}: say how it reaches the code (a resource's VARIABLES, or "
            f"ROUTES in {__name__}), then regenerate: {REGENERATE}"
        )
    return [(name, routes[name]) for name in config.CONFIG_VARIABLES]


# Variables outside CONFIG_VARIABLES that an operator still meets (tools, the local stack).
OTHER_VARIABLES = (
    (
        "DAGSTER_WEBSERVER_URL",
        "the Dagster UI's address, for the links commands print",
        "`http://localhost:3000`",
    ),
    ("FARM_STACK_DIR", "where `farm-platform stack` keeps pids and logs", "`./.farm/stack`"),
    (
        "FARM_DUCKDB_MEMORY_LIMIT",
        "DuckDB's `memory_limit` in the dbt profile the analytics definitions write "
        "(`farm_platform/analytics/dbt_env.py`)",
        "`1GB`",
    ),
    (
        "FARM_PG_PASSWORD, FARM_REDIS_PASSWORD",
        "the production topology's passwords (`stack up --production`): read from the "
        "environment, never written to a file",
        "—",
    ),
)


class ConfigDocsError(ValueError):
    """A setting the page cannot describe; the message names it and what to add."""


def _comment_above(name: str, source_lines: list[str]) -> str:
    """The comment block right above `NAME = "NAME"` in config.py, joined into one line."""
    for index, line in enumerate(source_lines):
        if line.startswith(f"{name} = "):
            comment: list[str] = []
            for above in reversed(source_lines[:index]):
                if not above.startswith("#"):
                    break
                comment.insert(0, above.lstrip("# ").strip())
            return " ".join(comment)
    return ""


def _default(name: str) -> str:
    value = getattr(config, "DEFAULT_" + name.removeprefix("FARM_"), None)
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, Path):
        return f"`{value.relative_to(config.REPO_ROOT)}`"
    return f"`{value}`"


def settings_rows() -> list[tuple[str, str, str]]:
    """(name, meaning, default) of every CONFIG_VARIABLES entry, in its order."""
    source_lines = inspect.getsource(config).splitlines()
    rows = []
    for name in config.CONFIG_VARIABLES:
        meaning, default = MEANINGS.get(name, (_comment_above(name, source_lines), None))
        if not meaning:
            raise ConfigDocsError(
                f"{name} has no meaning to document: put a comment right above `{name} = ` in "
                f"farm_platform/config.py (or an entry in MEANINGS in {__name__}), then "
                f"regenerate: {REGENERATE}"
            )
        rows.append((name, meaning, default or _default(name)))
    return rows


def render() -> str:
    """The whole page."""

    def table(rows: list[tuple[str, str, str]] | tuple[tuple[str, str, str], ...]) -> list[str]:
        lines = ["| variable | meaning | default |", "| --- | --- | --- |"]
        return lines + [f"| `{name}` | {meaning} | {default} |" for name, meaning, default in rows]

    return "\n".join(
        [
            "# Configuration",
            "",
            f"<!-- Generated from farm_platform.config.CONFIG_VARIABLES by `{REGENERATE}`;",
            "     do not edit by hand. -->",
            "",
            "Every runtime setting, read from the environment of the daemon, the webserver, the",
            "code servers and the run workers (on Kubernetes: `deploy/k8s/configmap-env.yaml`",
            "and the Secret `farm-platform-secrets`). A malformed value is an error that names",
            "the variable; a code location refuses to load without its required ones and names",
            "them.",
            "",
            *table(settings_rows()),
            "",
            "## How a setting reaches the code",
            "",
            "The code locations' `definitions.py` fill Dagster resources from the environment",
            "when they load: a text setting as `EnvVar` (the launchpad names the variable and",
            "never shows a token's value), a number read and checked then. The `inference` and",
            "`ingest_policy` resources (`farm_platform/resources/`) carry every setting of",
            "where the models run and of how the sensors batch and retry; a run's chunk size",
            "and severity-jump bound are its own run config, which the sensor fills. Library",
            "code (`farm_platform/ml/`, `ingest.py`, `retries.py`) takes these values as",
            "arguments; commands outside Dagster read them through `config.value` and the",
            "validators in `farm_platform/config_values.py`. A change takes effect when the",
            "code location is reloaded.",
            "",
            "| variable | reaches the code through |",
            "| --- | --- |",
            *[f"| `{name}` | {route} |" for name, route in route_rows()],
            "",
            "## Other variables",
            "",
            "Outside CONFIG_VARIABLES (tools, dbt's profile, the local stack), met by operators:",
            "",
            *table(OTHER_VARIABLES),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write", action="store_true", help=f"write {PAGE.relative_to(config.REPO_ROOT)}"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        PAGE.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
