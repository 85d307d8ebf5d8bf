"""`drone_image_sensor`: Pub/Sub messages → runs of day partitions with their photo lists.

The protocol (held messages, the arrival queue, de-duplication) lives in
`farm_platform.ingest` and `farm_platform.arrivals`; this module turns its claims into
Dagster run requests.
"""

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from farm_platform import settings
from farm_platform.arrivals import ArrivalQueue, Claim
from farm_platform.assets.keys import IMAGE_PIPELINE
from farm_platform.ingest import IngestCursor, IngestSettings, ingest_tick
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.field_map import FieldMapResource
from farm_platform.resources.pubsub import PubSubResource
from farm_platform.resources.warehouse import WarehouseResource

# Run tags: how many photos a run was handed (benchmarks and tests count runs by it), and
# Dagster's run timeout, enforced by run monitoring (dagster.yaml).
PHOTOS_TAG = "farm/photos"
MAX_RUNTIME_TAG = "dagster/max_runtime"
# requeue_failed_photos re-batches a failed sensor run's photos: no Dagster run retry too.
MAX_RETRIES_TAG = "dagster/max_retries"


def run_timeout_seconds(photos: int) -> int:
    base = settings.env_number(
        settings.FARM_RUN_TIMEOUT_SECONDS, settings.DEFAULT_RUN_TIMEOUT_SECONDS
    )
    return int(base + settings.RUN_TIMEOUT_SECONDS_PER_PHOTO * photos)


def claim_run_request(claim: Claim) -> RunRequest:
    """One run of the claim's day partition over exactly its photos."""
    from farm_platform.assets.inference import photo_run_config

    return RunRequest(
        run_key=claim.run_key,
        partition_key=claim.date.isoformat(),
        asset_selection=list(IMAGE_PIPELINE),
        tags={
            PHOTOS_TAG: str(len(claim.positions)),
            MAX_RUNTIME_TAG: str(run_timeout_seconds(len(claim.positions))),
            MAX_RETRIES_TAG: "0",
        },
        run_config=photo_run_config(claim.positions),
    )


@sensor(
    name="drone_image_sensor",
    asset_selection=list(IMAGE_PIPELINE),
    minimum_interval_seconds=10,
    default_status=DefaultSensorStatus.RUNNING,
    description="Pulls drone_image messages; new photos become runs of their day partition.",
)
def drone_image_sensor(
    context: SensorEvaluationContext,
    pubsub: PubSubResource,
    bucket: BucketResource,
    field_map: FieldMapResource,
    warehouse: WarehouseResource,
) -> SensorResult:
    outcome = ingest_tick(
        IngestCursor.from_json(context.cursor),
        pubsub,
        bucket,
        ArrivalQueue(warehouse),
        list(field_map.positions()),
        IngestSettings.from_env(),
    )
    summary = outcome.stats.summary()
    (context.log.error if outcome.stats.pubsub_error else context.log.info)(summary)
    return SensorResult(
        run_requests=[claim_run_request(claim) for claim in outcome.claims],
        cursor=outcome.cursor.to_json(),
        skip_reason=summary if outcome.stats.pubsub_error and not outcome.claims else None,
    )
