"""`requeue_failed_photos`: the photos of a failed run go back to the arrival queue.

De-duplication must never hide a photo whose rows are missing: when a run that the
drone_image_sensor requested fails, its photos become pending again and the sensor hands
them to a new run. After `FARM_MAX_PHOTO_ATTEMPTS` runs a photo is dead-lettered with the
last failure, and forgotten by the queue, so replaying the dead letter is new work.
"""

from dagster import (
    DefaultSensorStatus,
    RunFailureSensorContext,
    run_failure_sensor,
)

from farm_platform import settings
from farm_platform.arrivals import ArrivalQueue
from farm_platform.resources.pubsub import PubSubResource
from farm_platform.resources.warehouse import WarehouseResource

RUN_KEY_TAG = "dagster/run_key"


@run_failure_sensor(
    name="requeue_failed_photos",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Puts the photos of a failed image run back in the arrival queue (bounded "
    "attempts), then dead-letters them.",
)
def requeue_failed_photos(
    context: RunFailureSensorContext, warehouse: WarehouseResource, pubsub: PubSubResource
) -> None:
    run_key = context.dagster_run.tags.get(RUN_KEY_TAG, "")
    if not run_key.startswith("photos-"):
        return
    max_attempts = int(
        settings.env_number(settings.FARM_MAX_PHOTO_ATTEMPTS, settings.DEFAULT_MAX_PHOTO_ATTEMPTS)
    )
    queue = ArrivalQueue(warehouse)
    requeued, exhausted = queue.requeue(run_key, max_attempts)
    reason = (context.failure_event.message or "run failed").splitlines()[0]
    context.log.info(f"run {context.dagster_run.run_id} failed: {requeued} photo(s) requeued")
    if exhausted.height:
        queue.give_up(
            exhausted,
            pubsub,
            f"photo failed in {max_attempts} runs; last run {context.dagster_run.run_id}: "
            + reason,
        )
        context.log.warning(f"{exhausted.height} photo(s) dead-lettered after {max_attempts} runs")
