"""`drone_images`: the photos that arrived, read once and recorded (DESIGN.md, Data flow)."""

import base64
import datetime as dt
import hashlib
import io
from collections.abc import Iterator

import polars as pl
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from farm_platform.assets.keys import DRONE_IMAGES
from farm_platform.partitions import image_key, image_partitions
from farm_platform.quality import checks
from farm_platform.quality import run as quality
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.pubsub import PubSubResource
from farm_platform.resources.warehouse import DRONE_IMAGES_TABLE, WarehouseResource

# A run stays minutes long: the sensor never asks for more, and UI backfills are chunked.
MAX_IMAGES_PER_RUN = 500
IMAGE_BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=MAX_IMAGES_PER_RUN)


class ArrivalMessage(Config):
    """The Pub/Sub message that announced an image, kept so the run can dead-letter it."""

    message_id: str = ""
    publish_time: str = ""
    generation: str = ""
    data_b64: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)


class DroneImagesConfig(Config):
    arrivals: dict[str, ArrivalMessage] = Field(
        default_factory=dict,
        description="partition key -> announcing message (set by drone_image_sensor)",
    )


def inspect_image(data: bytes | None) -> tuple[int, int, str | None]:
    """(width, height, error) of a raw photo; error says what is wrong, None when readable."""
    if data is None:
        return 0, 0, "object does not exist in the bucket"
    if not data:
        return 0, 0, "image is empty (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.width, image.height, None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return 0, 0, f"image is corrupt and cannot be decoded: {exc}"


DRONE_IMAGES_READABLE = "readable"


# A multi-asset (of one asset) so that the `readable` check's result can be reported per
# partition from a run over a partition range: Dagster expects no batch-level result.
@multi_asset(
    name="drone_images",
    specs=[
        AssetSpec(
            DRONE_IMAGES,
            group_name="images",
            kinds={"gcs"},
            description="Drone photos per date × position: size, content hash, decodability.",
        )
    ],
    check_specs=[
        AssetCheckSpec(
            DRONE_IMAGES_READABLE,
            asset=DRONE_IMAGES,
            partitions_def=image_partitions,
            description="The photo exists and decodes as an image. Per partition: uri, size, "
            "sha256, GCS generation and the announcing message.",
        ),
        checks.image_quality_spec(DRONE_IMAGES),
    ],
    partitions_def=image_partitions,
    backfill_policy=IMAGE_BACKFILL_POLICY,
    can_subset=True,
)
def drone_images(
    context: AssetExecutionContext,
    config: DroneImagesConfig,
    bucket: BucketResource,
    warehouse: WarehouseResource,
    pubsub: PubSubResource,
) -> Iterator[MaterializeResult]:
    keys = [image_key(partition_key) for partition_key in context.partition_keys]
    uris = [bucket.image_uri(key) for key in keys]
    payloads = bucket.read_many(uris)
    ingested_at = dt.datetime.now(dt.UTC)
    rows = []
    dead_letters = []
    for partition_key, key, uri, data in zip(
        context.partition_keys, keys, uris, payloads, strict=True
    ):
        width, height, error = inspect_image(data)
        arrival = config.arrivals.get(partition_key, ArrivalMessage())
        rows.append(
            {
                "position_id": key.position_id,
                "date": key.date,
                "image_uri": uri,
                "size_bytes": len(data or b""),
                "sha256": hashlib.sha256(data or b"").hexdigest(),
                "width": width or None,
                "height": height or None,
                "error": error,
                "ingested_at": ingested_at,
                "generation": arrival.generation or None,
                "message_id": arrival.message_id or None,
                "published_at": _timestamp(arrival.publish_time),
                "dagster_run_id": context.run.run_id,
            }
        )
        context.log_event(
            AssetCheckEvaluation(
                asset_key=DRONE_IMAGES,
                check_name=DRONE_IMAGES_READABLE,
                passed=error is None,
                partition=partition_key,
                metadata={
                    "uri": uri,
                    "size_bytes": len(data or b""),
                    "sha256": rows[-1]["sha256"],
                    "generation": arrival.generation,
                    "message_id": arrival.message_id,
                    "publish_time": arrival.publish_time,
                    "error": error or "",
                },
            )
        )
        if error:
            context.log.error(f"{partition_key}: {error}")
            if arrival.data_b64 or arrival.attributes:
                dead_letters.append((base64.b64decode(arrival.data_b64), arrival.attributes, error))
    frame = pl.DataFrame(rows, schema=DRONE_IMAGES_TABLE.polars_schema)
    warehouse.replace_rows("drone_images", frame)
    if dead_letters:
        pubsub.dead_letter(dead_letters)
    failed = frame.filter(pl.col("error").is_not_null())
    partitions = [(key.position_id, key.date) for key in keys]
    exists = pl.Series("exists", [data is not None for data in payloads], dtype=pl.Boolean())
    quality_result = checks.run_check(
        lambda: quality.check_drone_images(frame.with_columns(exists)),
        "drone_images",
        quality.IMAGE_QUALITY,
        quality.ERROR,
        partitions,
        context.log,
    )
    yield MaterializeResult(
        asset_key=DRONE_IMAGES,
        metadata={
            "images": len(keys),
            "unreadable": failed.height,
            # Dagster copies a ranged run's metadata to every partition: keep it small and
            # leave per-image details to the drone_images table.
            "unreadable_examples": MetadataValue.json(
                [
                    f"{row['date']}|{row['position_id']}: {row['error']}"
                    for row in failed.head(20).iter_rows(named=True)
                ]
            ),
            "bytes": int(frame["size_bytes"].sum()),
            "first_partition": context.partition_keys[0],
            "last_partition": context.partition_keys[-1],
        },
    )
    checks.record(context, warehouse, [quality_result])


def _timestamp(value: str) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None
