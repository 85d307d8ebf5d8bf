"""Turning `drone_image` Pub/Sub messages into image arrivals (docs/contracts.md, Messages).

Two forms arrive on the same subscription:
1. drone controller: JSON data `{"image_uri": "gs://bucket/P/D/image.png", ...}` with
   optional `position_id`, `date`, `captured_at`, `drone_id` that must agree with the path;
2. Cloud Storage notification: attributes `eventType=OBJECT_FINALIZE`, `bucketId`,
   `objectId`, `payloadFormat` (and `objectGeneration`).

`parse_message` is pure: it checks everything that can be checked from the message and
the field map. Whether the object exists is the sensor's job (it needs the bucket).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass

from farm_platform.layout import (
    ImageKey,
    LayoutError,
    is_raw_image_path,
    parse_date,
    parse_raw_image_path,
)

OBJECT_FINALIZE = "OBJECT_FINALIZE"
# A drone controller's message is a few hundred bytes of JSON; anything much larger is not
# one, and parsing it would cost the whole tick.
MAX_DRONE_MESSAGE_BYTES = 64 * 1024
# GCS object generations are microsecond timestamps: ASCII digits, 20 at most.
GENERATION_PATTERN = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class ImageArrival:
    """A valid message: this photo is (said to be) in the bucket."""

    key: ImageKey
    image_uri: str
    generation: str | None  # GCS object generation when the message carries it
    form: str  # "drone_controller" or "gcs_notification"


@dataclass(frozen=True)
class Ignored:
    """A message that is valid but asks for no work (e.g. a crop PNG was written)."""

    reason: str


@dataclass(frozen=True)
class Rejected:
    """A message that cannot become an image partition; it goes to the dead-letter topic."""

    error: str


ParsedMessage = ImageArrival | Ignored | Rejected


@dataclass(frozen=True)
class TrialFacts:
    """What a message is checked against: the field map's positions (and the map's path,
    which a rejection names), the first and last date that are day partitions, and the
    farm's time zone (a `captured_at` without a zone is the farm's local time)."""

    known_positions: Container[str]
    valid_dates: tuple[dt.date, dt.date]
    timezone: str
    field_map: str


def relative_object_path(image_uri: str, bucket_root: str) -> str:
    """The path of `image_uri` under `bucket_root`, or LayoutError if it lies elsewhere."""
    root = bucket_root.rstrip("/") + "/"
    if not image_uri.startswith(root):
        raise LayoutError(f"image {image_uri!r} is outside the farm bucket {bucket_root!r}")
    return image_uri[len(root) :]


def parse_message(
    data: bytes,
    attributes: Mapping[str, str],
    bucket_root: str,
    trial: TrialFacts,
) -> ParsedMessage:
    """Classify one message; never raises for bad input, returns Rejected with the reason."""
    try:
        # GCS always sets eventType; a drone message that merely carries a bucketId
        # attribute is still a drone message.
        if "eventType" in attributes:
            return _parse_notification(attributes, bucket_root, trial)
        return _parse_drone_message(data, bucket_root, trial)
    except LayoutError as exc:
        return Rejected(str(exc))
    except Exception as exc:  # noqa: BLE001 - a poison message must not stop the sensor
        return Rejected(f"message cannot be parsed ({type(exc).__name__}: {exc})"[:500])


def _parse_notification(
    attributes: Mapping[str, str],
    bucket_root: str,
    trial: TrialFacts,
) -> ParsedMessage:
    event_type = attributes.get("eventType")
    if event_type != OBJECT_FINALIZE:
        # Deletes and metadata updates are normal bucket traffic, not errors.
        return Ignored(f"storage event {event_type!r} is not {OBJECT_FINALIZE}")
    bucket_id, object_id = attributes.get("bucketId"), attributes.get("objectId")
    if not bucket_id or not object_id:
        return Rejected("storage notification without bucketId/objectId attributes")
    image_uri = f"gs://{bucket_id}/{object_id}"
    try:
        relative = relative_object_path(image_uri, bucket_root)
    except LayoutError:
        return Ignored(f"object {image_uri} is outside the farm bucket {bucket_root}")
    if not is_raw_image_path(relative):
        return Ignored(f"object {image_uri} is not a raw drone image")
    key = parse_raw_image_path(relative)
    _check_known(key, trial)
    generation = attributes.get("objectGeneration")
    if generation is not None and not GENERATION_PATTERN.fullmatch(generation):
        return Rejected(
            f"bad objectGeneration {generation[:40]!r}: expected the object's generation, "
            "ASCII digits"
        )
    return ImageArrival(key, image_uri, generation, "gcs_notification")


def _parse_drone_message(
    data: bytes,
    bucket_root: str,
    trial: TrialFacts,
) -> ParsedMessage:
    if len(data) > MAX_DRONE_MESSAGE_BYTES:
        return Rejected(
            f"message data is {len(data)} bytes, over the {MAX_DRONE_MESSAGE_BYTES} of a "
            'drone message {"image_uri": ...}'
        )
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Rejected(f'message data is not JSON ({exc}); expected {{"image_uri": ...}}')
    except RecursionError:
        return Rejected('message data is JSON nested too deep; expected {"image_uri": ...}')
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        return Rejected(f'message data is unusable JSON ({exc}); expected {{"image_uri": ...}}')
    if not isinstance(payload, dict):
        return Rejected('message data is JSON but not an object; expected {"image_uri": ...}')
    image_uri = payload.get("image_uri")
    if not isinstance(image_uri, str) or not image_uri:
        return Rejected(
            'message has no image_uri: expected {"image_uri": "gs://bucket/P/D/image.png"}'
        )
    relative = relative_object_path(image_uri, bucket_root)
    key = parse_raw_image_path(relative)
    if "position_id" in payload and payload["position_id"] != key.position_id:
        return Rejected(
            f"position_id {payload['position_id']!r} disagrees with the path {image_uri!r}"
        )
    if "date" in payload and _as_date(payload["date"]) != key.date:
        return Rejected(f"date {payload['date']!r} disagrees with the path {image_uri!r}")
    if "captured_at" in payload:
        _check_captured_at(payload["captured_at"], key.date, trial.timezone)
    _check_known(key, trial)
    return ImageArrival(key, image_uri, None, "drone_controller")


def _as_date(value: object) -> dt.date:
    if not isinstance(value, str):
        raise LayoutError(f"bad date {value!r}: expected YYYY-MM-DD")
    return parse_date(value)


def _check_captured_at(value: object, path_date: dt.date, zone: str) -> None:
    """An ISO 8601 time on the path's date, on the farm's calendar (FARM_TRIAL_TIMEZONE;
    a time without a zone is the farm's local time)."""
    from zoneinfo import ZoneInfo

    try:
        captured = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise LayoutError(f"bad captured_at {str(value)[:60]!r}: expected ISO 8601") from None
    local = (
        captured.replace(tzinfo=ZoneInfo(zone))
        if captured.tzinfo is None
        else captured.astimezone(ZoneInfo(zone))
    )
    if local.date() != path_date:
        raise LayoutError(
            f"captured_at {str(value)[:60]!r} is on {local.date()} in the trial's time zone "
            f"{zone}, not on the path's date {path_date}: fix the drone's clock or the path"
        )


def _check_known(key: ImageKey, trial: TrialFacts) -> None:
    if key.position_id not in trial.known_positions:
        raise LayoutError(
            f"unknown position {key.position_id!r}: it is not in the field map "
            f"({trial.field_map}); add it there, then replay this message "
            f"(`farm-platform dlq replay --match {key.position_id}`)"
        )
    first, last = trial.valid_dates
    if not first <= key.date <= last:
        raise LayoutError(
            f"bad date {key.date_str}: outside the trial's partitions {first} .. {last}"
        )
