"""`drone_image_sensor`: Pub/Sub messages → batched runs over new image partitions.

The protocol (ack on the next tick, dead letters, de-duplication) lives in
`farm_platform.ingest`; this module turns its outcome into Dagster requests.
"""

import hashlib

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from farm_platform.assets.keys import IMAGE_PIPELINE
from farm_platform.ingest import ImageBatch, IngestCursor, ingest_tick
from farm_platform.partitions import (
    POSITION_DIMENSION,
    image_partition_key,
    partition_range_tags,
    position_partitions,
)
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.field_map import FieldMapResource
from farm_platform.resources.pubsub import PubSubResource

IMAGES_TAG = "farm/images"


def batch_run_request(batch: ImageBatch) -> RunRequest:
    """One run over exactly the batch's partitions, keyed by the images' identities."""
    identities = sorted(image.identity for image in batch.images)
    run_key = "images-" + hashlib.sha1("\n".join(identities).encode()).hexdigest()
    arrivals = {
        str(image_partition_key(image.key)): {
            **{
                name: value
                for name, value in image.messages[0].to_config().items()
                if name != "ack_id"
            },
            "generation": image.generation,
        }
        for image in batch.images
    }
    return RunRequest(
        run_key=run_key,
        asset_selection=list(IMAGE_PIPELINE),
        tags={
            **partition_range_tags(batch.rectangle.first, batch.rectangle.last),
            IMAGES_TAG: str(len(batch.images)),
        },
        run_config={"ops": {"drone_images": {"config": {"arrivals": arrivals}}}},
    )


@sensor(
    name="drone_image_sensor",
    asset_selection=list(IMAGE_PIPELINE),
    minimum_interval_seconds=10,
    default_status=DefaultSensorStatus.RUNNING,
    description="Pulls drone_image messages; new photos become batched pipeline runs.",
)
def drone_image_sensor(
    context: SensorEvaluationContext,
    pubsub: PubSubResource,
    bucket: BucketResource,
    field_map: FieldMapResource,
) -> SensorResult:
    registered = list(context.instance.get_dynamic_partitions(POSITION_DIMENSION))
    outcome = ingest_tick(
        IngestCursor.from_json(context.cursor),
        pubsub,
        bucket,
        list(field_map.positions()),
        registered,
    )
    context.log.info(outcome.stats.summary())
    return SensorResult(
        run_requests=[batch_run_request(batch) for batch in outcome.batches],
        dynamic_partitions_requests=(
            [position_partitions.build_add_request(outcome.new_positions)]
            if outcome.new_positions
            else []
        ),
        cursor=outcome.cursor.to_json(),
    )
