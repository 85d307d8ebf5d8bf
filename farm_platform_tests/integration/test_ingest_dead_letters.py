"""Messages that cannot become work are dead-lettered with their reason, and ingestion goes
on past them and past a Pub/Sub outage (real emulators, DuckDB arrival queue)."""

import datetime as dt
import json
import time

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from ingest_support import (
    POSITIONS,
    SETTINGS,
    claimed,
    publish,
    redelivered,
    stored_run,
    tick,
    upload,
)

from farm_platform.ingest.tick import IngestCursor, IngestSettings, ingest_tick
from farm_platform.layout import ImageKey
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.pubsub import PubSubResource


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
    assert f"not in the field map ({SETTINGS.field_map})" in errors[0]
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
        stored_run(instance, run_of_p000.run_key, DagsterRunStatus.STARTED)  # still going
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


def test_the_sensor_takes_the_trials_calendar_and_field_map_from_its_resources(
    farm, queue, dead_letters, drain, tmp_path
):
    """`drone_image_tick` as the definitions wire it: which dates are day partitions is its
    `trial_calendar` resource's, and a rejection names its `field_map` resource's file."""
    from dagster import build_sensor_context

    from farm_platform.images.sensors import drone_image_tick
    from farm_platform.resources.field_map import FieldMapResource, Position, write_field_map
    from farm_platform.resources.ingest_policy import IngestPolicyResource
    from farm_platform.resources.trial_calendar import TrialCalendarResource

    pubsub, bucket, date, _ = farm
    positions = tmp_path / "positions.csv"
    write_field_map([Position("P000", "control", 52.0, 5.0, 0.0)], positions)
    upload(bucket, ImageKey("P000", date))  # a day before the trial's first day
    upload(bucket, ImageKey("P404", date))  # a position the map does not know
    resources = {
        "pubsub": pubsub,
        "bucket": bucket,
        "field_map": FieldMapResource(path=str(positions)),
        "warehouse": queue.warehouse,
        "ingest_policy": IngestPolicyResource(),
        "trial_calendar": TrialCalendarResource(start_date=str(date + dt.timedelta(days=1))),
    }
    errors: list[str] = []
    deadline = time.monotonic() + 20
    with DagsterInstance.ephemeral() as instance:
        while len(errors) < 2 and time.monotonic() < deadline:
            drone_image_tick(build_sensor_context(instance=instance), **resources)
            letters = drain(dead_letters, quiet_seconds=1)
            errors += [letter.attributes["error"] for letter in letters]
    assert sorted(error.split(":")[0] for error in errors) == [
        f"bad date {date}",
        "unknown position 'P404'",
    ], errors
    assert f"outside the trial's partitions {date + dt.timedelta(days=1)} .." in min(errors)
    assert f"not in the field map ({positions})" in max(errors)
