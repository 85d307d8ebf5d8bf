"""Writing a simulated farm to a bucket and announcing its photos on Pub/Sub."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm_platform import config
from farm_platform.layout import ImageKey, bucket_filesystem, join, raw_image_uri
from farm_platform.resources.field_map import write_field_map

from .farm import (
    FarmConfig,
    LeafTruth,
    SimulatedImage,
    field_map,
    simulate_images,
    truth_frames,
)

GROUND_TRUTH_DIR = "ground_truth"
DRONE_ID = "sim-drone-1"
# Simulated flights start at 09:00 UTC and take this long per position.
_FLIGHT_START = dt.time(9, 0, tzinfo=dt.UTC)
_SECONDS_PER_POSITION = 37


class DroneMessagePublisher:
    """Publishes drone-controller messages (docs/contracts.md, Messages on `drone_image`).

    A thin wrapper over `google.cloud.pubsub_v1.PublisherClient`, which talks to
    the emulator by itself when PUBSUB_EMULATOR_HOST is set. `publish` only
    queues; `flush` waits until every queued message is accepted and raises the
    first failure. `client` may be injected (tests, shared clients).
    """

    def __init__(
        self, project: str, topic: str = config.DRONE_IMAGE_TOPIC, client: Any | None = None
    ) -> None:
        if client is None:
            from google.cloud import pubsub_v1

            client = pubsub_v1.PublisherClient()
        self._client = client
        self.topic_path: str = client.topic_path(project, topic)
        self._futures: list[Future[str]] = []

    def publish(
        self, image_uri: str, key: ImageKey, drone_id: str, captured_at: dt.datetime
    ) -> None:
        """Queue one message. `image_uri` is gs://… in production; a file:// URI for local
        buckets (the platform resolves both through fsspec)."""
        data = {
            "image_uri": image_uri,
            "position_id": key.position_id,
            "date": key.date_str,
            "captured_at": captured_at.isoformat(),
            "drone_id": drone_id,
        }
        self._futures.append(
            self._client.publish(self.topic_path, json.dumps(data).encode("utf-8"))
        )

    def flush(self) -> int:
        """Wait for all queued messages; return how many were published."""
        futures, self._futures = self._futures, []
        for future in futures:
            future.result()
        return len(futures)


# Positions one drone flies in a day, from _FLIGHT_START: 1,200 at 37 s end before 22:00.
POSITIONS_PER_DRONE = 1200


@dataclass
class SimulationSummary:
    images: int
    leaves: int
    bucket_url: str
    field_map_path: Path | None
    truth_url: str
    published: int
    elapsed_seconds: float


def _object_uri(bucket_url: str, key: ImageKey) -> str:
    """The URI a drone would announce: the bucket URL's own scheme, file:// for plain paths."""
    if "://" not in bucket_url:
        return raw_image_uri(Path(os.path.abspath(bucket_url)).as_uri(), key)
    return raw_image_uri(bucket_url, key)


def captured_at(key: ImageKey, position_index: int) -> dt.datetime:
    """When the photo was taken: each drone flies POSITIONS_PER_DRONE positions from the
    flight's start, so a farm of any size is photographed within its day (the sensor
    dead-letters a photo captured on another day; one drone for 5,000 positions would have
    flown past midnight)."""
    start = dt.datetime.combine(key.date, _FLIGHT_START)
    flown = position_index % POSITIONS_PER_DRONE
    return start + dt.timedelta(seconds=_SECONDS_PER_POSITION * flown)


def write_farm(
    config: FarmConfig,
    bucket_url: str,
    field_map_path: str | Path | None,
    publisher: DroneMessagePublisher | None = None,
    truth_url: str | None = None,
    images: Iterable[SimulatedImage] | None = None,
) -> SimulationSummary:
    """Simulate `config` into `bucket_url` (gs://…, emulator, file://… or a plain folder).

    Photos go to {bucket_url}/{position_id}/{date}/image.png, the truth to
    {truth_url}/leaves.parquet and effect.parquet (default {bucket_url}/ground_truth;
    elsewhere keeps a notified bucket to one notification per photo), the field map
    (if `field_map_path`) to that CSV, and one drone-controller message per photo
    to `publisher` right after its upload. The field map is written first, so a
    sensor that sees a message already knows the position. `images`: `config`'s photos
    rendered already (a benchmark renders them before its clock); by default rendered here.
    """
    started = time.perf_counter()
    fs, root = bucket_filesystem(bucket_url)
    positions = field_map(config)
    index_of = {p.position_id: i for i, p in enumerate(positions)}
    map_path = None
    if field_map_path is not None:
        map_path = write_field_map(positions, field_map_path)

    records: list[tuple[ImageKey, tuple[LeafTruth, ...]]] = []
    for image in simulate_images(config) if images is None else images:
        fs.pipe_file(join(root, image.key.relative_path()), image.png)
        records.append((image.key, image.leaves))
        if publisher is not None:
            publisher.publish(
                _object_uri(bucket_url, image.key),
                image.key,
                DRONE_ID,
                captured_at(image.key, index_of[image.key.position_id]),
            )
    published = publisher.flush() if publisher is not None else 0

    truth_fs, truth_root = bucket_filesystem(truth_url or join(bucket_url, GROUND_TRUTH_DIR))
    for name, frame in truth_frames(records, config).items():
        with truth_fs.open(join(truth_root, f"{name}.parquet"), "wb") as handle:
            frame.write_parquet(handle)

    return SimulationSummary(
        images=len(records),
        leaves=sum(len(leaves) for _, leaves in records),
        bucket_url=bucket_url,
        field_map_path=map_path,
        truth_url=truth_url or join(bucket_url, GROUND_TRUTH_DIR),
        published=published,
        elapsed_seconds=time.perf_counter() - started,
    )
