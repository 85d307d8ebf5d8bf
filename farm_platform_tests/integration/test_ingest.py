"""The sensor's delivery protocol against the real Pub/Sub and GCS emulators, with the
arrival queue in a real DuckDB warehouse: batching arrivals into claims, and acknowledging
messages only once their run is stored. Dead letters: test_ingest_dead_letters.py; failed
runs' photos: test_ingest_requeue.py."""

import datetime as dt
import time

import pytest
from ingest_support import (
    POSITIONS,
    SETTINGS,
    WatchedPulls,
    arrivals_of,
    claimed,
    png,
    publish,
    redelivered,
    tick,
    upload,
)

from farm_platform import config
from farm_platform.images.sensors import TICK_TAG, claim_run_request
from farm_platform.ingest.tick import IngestCursor, IngestSettings, ingest_tick
from farm_platform.layout import ImageKey
from farm_platform.resources.ingest_policy import IngestPolicyResource


def test_a_day_is_quiet_after_the_window_its_setting_gives(farm, queue):
    """The ingest policy's batch_quiet_seconds (FARM_BATCH_QUIET_SECONDS): an upload ~2 s
    old has ended its day's flight with a 1 s window (its photo runs at once); with the
    default 5 s it is still uploading."""
    pubsub, bucket, date, _ = farm
    with pytest.raises(config.ConfigError, match="FARM_BATCH_QUIET_SECONDS"):
        IngestSettings.from_policy(IngestPolicyResource(batch_quiet_seconds=0))

    one_second = IngestSettings.from_policy(IngestPolicyResource(batch_quiet_seconds=1))
    upload(bucket, ImageKey("P000", date))
    time.sleep(2)
    quiet = tick(pubsub, bucket, queue, settings=one_second)
    assert claimed(quiet) == ["P000"]

    default = IngestSettings.from_policy(IngestPolicyResource())
    upload(bucket, ImageKey("P001", date))
    time.sleep(2)
    busy = tick(pubsub, bucket, queue, quiet.cursor, settings=default)
    assert busy.stats.new_images == 1 and busy.claims == []


def test_a_busy_days_photo_runs_when_it_nears_its_latency_budget(farm, queue, monkeypatch):
    """FARM_GRADE_WITHIN_SECONDS: while the day still uploads, its oldest photo waits for
    its run to grow until the budget less one sensor interval; FARM_BATCH_MAX_WAIT_SECONDS
    only lowers that wait."""
    pubsub, bucket, date, _ = farm
    assert IngestPolicyResource().batch_wait_seconds() == 290  # 300 s budget, 10 s ticks
    assert IngestPolicyResource(batch_max_wait_seconds=600).batch_wait_seconds() == 290
    assert IngestPolicyResource(batch_max_wait_seconds=15).batch_wait_seconds() == 15
    monkeypatch.setenv(config.FARM_GRADE_WITHIN_SECONDS, "soon")
    with pytest.raises(config.ConfigError, match="FARM_GRADE_WITHIN_SECONDS"):
        IngestPolicyResource.from_environment()
    monkeypatch.delenv(config.FARM_GRADE_WITHIN_SECONDS)

    policy = IngestPolicyResource(grade_within_seconds=6, sensor_interval_seconds=5)
    upload(bucket, ImageKey("P000", date))
    busy = tick(pubsub, bucket, queue, settings=IngestSettings.from_policy(policy))
    assert busy.stats.new_images == 1 and busy.claims == []  # the day uploads: it waits
    time.sleep(1.5)
    upload(bucket, ImageKey("P001", date))  # still uploading: the day is not quiet
    due = tick(pubsub, bucket, queue, busy.cursor, settings=IngestSettings.from_policy(policy))
    assert claimed(due) == ["P000", "P001"]  # the oldest neared its budget: one run of both


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
    request = claim_run_request(outcome.claims[0], IngestPolicyResource(), outcome.stats.run_tag())
    tag = request.tags[TICK_TAG]
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
