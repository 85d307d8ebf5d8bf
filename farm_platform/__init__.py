"""farm_platform: drone photos of a crop trial → graded disease records → effectiveness reports."""

import warnings

# BackfillPolicy is beta in this Dagster release; batching image runs relies on it on purpose.
warnings.filterwarnings("ignore", message=".*backfill_policy.*is currently in beta")
# Per-partition check results from runs over partition ranges (assets/images.py).
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
