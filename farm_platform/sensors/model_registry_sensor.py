"""`model_registry_sensor`: materialize a model asset when its active version changes.

Activating a version (models/registry.json) then shows as a new data version on the
model asset, and Dagster marks every partition graded with the old version stale.
"""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from farm_platform.assets.keys import MODEL_ASSETS
from farm_platform.assets.models import MODEL_VERSIONS
from farm_platform.resources.models import ModelRegistryResource

DATA_VERSION_TAG = "dagster/data_version"


@sensor(
    name="model_registry_sensor",
    asset_selection=[*MODEL_ASSETS.values(), MODEL_VERSIONS],
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Records a model asset's new data version when registry.json activates one.",
)
def model_registry_sensor(
    context: SensorEvaluationContext, models: ModelRegistryResource
) -> RunRequest | SkipReason:
    active = models.registry().active_versions()
    changed, transitions = [], []
    for model_id, asset_key in MODEL_ASSETS.items():
        latest = context.instance.fetch_materializations(asset_key, limit=1).records
        record = latest[0] if latest else None
        materialization = record.asset_materialization if record else None
        recorded = materialization.tags.get(DATA_VERSION_TAG) if materialization else None
        if recorded != active.get(model_id):
            changed.append(asset_key)
            # The record's storage id makes v1 -> v2 -> v1 -> v2 four distinct run keys.
            since = record.storage_id if record else 0
            transitions.append(f"{model_id}:{since}:{recorded}->{active.get(model_id)}")
    if not changed:
        return SkipReason("every model asset records its active version")
    # The warehouse's model_versions table follows the registry too.
    return RunRequest(run_key=";".join(transitions), asset_selection=[*changed, MODEL_VERSIONS])
