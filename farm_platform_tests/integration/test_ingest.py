"""The sensor's delivery protocol against the real Pub/Sub and GCS emulators, with the
arrival queue in a real DuckDB warehouse."""

import datetime as dt
import io
import itertools
import json
import time

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, build_sensor_context
from dagster._core.utils import make_new_run_id
from PIL import Image

from farm_platform import config
from farm_platform.images.sensors import RUN_KEY_TAG, TICK_TAG, claim_run_request
from farm_platform.ingest.arrivals import Arrival, ArrivalQueue
from farm_platform.ingest.retries import Requeued, RetryPolicy, requeue_run
from farm_platform.ingest.tick import IngestCursor, IngestSettings, ingest_tick
from farm_platform.layout import ImageKey
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.pubsub import PubSubResource, PulledMessage
from farm_platform.resources.warehouse import WarehouseResource

POSITIONS = [f"P{i:03d}" for i in range(4)]
# Claim pending photos at once: the tests of holding arrivals set their own limits.
SETTINGS = IngestSettings(pull_timeout_seconds=1.0, max_wait_seconds=0)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 60, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def queue(tmp_path) -> ArrivalQueue:
    return ArrivalQueue(WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse.duckdb'}"))


# Each test's day is its own: the session's bucket is shared, and reconciliation lists a
# whole day. A random pick among 300 days collided (two tests drew one day). Two days apart,
# as a test may use the next day too; August to October 2026 lies in the trial, in the past
# (a future photo is a dead letter), and no other test module uses it.
_DAYS_OF_THIS_PROCESS = (
    dt.date(2026, 8, 1) + dt.timedelta(days=n) for n in itertools.count(step=2)
)


@pytest.fixture
def farm(stack_env, fresh_subscription, queue):
    """A unique date for this test, so its objects are its own; its own arrival queue."""
    pubsub = PubSubResource(project=stack_env.project, subscription=fresh_subscription.name)
    bucket = BucketResource(url=stack_env.bucket_url())
    date = next(_DAYS_OF_THIS_PROCESS)
    return pubsub, bucket, date, fresh_subscription


def upload(bucket: BucketResource, key: ImageKey, data: bytes | None = None) -> str:
    uri = bucket.image_uri(key)
    bucket.write(uri, data if data is not None else png())
    return uri


def publish(publisher, topic_path: str, payload, **attributes) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    publisher.publish(topic_path, data, **attributes).result(timeout=10)


def tick(
    pubsub,
    bucket,
    queue,
    cursor=None,
    wait_seconds: float = 10.0,
    settings=SETTINGS,
    known_positions=lambda: POSITIONS,
):
    """One ingest tick; if nothing has arrived yet, tick again until something does.

    A synchronous pull may come back empty while a just-published message is still on its
    way; the sensor then simply finds it on its next tick, as these repeated ticks do.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        outcome = ingest_tick(
            cursor or IngestCursor(), pubsub, bucket, queue, known_positions, settings
        )
        if outcome.stats.pulled or time.monotonic() > deadline:
            return outcome


class WatchedPulls:
    """The subscription, with `on_pull(messages)` called on each pull's messages before the
    tick gets them (the moment between a tick's pull and its use of them)."""

    def __init__(self, pubsub: PubSubResource, on_pull) -> None:
        self._pubsub, self._on_pull = pubsub, on_pull

    def pull(self, *args, **kwargs) -> list[PulledMessage]:
        messages = self._pubsub.pull(*args, **kwargs)
        self._on_pull(messages)
        return messages

    def __getattr__(self, name: str):
        return getattr(self._pubsub, name)


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


def claimed(outcome) -> list[str]:
    return sorted(position for claim in outcome.claims for position in claim.positions)


def test_a_day_is_quiet_after_the_window_its_setting_gives(farm, queue, monkeypatch):
    """FARM_BATCH_QUIET_SECONDS: an upload ~2 s old has ended its day's flight with a 1 s
    window (its photo runs at once); with the default 5 s it is still uploading."""
    pubsub, bucket, date, _ = farm
    monkeypatch.setenv(config.FARM_BATCH_QUIET_SECONDS, "0")
    with pytest.raises(config.ConfigError, match="FARM_BATCH_QUIET_SECONDS"):
        IngestSettings.from_env()

    monkeypatch.setenv(config.FARM_BATCH_QUIET_SECONDS, "1")
    upload(bucket, ImageKey("P000", date))
    time.sleep(2)
    quiet = tick(pubsub, bucket, queue, settings=IngestSettings.from_env())
    assert claimed(quiet) == ["P000"]

    monkeypatch.delenv(config.FARM_BATCH_QUIET_SECONDS)
    upload(bucket, ImageKey("P001", date))
    time.sleep(2)
    busy = tick(pubsub, bucket, queue, quiet.cursor, settings=IngestSettings.from_env())
    assert busy.stats.new_images == 1 and busy.claims == []


def test_both_forms_of_one_upload_are_one_unit_of_work(farm, queue, publisher):
    pubsub, bucket, date, subscription = farm
    keys = [ImageKey(position, date) for position in POSITIONS]
    for key in keys:
        uri = upload(bucket, key)  # the emulator sends the storage notification
        publish(
            publisher, subscription.topic_path, {"image_uri": uri, "position_id": key.position_id}
        )

    outcome = tick(pubsub, bucket, queue)
    while outcome.stats.pulled < 8:  # the two forms may arrive over two ticks
        more = tick(pubsub, bucket, queue, outcome.cursor)
        outcome.stats.pulled += more.stats.pulled
        outcome.stats.duplicates += more.stats.duplicates
        outcome.stats.new_images += more.stats.new_images
        outcome.claims += more.claims

    assert outcome.stats.new_images == 4 and outcome.stats.duplicates == 4
    assert len(outcome.claims) == 1  # one run for the day's four positions
    assert outcome.claims[0].date == date
    assert claimed(outcome) == POSITIONS
    # Every message is held until the run is stored: eight ack ids wait in the queue.
    assert len(queue.held_ack_ids()) == 8
    # The run's tick tag fits the UI's runs table (it cut the whole summary at "…0 new").
    tag = claim_run_request(outcome.claims[0], outcome.stats.run_tag()).tags[TICK_TAG]
    assert tag == "4 new, 4 dup, 0 dead-lettered of 8"


def test_a_position_the_field_map_gains_while_a_tick_pulls_is_known_to_that_tick(
    farm, queue, tmp_path
):
    """A farm adds a position to its field map, then its drone announces the first photo
    of it. A tick that started before the map changed and pulls the announcement after it
    records the photo: the tick asks the field map after pulling. (Asked before, it
    dead-lettered it: a 9-position day that followed a 4-position one lost 5 photos so
    in CI, 2026-12-05.)"""
    from farm_platform.resources.field_map import FieldMapResource, Position, write_field_map

    pubsub, bucket, date, _ = farm
    path = tmp_path / "positions.csv"

    def write_map(position_ids: list[str]) -> None:
        write_field_map([Position(p, "control", 0.0, 0.0, 0.0) for p in position_ids], path)

    write_map(POSITIONS)
    field_map = FieldMapResource(path=str(path))
    upload(bucket, ImageKey("P777", date))
    grown = []

    def grow_before_the_first_messages_reach_the_tick(messages: list) -> None:
        if messages and not grown:
            write_map([*POSITIONS, "P777"])
            grown.append(True)

    growing = WatchedPulls(pubsub, grow_before_the_first_messages_reach_the_tick)
    outcome = tick(growing, bucket, queue, known_positions=field_map.positions)
    assert grown, "the photo's notification never arrived"
    assert (outcome.stats.dead_lettered, outcome.stats.new_images) == (0, 1)
    assert claimed(outcome) == ["P777"]


def test_a_tick_whose_field_map_cannot_be_read_fails_and_holds_back_no_message(
    farm, queue, tmp_path
):
    """The field map is missing: the tick fails with the error that says what to do, and
    what it had pulled is released at once, not held for the subscription's 60 s ack
    deadline: once the map is back, the next ticks record the photo within seconds."""
    from farm_platform.resources.field_map import (
        FieldMapError,
        FieldMapResource,
        Position,
        write_field_map,
    )

    pubsub, bucket, date, _ = farm
    path = tmp_path / "positions.csv"
    field_map = FieldMapResource(path=str(path))
    upload(bucket, ImageKey("P000", date))

    pulled: list = []
    counting = WatchedPulls(pubsub, pulled.extend)
    deadline = time.monotonic() + 10
    while not pulled and time.monotonic() < deadline:
        with pytest.raises(FieldMapError, match="does not exist: run `farm-platform simulate`"):
            ingest_tick(IngestCursor(), counting, bucket, queue, field_map.positions, SETTINGS)
    assert len(pulled) == 1, "the photo's notification never arrived"

    write_field_map([Position("P000", "control", 0.0, 0.0, 0.0)], path)
    outcome = tick(pubsub, bucket, queue, wait_seconds=20, known_positions=field_map.positions)
    assert outcome.stats.new_images == 1 and claimed(outcome) == ["P000"]


def test_messages_are_acknowledged_only_after_their_run_is_stored(farm, queue, subscriber):
    pubsub, bucket, date, subscription = farm
    upload(bucket, ImageKey("P000", date))
    first = tick(pubsub, bucket, queue)
    held = queue.held_ack_ids()
    assert len(held) == 1 and len(first.claims) == 1

    # Before the next tick the message is still unacknowledged: Pub/Sub would redeliver it.
    assert redelivered(subscriber, subscription.path, held) == 1

    # The next tick starts from the stored cursor: the run exists, so the redelivered copy
    # is a duplicate, acknowledged, and the held message is released.
    second = tick(pubsub, bucket, queue, first.cursor)
    assert second.stats.new_images == 0 and second.stats.duplicates == 1
    assert second.claims == []
    assert queue.held_ack_ids() == []
    assert redelivered(subscriber, subscription.path, held) == 0


def test_a_claim_whose_tick_was_never_stored_is_claimed_again(farm, queue, subscriber):
    pubsub, bucket, date, subscription = farm
    for position in POSITIONS[:3]:
        upload(bucket, ImageKey(position, date))
    lost = tick(pubsub, bucket, queue)  # the daemon dies before Dagster stores this tick
    assert claimed(lost) == POSITIONS[:3]
    # Its messages were never acknowledged: once their deadline passes, they come back.
    assert redelivered(subscriber, subscription.path, queue.held_ack_ids()) == 3

    redone = tick(pubsub, bucket, queue)  # the cursor before the lost tick: no claims
    assert redone.stats.new_images == 0  # the queue remembers the photos
    assert claimed(redone) == POSITIONS[:3]  # and hands them to a new run
    assert [c.run_key for c in redone.claims] != [c.run_key for c in lost.claims]

    tick(pubsub, bucket, queue, redone.cursor, wait_seconds=0)
    assert queue.held_ack_ids() == []
    assert queue.pending_count() == 0


def arrivals_of(date: dt.date, positions: list[str], now: dt.datetime) -> list[Arrival]:
    return [
        Arrival(
            ImageKey(position, date),
            "1",
            f"gs://farm/{position}/{date}/image.png",
            PulledMessage(f"ack-{position}", position, now.isoformat(), b"{}", {}),
        )
        for position in positions
    ]


def test_arrivals_wait_for_a_full_batch_the_maximum_wait_or_a_quiet_day(queue):
    date, hour = dt.date(2026, 6, 2), dt.timedelta(hours=1)
    now = dt.datetime(2026, 6, 2, 8, tzinfo=dt.UTC)
    queue.record(arrivals_of(date, POSITIONS[:2], now), now)
    assert queue.claim(max_photos=3, max_wait=hour, now=now) == []  # two wait for a third

    later = now + dt.timedelta(seconds=10)
    queue.record(arrivals_of(date, POSITIONS[2:], later), later)
    (full,) = queue.claim(max_photos=3, max_wait=hour, now=later)
    assert full.positions == tuple(POSITIONS[:3])  # first come, first claimed
    assert queue.waiting_count() == 1  # the fourth keeps waiting

    other_day = date + dt.timedelta(days=1)
    assert queue.claim(3, hour, later, busy_dates={date}) == []  # still uploading
    (quiet,) = queue.claim(3, hour, later, busy_dates=set())  # the flight is over
    assert (quiet.date, quiet.positions) == (date, (POSITIONS[3],))

    queue.record(arrivals_of(other_day, ["P000"], later), later)
    assert queue.claim(3, hour, later + hour - dt.timedelta(seconds=1)) == []
    (waited,) = queue.claim(3, hour, later + hour)
    assert waited.date == other_day


def test_a_new_upload_of_the_same_photo_is_new_work(farm, queue):
    pubsub, bucket, date, _ = farm
    key = ImageKey("P002", date)
    upload(bucket, key)
    first = tick(pubsub, bucket, queue)
    upload(bucket, key, png() + b"")  # a new generation of the same object
    second = tick(pubsub, bucket, queue, first.cursor)
    assert first.stats.new_images == 1
    assert second.stats.new_images == 1
    generations = queue.warehouse.query("SELECT generation FROM image_arrivals")["generation"]
    assert generations.n_unique() == 2
    assert claimed(second) == ["P002"]


def test_the_cursor_stays_small_at_10000_photos_a_day(queue):
    """The cursor holds run keys, not photos: measured at 10,000 photos of one day."""
    date = dt.date(2026, 6, 1)
    now = dt.datetime.now(dt.UTC)
    arrivals = arrivals_of(date, [f"P{i:05d}" for i in range(10_000)], now)
    assert queue.record(arrivals, now).new == 10_000
    claims = queue.claim(max_photos=2000, max_wait=dt.timedelta(seconds=15), now=now)
    assert sum(len(claim.positions) for claim in claims) == 10_000
    cursor = IngestCursor([claim.run_key for claim in claims]).to_json()
    assert len(cursor.encode()) < 64 * 1024
    assert len(cursor.encode()) < 100 * len(claims)  # a run key each, nothing per photo


def test_a_failed_runs_photos_are_requeued_then_dead_lettered(farm, queue, dead_letters, drain):
    pubsub, bucket, date, _ = farm
    upload(bucket, ImageKey("P001", date))
    outcome = tick(pubsub, bucket, queue)
    # Back-offs of milliseconds: test_retries has the waits themselves.
    policy = RetryPolicy(max_attempts=3, first_wait_seconds=0.001)
    for attempt in range(1, 4):
        (claim,) = outcome.claims
        outcome = tick(pubsub, bucket, queue, outcome.cursor, wait_seconds=0)
        # The run of `claim` failed; its requeue is retried (the first try's warehouse
        # write may be the one that failed): the second call finds nothing left to do.
        first = requeue_run(queue, claim.run_key, policy, pubsub, "run r failed")
        assert requeue_run(queue, claim.run_key, policy, pubsub, "run r failed") == Requeued(0, 0)
        if attempt < 3:
            time.sleep(0.1)  # past the back-off
            assert first == Requeued(pending=1, dead_lettered=0)
            assert queue.waiting_count() == 1
            outcome = tick(pubsub, bucket, queue, outcome.cursor, wait_seconds=0)
            assert claimed(outcome) == ["P001"]  # de-duplication does not hide it
        else:
            assert first == Requeued(pending=0, dead_lettered=1)
    (letter,) = drain(dead_letters)
    assert letter.attributes["error"].startswith("photo failed in 3 runs over ")
    assert letter.attributes["error"].endswith(" min; last: run r failed")
    assert letter.attributes["eventType"] == "OBJECT_FINALIZE"  # the original message
    # Kept as dead-lettered (reconcile says so), never claimed again.
    (row,) = queue.warehouse.query("SELECT * FROM image_arrivals").rows(named=True)
    assert row["dead_lettered_at"] is not None and row["failure"] == letter.attributes["error"]
    assert not tick(pubsub, bucket, queue, outcome.cursor, wait_seconds=0).claims


def test_every_bad_message_is_dead_lettered_with_its_reason(
    farm, queue, publisher, subscriber, dead_letters, drain
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
    first = tick(pubsub, bucket, queue)
    for data, attributes in bad.values():
        publish(publisher, subscription.topic_path, data, **attributes)

    outcome = tick(pubsub, bucket, queue, first.cursor)
    deadline = time.monotonic() + 15
    while outcome.stats.dead_lettered < len(bad) and time.monotonic() < deadline:
        more = tick(pubsub, bucket, queue, outcome.cursor, wait_seconds=1)
        outcome.stats.dead_lettered += more.stats.dead_lettered
        outcome.acknowledged_ids += more.acknowledged_ids
        outcome.cursor = more.cursor

    assert outcome.stats.dead_lettered == len(bad)
    # None of them asks for work: only the real upload was ever handed to a run.
    asked = queue.warehouse.query("SELECT position_id FROM image_arrivals WHERE date = %s", [date])
    assert asked.rows() == [("P003",)]
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


@pytest.mark.slow
def test_dead_letters_can_be_listed_and_replayed_once_fixed(
    farm, queue, publisher, subscriber, dead_letters, local_stack, capsys
):
    """Photos of two positions the field map does not know yet are dead-lettered; once one
    of them joins the map, `farm-platform dlq replay --match` puts back that position's
    dead letters alone (`--dry-run` first says which), and the sensor claims its photo."""
    from farm_platform.admin.dead_letters import (
        dead_letter_queue,
        error_of,
        list_dead_letters,
        original_attributes,
    )
    from farm_platform.cli import main

    pubsub, bucket, date, subscription = farm
    key = ImageKey("P404", date)  # positions the field map does not know yet
    uri = upload(bucket, key)
    upload(bucket, ImageKey("P405", date))
    publish(publisher, subscription.topic_path, {"image_uri": uri}, drone_id="d-9")
    deadline = time.monotonic() + 15
    rejected = 0
    while rejected < 3 and time.monotonic() < deadline:
        rejected += tick(pubsub, bucket, queue).stats.dead_lettered
    assert rejected == 3  # P404's storage notification and drone message, P405's notification

    dead_name = dead_letters.rsplit("/", 1)[1]
    dlq = dead_letter_queue(local_stack.project, dead_name)
    listed = list_dead_letters(dlq)
    errors = sorted(error_of(letter) for letter in listed)
    assert [error.split(":")[0] for error in errors] == [
        "unknown position 'P404'",
        "unknown position 'P404'",
        "unknown position 'P405'",
    ]
    # The error names the field map the sensor read and the command that replays it.
    assert f"not in the field map ({config.field_map_path()})" in errors[0]
    assert "`farm-platform dlq replay --match P404`" in errors[0]
    drone_letter = next(letter for letter in listed if "eventType" not in letter.attributes)
    assert original_attributes(drone_letter) == {"drone_id": "d-9"}

    # P404 joins the field map; its dead letters alone go back, the dry run first.
    replay = ["dlq", "replay", "--project", local_stack.project, "--subscription", dead_name]
    assert main([*replay, "--match", "P404", "--dry-run"]) == 0
    assert "would replay 2 dead letter(s)" in capsys.readouterr().out
    assert len(list_dead_letters(dlq)) == 3, "listing or the dry run consumed a dead letter"
    assert main([*replay, "--match", "P404"]) == 0
    assert "replayed 2 dead letter(s)" in capsys.readouterr().out
    [left] = list_dead_letters(dlq)
    assert "'P405'" in error_of(left)

    known = [*POSITIONS, "P404"]
    outcome = ingest_tick(IngestCursor(), pubsub, bucket, queue, lambda: known, SETTINGS)
    deadline = time.monotonic() + 15
    while outcome.stats.pulled < 2 and time.monotonic() < deadline:
        more = ingest_tick(outcome.cursor, pubsub, bucket, queue, lambda: known, SETTINGS)
        outcome.stats.pulled += more.stats.pulled
        outcome.claims += more.claims
        outcome.cursor = more.cursor
    assert [(c.date, c.positions) for c in outcome.claims] == [(key.date, ("P404",))]


def test_poison_and_forged_messages_are_dead_lettered_and_ingestion_goes_on(
    farm, queue, publisher, dead_letters, drain
):
    pubsub, bucket, date, subscription = farm
    real = ImageKey("P000", date)
    upload(bucket, real)
    first = tick(pubsub, bucket, queue)  # the real upload's notification
    generation = queue.warehouse.query("SELECT generation FROM image_arrivals")["generation"][0]
    notification = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": bucket.root.removeprefix("gs://"),
        "payloadFormat": "JSON_API_V1",
    }
    poison = {
        "objectGeneration 1": (
            b"{}",
            {**notification, "objectId": real.relative_path(), "objectGeneration": "1" * 19},
        ),
        "does not exist": (
            b"{}",
            {
                **notification,
                "objectId": ImageKey("P001", date).relative_path(),
                "objectGeneration": "1700000000000000",
            },
        ),
        "bad objectGeneration": (
            b"{}",
            {**notification, "objectId": real.relative_path(), "objectGeneration": "²"},
        ),
        "nested too deep": (b"[" * 20_000 + b"]" * 20_000, {}),
        "bytes, over": (b"x" * (5 * 1024 * 1024), {}),  # past gRPC's default 4 MB
    }
    for data, attributes in poison.values():
        publish(publisher, subscription.topic_path, data, **attributes)
    upload(bucket, ImageKey("P002", date))  # a good photo behind the poison

    outcome = tick(pubsub, bucket, queue, first.cursor)
    deadline = time.monotonic() + 20
    while (
        outcome.stats.dead_lettered < len(poison) or outcome.stats.new_images < 1
    ) and time.monotonic() < deadline:
        more = tick(pubsub, bucket, queue, outcome.cursor, wait_seconds=1)
        outcome.stats.dead_lettered += more.stats.dead_lettered
        outcome.stats.new_images += more.stats.new_images
        outcome.cursor = more.cursor

    assert outcome.stats.dead_lettered == len(poison)
    assert outcome.stats.new_images == 1  # P002: ingestion went on
    errors = [letter.attributes["error"] for letter in drain(dead_letters)]
    for reason in poison:
        assert sum(reason in error for error in errors) == 1, (reason, errors)
    # The forged generation was not recorded: P000 keeps the bucket's generation.
    recorded = queue.warehouse.query(
        "SELECT generation FROM image_arrivals WHERE position_id = 'P000' AND date = %s", [date]
    )
    assert recorded["generation"].to_list() == [generation]


@pytest.mark.timeout(300)
def test_a_pubsub_outage_stops_no_work_and_reconcile_finds_the_unannounced_photo(
    queue, monkeypatch
):
    """The emulator dies mid-stream and comes back empty (an outage, then a restart): ticks
    during the outage still hand waiting photos to runs, the restart re-creates the
    topology, and the photo uploaded while notifications were dropped is found by
    reconciliation. Every photo is claimed exactly once."""
    from farm_platform.admin.reconcile import reconcile
    from farm_platform_dev.local_stack import LocalStack

    stack = LocalStack()
    info = stack.start()
    try:
        for name, value in info.environment().items():
            monkeypatch.setenv(name, value)
        pubsub = PubSubResource(project=info.project)
        bucket = BucketResource(url=info.bucket_url())
        date = dt.date(2026, 11, 20)
        hold = IngestSettings(pull_timeout_seconds=1.0, max_wait_seconds=3600)

        upload(bucket, ImageKey("P000", date))
        recorded = tick(pubsub, bucket, queue, settings=hold)
        assert recorded.stats.new_images == 1 and recorded.claims == []  # its day is busy

        stack.kill_pubsub_emulator()
        upload(bucket, ImageKey("P001", date))  # its notification is dropped
        during = ingest_tick(recorded.cursor, pubsub, bucket, queue, lambda: POSITIONS, SETTINGS)
        assert "did not answer" in during.stats.pubsub_error
        assert claimed(during) == ["P000"]  # the queue's work goes on without Pub/Sub

        stack.recover()
        after = tick(pubsub, bucket, queue, during.cursor, wait_seconds=0)
        assert after.stats.pubsub_error is None
        # fake-gcs-server retries a failed publish for up to a minute, so P001's notification
        # is either lost or delivered late, once the restart has re-created the topic.
        # Reconciliation records the photo exactly when no tick has; either way one claim.
        instance = DagsterInstance.ephemeral()
        (run_of_p000,) = during.claims
        _stored_run(instance, run_of_p000.run_key, DagsterRunStatus.STARTED)  # still going
        result = reconcile(bucket, queue.warehouse, POSITIONS, date, date, [], instance, pubsub)
        assert (result.stranded, result.in_runs) == ([], 1)
        announced_late = claimed(after) == ["P001"]
        assert result.recorded == ([] if announced_late else [ImageKey("P001", date)])
        found = tick(pubsub, bucket, queue, after.cursor, wait_seconds=0)

        upload(bucket, ImageKey("P002", date))  # notifications flow again
        resumed, later = tick(pubsub, bucket, queue, found.cursor), []
        later += claimed(resumed)
        while "P002" not in later and resumed.stats.pulled:
            resumed = tick(pubsub, bucket, queue, resumed.cursor, wait_seconds=0)
            later += claimed(resumed)
        assert sorted(claimed(after) + claimed(found) + later) == ["P001", "P002"]
    finally:
        stack.stop()


@pytest.mark.slow
def test_a_burst_of_duplicates_and_bad_messages_claims_each_photo_once(
    farm, queue, publisher, dead_letters, drain
):
    """3,000 messages in one burst: every photo announced again and again, a bad message in
    every ten. Each photo is claimed once and each bad message is dead-lettered once (the
    10,000-message version runs in benchmarks/fault_campaign.py)."""
    pubsub, bucket, date, subscription = farm
    uris = [upload(bucket, ImageKey(position, date)) for position in POSITIONS]
    drain(subscription.path)  # this test announces the photos itself
    futures, bad = [], 0
    for index in range(3000):
        if index % 10 == 0:
            payload, bad = {"image_uri": f"{bucket.root}/nowhere-{index}.png"}, bad + 1
        else:
            payload = {"image_uri": uris[index % len(uris)]}
        data = json.dumps(payload).encode()
        futures.append(publisher.publish(subscription.topic_path, data, copy=str(index)))
    for future in futures:
        future.result(timeout=60)

    cursor, claims, dead_lettered = IngestCursor(), [], 0
    deadline = time.monotonic() + 120
    while dead_lettered < bad or len(queue.held_ack_ids()) or not claims:
        outcome = tick(pubsub, bucket, queue, cursor, wait_seconds=0)
        cursor, claims = outcome.cursor, claims + outcome.claims
        dead_lettered += outcome.stats.dead_lettered
        assert time.monotonic() < deadline, outcome.stats.summary()
    assert sorted(p for claim in claims for p in claim.positions) == POSITIONS
    assert dead_lettered == bad
    assert len(drain(dead_letters)) == bad


def _handed_to_a_stored_run(pubsub, bucket, queue, position: str, date: dt.date) -> str:
    """Announce a photo, claim it and confirm the claim (Dagster stored the run request):
    its message is acknowledged, so from here only the arrival queue knows the photo."""
    upload(bucket, ImageKey(position, date))
    outcome = tick(pubsub, bucket, queue)
    (claim,) = outcome.claims
    tick(pubsub, bucket, queue, outcome.cursor, wait_seconds=0)
    assert queue.pending_count() == 0
    return claim.run_key


def _stored_run(instance, run_key: str, status: DagsterRunStatus = DagsterRunStatus.FAILURE):
    """A sensor run of the image pipeline as Dagster stored it: started, then ended with
    `status` (a failure or cancellation through its event, as the run worker reports it)."""
    run = instance.add_run(
        DagsterRun(
            job_name="__ASSET_JOB",
            run_id=make_new_run_id(),
            tags={RUN_KEY_TAG: run_key},
            status=DagsterRunStatus.STARTED,
        )
    )
    if status == DagsterRunStatus.FAILURE:
        instance.report_run_failed(run)
    elif status == DagsterRunStatus.CANCELED:
        instance.report_run_canceled(run)
    return run


def _evaluate_requeue(instance, warehouse, pubsub, cursor):
    from farm_platform.images.sensors import requeue_failed_photos

    context = build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"warehouse": warehouse, "pubsub": pubsub},
    )
    return requeue_failed_photos(context)


def test_a_failed_runs_photos_are_requeued_after_a_warehouse_outage(
    farm, queue, tmp_path, monkeypatch
):
    """The warehouse is unusable when the run fails and when the requeue sensor first
    evaluates it: that tick raises and keeps its cursor, so the next tick (warehouse back)
    requeues the photos. Dagster's run_failure_sensor moved its cursor past the run."""
    pubsub, bucket, date, _ = farm
    monkeypatch.setenv(config.FARM_RETRY_BACKOFF_SECONDS, "0.001")  # claimed again at once
    failed_key = _handed_to_a_stored_run(pubsub, bucket, queue, "P001", date)
    canceled_key = _handed_to_a_stored_run(pubsub, bucket, queue, "P002", date)
    with DagsterInstance.ephemeral() as instance:
        _stored_run(instance, failed_key)
        _stored_run(instance, canceled_key, DagsterRunStatus.CANCELED)
        # A run that is not the sensor's: nothing of it is in the queue.
        _stored_run(instance, "")

        # The outage: a warehouse that refuses connections (nothing listens on port 9).
        down = WarehouseResource(url="postgresql://farm@127.0.0.1:9/farm")
        with pytest.raises(Exception, match="connect"):
            _evaluate_requeue(instance, down, pubsub, None)
        assert queue.waiting_count() == 0  # nothing requeued yet, and nothing forgotten

        result = _evaluate_requeue(instance, queue.warehouse, pubsub, None)
        assert queue.waiting_count() == 2
        outcome = tick(pubsub, bucket, queue, wait_seconds=0)
        assert claimed(outcome) == ["P001", "P002"]
        # Past the handled runs: the next tick requeues nothing twice.
        again = _evaluate_requeue(instance, queue.warehouse, pubsub, result.cursor)
        assert again.cursor == result.cursor
        assert queue.waiting_count() == 0


def test_reconcile_requeues_photos_stranded_by_runs_that_ended(farm, queue, monkeypatch):
    from farm_platform.admin.reconcile import reconcile

    pubsub, bucket, date, _ = farm
    monkeypatch.setenv(config.FARM_RETRY_BACKOFF_SECONDS, "0.001")  # claimed again at once
    stranded_key = _handed_to_a_stored_run(pubsub, bucket, queue, "P000", date)
    running_key = _handed_to_a_stored_run(pubsub, bucket, queue, "P003", date)
    with DagsterInstance.ephemeral() as instance:
        _stored_run(instance, stranded_key)  # the requeue of it never happened
        _stored_run(instance, running_key, DagsterRunStatus.STARTED)
        result = reconcile(bucket, queue.warehouse, POSITIONS, date, date, [], instance, pubsub)
    assert result.stranded == [ImageKey("P000", date)]
    assert result.in_runs == 1
    assert result.recorded == []  # announced, so not "never seen"
    outcome = tick(pubsub, bucket, queue, wait_seconds=0)
    assert claimed(outcome) == ["P000"]


def test_a_burst_of_20_failed_runs_is_requeued_in_one_tick(farm, queue):
    """Dagster's run_status_sensor handles 5 runs a tick; requeue_failed_photos takes up to
    REQUEUE_EVENTS_PER_TICK failure events a tick, so 20 failed runs at once are all back in
    the queue after one evaluation."""
    from farm_platform.images.sensors import REQUEUE_EVENTS_PER_TICK

    pubsub, _, date, _ = farm
    assert REQUEUE_EVENTS_PER_TICK >= 20
    now = dt.datetime.now(dt.UTC)
    queue.record(arrivals_of(date, [f"P{i:03d}" for i in range(20)], now), now)
    claims = queue.claim(1, dt.timedelta(0), now)  # one run per photo
    assert len(claims) == 20
    run_keys = [claim.run_key for claim in claims]
    queue.confirm(run_keys, now)  # Dagster stored the 20 runs
    assert queue.pending_count() == 0
    with DagsterInstance.ephemeral() as instance:
        for run_key in run_keys:
            _stored_run(instance, run_key)
        result = _evaluate_requeue(instance, queue.warehouse, pubsub, None)
        assert queue.waiting_count() == 20
        assert "20 failed image run(s): 20 photo(s) requeued" in result.skip_reason.skip_message
