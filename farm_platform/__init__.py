"""farm_platform: drone photos of a crop trial → graded disease records → effectiveness reports."""

import warnings

# BackfillPolicy is beta in this Dagster release; one run per day of a backfill relies on it.
warnings.filterwarnings("ignore", message=".*backfill_policy.*is currently in beta")
# Check results per day partition (quality/checks.py) need partitioned check specs.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
