"""One tick of drone-image ingestion: Pub/Sub messages in, batched image work out.

Delivery protocol (DESIGN.md, Delivery):
- a message that asks for work is acknowledged only on the *next* tick: its ack id rides
  in the sensor cursor, which Dagster stores in the same write that reserves the tick's
  run requests. A tick that dies before that write leaves its messages unacknowledged, and
  Pub/Sub delivers them again; a tick that dies after it is resumed by Dagster.
- ignored messages, duplicates of already-recorded images, and dead letters (once the
  dead-letter publish is confirmed) are acknowledged at once.
- an image's identity is its partition plus the object's generation, so the same message
  delivered twice (or a notification and a drone message for the same upload) is one unit
  of work, while a re-upload of the same photo is new work.
"""

from __future__ import annotations

import json
import time
from collections.abc import Container, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from farm_platform.batching import PartitionRectangle, plan_rectangles
from farm_platform.layout import ImageKey
from farm_platform.messages import Ignored, ImageArrival, Rejected, parse_message
from farm_platform.partitions import image_partition_key, valid_dates
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.pubsub import PubSubResource, PulledMessage


@dataclass(frozen=True)
class IngestSettings:
    max_messages_per_tick: int = 5000
    pull_batch: int = 1000
    pull_timeout_seconds: float = 2.0
    # Keep a tick well inside Dagster's sensor evaluation timeout (60 s by default).
    tick_budget_seconds: float = 30.0
    max_images_per_run: int = 500
    dedup_window_seconds: float = 2 * 24 * 3600
    # Long enough for the next tick to acknowledge pending messages, short enough that a
    # tick that dies before Dagster stores it has its messages redelivered soon.
    ack_extension_seconds: int = 120
    object_lookup_threads: int = 16


@dataclass
class IngestCursor:
    pending_acks: list[str] = field(default_factory=list)
    # image identity -> unix time the tick that requested its work committed
    seen: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> IngestCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(list(data.get("pending_acks", [])), dict(data.get("seen", {})))

    def to_json(self) -> str:
        return json.dumps({"pending_acks": self.pending_acks, "seen": self.seen})


@dataclass
class NewImage:
    key: ImageKey
    image_uri: str
    generation: str
    messages: list[PulledMessage]

    @property
    def identity(self) -> str:
        return image_identity(self.key, self.generation)


@dataclass(frozen=True)
class ImageBatch:
    """New images that one run processes: exactly the partitions of `rectangle`."""

    rectangle: PartitionRectangle
    images: tuple[NewImage, ...]


@dataclass
class IngestStats:
    pulled: int = 0
    new_images: int = 0
    duplicates: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    acknowledged: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.pulled / self.seconds if self.seconds else 0.0
        return (
            f"pulled {self.pulled} messages ({rate:.0f}/s): {self.new_images} new images, "
            f"{self.duplicates} duplicates, {self.ignored} ignored, "
            f"{self.dead_lettered} dead-lettered; acknowledged {self.acknowledged}"
        )


@dataclass
class IngestOutcome:
    batches: list[ImageBatch]
    new_positions: list[str]
    cursor: IngestCursor
    stats: IngestStats
    # Messages this tick acknowledged itself: ignored ones, duplicates, dead-lettered ones.
    acknowledged_ids: list[str] = field(default_factory=list)


def image_identity(key: ImageKey, generation: str) -> str:
    return f"{image_partition_key(key)}@{generation}"


def ingest_tick(
    cursor: IngestCursor,
    pubsub: PubSubResource,
    bucket: BucketResource,
    field_map_positions: Sequence[str],
    registered_positions: Sequence[str],
    settings: IngestSettings | None = None,
) -> IngestOutcome:
    settings = settings or IngestSettings()
    started = time.monotonic()
    stats = IngestStats()

    # The cursor we were given is committed: the work its messages asked for is recorded.
    pubsub.acknowledge(cursor.pending_acks)
    stats.acknowledged += len(cursor.pending_acks)
    now = time.time()
    seen = {
        identity: stamp
        for identity, stamp in cursor.seen.items()
        if now - stamp < settings.dedup_window_seconds
    }

    messages = _pull(pubsub, settings, started)
    stats.pulled = len(messages)
    known = frozenset(field_map_positions)
    classified = _classify(messages, bucket, known, settings)

    ack_now: list[str] = []
    dead_letters: list[tuple[PulledMessage, str]] = []
    new_images: dict[str, NewImage] = {}
    for message, parsed, generation in classified:
        if isinstance(parsed, Ignored):
            stats.ignored += 1
            ack_now.append(message.ack_id)
        elif isinstance(parsed, Rejected):
            dead_letters.append((message, parsed.error))
        elif generation is None:
            dead_letters.append(
                (message, f"object {parsed.image_uri} does not exist in the bucket")
            )
        else:
            identity = image_identity(parsed.key, generation)
            if identity in seen:
                stats.duplicates += 1
                ack_now.append(message.ack_id)
            elif identity in new_images:
                stats.duplicates += 1
                new_images[identity].messages.append(message)
            else:
                new_images[identity] = NewImage(parsed.key, parsed.image_uri, generation, [message])

    if dead_letters:
        pubsub.dead_letter(
            [(message.data, message.attributes, error) for message, error in dead_letters]
        )
        stats.dead_lettered = len(dead_letters)
        ack_now.extend(message.ack_id for message, _ in dead_letters)

    # Two uploads of one photo in one tick: the newest generation wins, the other is
    # superseded work, acknowledged with it.
    latest: dict[ImageKey, NewImage] = {}
    for image in new_images.values():
        current = latest.get(image.key)
        if current is None or _generation_order(image) > _generation_order(current):
            if current is not None:
                image.messages.extend(current.messages)
            latest[image.key] = image
        else:
            current.messages.extend(image.messages)

    new_positions = [
        position for position in field_map_positions if position not in set(registered_positions)
    ]
    order = [*registered_positions, *new_positions]
    rectangles = plan_rectangles(latest.keys(), order, settings.max_images_per_run)
    batches = [
        ImageBatch(rectangle, tuple(latest[key] for key in rectangle.keys))
        for rectangle in rectangles
    ]

    pending = [message.ack_id for image in latest.values() for message in image.messages]
    if pending:
        pubsub.extend_deadline(pending, settings.ack_extension_seconds)
    if ack_now:
        pubsub.acknowledge(ack_now)
        stats.acknowledged += len(ack_now)
    for image in new_images.values():
        seen[image.identity] = now
    stats.new_images = len(latest)
    stats.seconds = time.monotonic() - started
    return IngestOutcome(batches, new_positions, IngestCursor(pending, seen), stats, ack_now)


def _pull(pubsub: PubSubResource, settings: IngestSettings, started: float) -> list[PulledMessage]:
    messages: list[PulledMessage] = []
    while len(messages) < settings.max_messages_per_tick:
        if time.monotonic() - started > settings.tick_budget_seconds / 2:
            break
        wanted = min(settings.pull_batch, settings.max_messages_per_tick - len(messages))
        batch = pubsub.pull(wanted, settings.pull_timeout_seconds)
        if not batch:
            break
        messages.extend(batch)
    return messages


def _classify(
    messages: Sequence[PulledMessage],
    bucket: BucketResource,
    known_positions: Container[str],
    settings: IngestSettings,
) -> list[tuple[PulledMessage, ImageArrival | Ignored | Rejected, str | None]]:
    """Parse every message; look up the objects that drone-controller messages name."""
    dates = valid_dates()
    parsed = [
        parse_message(message.data, message.attributes, bucket.root, known_positions, dates)
        for message in messages
    ]

    def generation(item: ImageArrival | Ignored | Rejected) -> str | None:
        if not isinstance(item, ImageArrival):
            return None
        if item.generation:
            # A storage notification is the bucket's own word that this generation exists.
            return item.generation
        info = bucket.info(item.image_uri)
        return info.generation if info else None

    with ThreadPoolExecutor(settings.object_lookup_threads) as pool:
        generations = list(pool.map(generation, parsed))
    return list(zip(messages, parsed, generations, strict=True))


def _generation_order(image: NewImage) -> tuple[int, str]:
    # GCS generations are increasing integers; other stand-ins only break ties.
    return (int(image.generation), "") if image.generation.isdigit() else (0, image.generation)
