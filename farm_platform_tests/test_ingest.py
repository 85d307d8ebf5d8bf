"""The sensor's delivery protocol against the real Pub/Sub and GCS emulators."""

import datetime as dt
import io
import json
import time
import uuid

import pytest
from PIL import Image

from farm_platform.ingest import IngestCursor, IngestSettings, ingest_tick
from farm_platform.layout import ImageKey
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.pubsub import PubSubResource

POSITIONS = [f"P{i:03d}" for i in range(4)]
SETTINGS = IngestSettings(pull_timeout_seconds=1.0)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 60, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def farm(stack_env, fresh_subscription):
    """A unique date for this test, so its objects and partitions are its own."""
    pubsub = PubSubResource(project=stack_env.project, subscription=fresh_subscription.name)
    bucket = BucketResource(url=stack_env.bucket_url())
    date = dt.date(2026, 1, 1) + dt.timedelta(days=uuid.uuid4().int % 300)
    return pubsub, bucket, date, fresh_subscription


def upload(bucket: BucketResource, key: ImageKey, data: bytes | None = None) -> str:
    uri = bucket.image_uri(key)
    bucket.write(uri, data if data is not None else png())
    return uri


def publish(publisher, topic_path: str, payload, **attributes) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    publisher.publish(topic_path, data, **attributes).result(timeout=10)


def tick(pubsub, bucket, cursor=None, wait_seconds: float = 10.0):
    """One ingest tick; if nothing has arrived yet, tick again until something does.

    A synchronous pull may come back empty while a just-published message is still on its
    way; the sensor then simply finds it on its next tick, as these repeated ticks do.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        outcome = ingest_tick(
            cursor or IngestCursor(), pubsub, bucket, POSITIONS, POSITIONS, SETTINGS
        )
        if outcome.stats.pulled or time.monotonic() > deadline:
            return outcome


def redelivered(subscriber, subscription_path: str, ack_ids: list[str]) -> int:
    """Expire these messages' deadlines and count how many Pub/Sub delivers again.

    Acknowledged messages never come back. What comes back is released again at once, so
    the next tick receives it as a redelivery.
    """
    nack = {"subscription": subscription_path, "ack_deadline_seconds": 0}
    subscriber.modify_ack_deadline(request={**nack, "ack_ids": ack_ids})
    response = subscriber.pull(
        request={"subscription": subscription_path, "max_messages": 100}, timeout=3
    )
    again = [received.ack_id for received in response.received_messages]
    if again:
        subscriber.modify_ack_deadline(request={**nack, "ack_ids": again})
    return len(again)


def test_both_forms_of_one_upload_are_one_unit_of_work(farm, publisher, subscriber):
    pubsub, bucket, date, subscription = farm
    keys = [ImageKey(position, date) for position in POSITIONS]
    for key in keys:
        uri = upload(bucket, key)  # the emulator sends the storage notification
        publish(
            publisher, subscription.topic_path, {"image_uri": uri, "position_id": key.position_id}
        )

    outcome = tick(pubsub, bucket)

    assert outcome.stats.pulled == 8
    assert outcome.stats.new_images == 4 and outcome.stats.duplicates == 4
    assert len(outcome.batches) == 1  # one run for the day's four positions
    batch = outcome.batches[0]
    assert sorted(image.key for image in batch.images) == keys
    assert sorted(batch.rectangle.keys) == keys
    assert all(len(image.messages) == 2 for image in batch.images)
    assert len(outcome.cursor.pending_acks) == 8


def test_work_is_acknowledged_only_on_the_next_tick(farm, subscriber):
    pubsub, bucket, date, subscription = farm
    upload(bucket, ImageKey("P000", date))
    first = tick(pubsub, bucket)
    pending = first.cursor.pending_acks
    assert len(pending) == 1

    # Before the next tick the message is still unacknowledged: Pub/Sub would redeliver it.
    assert redelivered(subscriber, subscription.path, pending) == 1

    # The redelivered copy is recognised as the same image, whatever cursor the tick has.
    again = tick(pubsub, bucket, first.cursor)
    assert again.stats.new_images == 0 and again.stats.duplicates == 1
    # After the tick that follows a committed cursor, it is acknowledged for good.
    upload(bucket, ImageKey("P001", date))
    second = tick(pubsub, bucket, first.cursor)
    third = tick(pubsub, bucket, second.cursor)
    assert third.stats.acknowledged >= len(second.cursor.pending_acks)
    assert redelivered(subscriber, subscription.path, second.cursor.pending_acks) == 0


def test_a_tick_that_never_committed_is_redone_with_the_same_run_key(farm, subscriber):
    pubsub, bucket, date, subscription = farm
    for position in POSITIONS[:3]:
        upload(bucket, ImageKey(position, date))
    lost = tick(pubsub, bucket)  # the daemon dies before Dagster stores this tick
    # Its messages were never acknowledged: once their deadline passes, they come back.
    assert redelivered(subscriber, subscription.path, lost.cursor.pending_acks) == 3
    redone = tick(pubsub, bucket)  # same (empty) cursor as the lost tick had
    assert redone.stats.new_images == 3

    from farm_platform.sensors.drone_image_sensor import batch_run_request

    assert [batch_run_request(b).run_key for b in redone.batches] == [
        batch_run_request(b).run_key for b in lost.batches
    ]


def test_a_new_upload_of_the_same_photo_is_new_work(farm):
    pubsub, bucket, date, _ = farm
    key = ImageKey("P002", date)
    upload(bucket, key)
    first = tick(pubsub, bucket)
    upload(bucket, key, png() + b"")  # a new generation of the same object
    second = tick(pubsub, bucket, first.cursor)
    assert first.stats.new_images == 1
    assert second.stats.new_images == 1
    assert first.batches[0].images[0].generation != second.batches[0].images[0].generation


def test_every_bad_message_is_dead_lettered_with_its_reason(
    farm, publisher, subscriber, dead_letters, drain
):
    pubsub, bucket, date, subscription = farm
    day = date.isoformat()
    existing = upload(bucket, ImageKey("P003", date))
    bad = {
        "not JSON": (b"\x00\x01 not json", {"origin": "drone-7"}),
        "no image_uri": (json.dumps({"position_id": "P000"}).encode(), {}),
        "outside the layout": (
            json.dumps({"image_uri": f"{bucket.root}/P000/{day}/photo.jpg"}).encode(),
            {},
        ),
        "bad date": (
            json.dumps({"image_uri": f"{bucket.root}/P000/2026-02-30/image.png"}).encode(),
            {},
        ),
        "disagrees": (json.dumps({"image_uri": existing, "position_id": "P001"}).encode(), {}),
        "unknown position": (
            json.dumps({"image_uri": f"{bucket.root}/P404/{day}/image.png"}).encode(),
            {},
        ),
        "does not exist": (
            json.dumps({"image_uri": f"{bucket.root}/P000/{day}/image.png"}).encode(),
            {},
        ),
    }
    # Drain the notification for the one real upload first: this test is about bad messages.
    tick(pubsub, bucket)
    for data, attributes in bad.values():
        publish(publisher, subscription.topic_path, data, **attributes)

    outcome = tick(pubsub, bucket)

    assert outcome.stats.dead_lettered == len(bad)
    assert outcome.batches == []
    letters = drain(dead_letters)
    assert len(letters) == len(bad)
    by_data = {bytes(m.data): m for m in letters}
    for reason, (data, attributes) in bad.items():
        letter = by_data[data]  # the original data, byte for byte
        assert reason in letter.attributes["error"], (reason, letter.attributes["error"])
        for name, value in attributes.items():
            assert letter.attributes[name] == value  # the original attributes
    # Dead letters are stored, so the originals were acknowledged at once.
    assert redelivered(subscriber, subscription.path, outcome.acknowledged_ids) == 0


def test_dead_letters_can_be_listed_and_replayed_once_fixed(
    farm, publisher, subscriber, dead_letters, local_stack
):
    from farm_platform.dead_letters import (
        dead_letter_queue,
        error_of,
        list_dead_letters,
        original_attributes,
        replay_dead_letters,
    )

    pubsub, bucket, date, subscription = farm
    key = ImageKey("P404", date)  # a position the field map does not know yet
    uri = upload(bucket, key)
    publish(publisher, subscription.topic_path, {"image_uri": uri}, drone_id="d-9")
    deadline = time.monotonic() + 15
    rejected = 0
    while rejected < 2 and time.monotonic() < deadline:
        rejected += tick(pubsub, bucket).stats.dead_lettered
    assert rejected == 2  # the storage notification and the drone message

    queue = dead_letter_queue(local_stack.project, dead_letters.rsplit("/", 1)[1])
    listed = list_dead_letters(queue)
    assert len(listed) == 2
    assert all("unknown position 'P404'" in error_of(letter) for letter in listed)
    # Listing does not consume them.
    assert len(list_dead_letters(queue)) == 2

    # The cause is fixed (P404 joins the field map); replay puts the originals back.
    replayed = replay_dead_letters(queue)
    assert len(replayed) == 2
    drone_letter = next(letter for letter in replayed if "eventType" not in letter.attributes)
    assert original_attributes(drone_letter) == {"drone_id": "d-9"}
    outcome = ingest_tick(
        IngestCursor(), pubsub, bucket, [*POSITIONS, "P404"], [*POSITIONS, "P404"], SETTINGS
    )
    deadline = time.monotonic() + 15
    while outcome.stats.pulled < 2 and time.monotonic() < deadline:
        more = ingest_tick(
            outcome.cursor, pubsub, bucket, [*POSITIONS, "P404"], [*POSITIONS, "P404"], SETTINGS
        )
        outcome.stats.pulled += more.stats.pulled
        outcome.batches += more.batches
        outcome.cursor = more.cursor
    assert [image.key for batch in outcome.batches for image in batch.images] == [key]
    assert list_dead_letters(queue) == []
