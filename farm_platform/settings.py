"""Names and defaults of the platform's configuration (DESIGN.md, Configuration).

Every variable is read through Dagster `EnvVar` in `definitions.py`; the CLI and the
local stack use the same names from here so that there is one spelling of each.
"""

from __future__ import annotations

from pathlib import Path

# The checkout: models/, dbt_project/ and workspace.yaml live here (editable install).
REPO_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE_FILE = REPO_ROOT / "workspace.yaml"

FARM_BUCKET = "FARM_BUCKET"
FARM_WAREHOUSE = "FARM_WAREHOUSE"
FARM_GCP_PROJECT = "FARM_GCP_PROJECT"
FARM_SUBSCRIPTION = "FARM_SUBSCRIPTION"
PUBSUB_EMULATOR_HOST = "PUBSUB_EMULATOR_HOST"
STORAGE_EMULATOR_HOST = "STORAGE_EMULATOR_HOST"
DAGSTER_HOME = "DAGSTER_HOME"
# Not in the original contract: lets a test or a second farm use its own positions.csv.
FARM_FIELD_MAP = "FARM_FIELD_MAP"
# Where daily reports go; default {FARM_BUCKET}/reports.
FARM_REPORTS = "FARM_REPORTS"

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
)
