"""A failed or canceled run's photos go back to the arrival queue (the requeue sensor,
reconcile), then to the dead-letter topic when out of attempts (real emulators, DuckDB)."""

import datetime as dt
import time

import pytest
from dagster import DagsterInstance, DagsterRunStatus, build_sensor_context
from ingest_support import (
    POSITIONS,
    RETRY_POLICY,
    arrivals_of,
    claimed,
    stored_run,
    tick,
    upload,
)

from farm_platform import config
from farm_platform.ingest.retries import Requeued, RetryPolicy, requeue_run
from farm_platform.layout import ImageKey
from farm_platform.resources.warehouse import WarehouseResource


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


def _handed_to_astored_run(pubsub, bucket, queue, position: str, date: dt.date) -> str:
    """Announce a photo, claim it and confirm the claim (Dagster stored the run request):
    its message is acknowledged, so from here only the arrival queue knows the photo."""
    upload(bucket, ImageKey(position, date))
    outcome = tick(pubsub, bucket, queue)
    (claim,) = outcome.claims
    tick(pubsub, bucket, queue, outcome.cursor, wait_seconds=0)
    assert queue.pending_count() == 0
    return claim.run_key


def _evaluate_requeue(instance, warehouse, pubsub, cursor):
    from farm_platform.images.sensors import requeue_failed_photos_tick

    context = build_sensor_context(instance=instance, cursor=cursor)
    return requeue_failed_photos_tick(context, warehouse, pubsub, RETRY_POLICY)


def test_a_failed_runs_photos_are_requeued_after_a_warehouse_outage(farm, queue, tmp_path):
    """The warehouse is unusable when the run fails and when the requeue sensor first
    evaluates it: that tick raises and keeps its cursor, so the next tick (warehouse back)
    requeues the photos. Dagster's run_failure_sensor moved its cursor past the run."""
    pubsub, bucket, date, _ = farm
    failed_key = _handed_to_astored_run(pubsub, bucket, queue, "P001", date)
    canceled_key = _handed_to_astored_run(pubsub, bucket, queue, "P002", date)
    with DagsterInstance.ephemeral() as instance:
        stored_run(instance, failed_key)
        stored_run(instance, canceled_key, DagsterRunStatus.CANCELED)
        # A run that is not the sensor's: nothing of it is in the queue.
        stored_run(instance, "")

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
    stranded_key = _handed_to_astored_run(pubsub, bucket, queue, "P000", date)
    running_key = _handed_to_astored_run(pubsub, bucket, queue, "P003", date)
    with DagsterInstance.ephemeral() as instance:
        stored_run(instance, stranded_key)  # the requeue of it never happened
        stored_run(instance, running_key, DagsterRunStatus.STARTED)
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
            stored_run(instance, run_key)
        result = _evaluate_requeue(instance, queue.warehouse, pubsub, None)
        assert queue.waiting_count() == 20
        assert "20 failed image run(s): 20 photo(s) requeued" in result.skip_reason.skip_message
