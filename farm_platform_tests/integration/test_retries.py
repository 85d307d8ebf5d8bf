"""Retries that wait out an outage (issue 40, item 2), against real DuckDB and PostgreSQL
warehouses and the Pub/Sub emulator's dead-letter topic: a failed photo's next run waits
longer after each failure, within a budget; a warehouse made by an older release gains
the queue's new columns; `reconcile` tells never-announced, dead-lettered and waiting
photos apart and queues none of them twice; the dead letter names the failed step's own
error (the in-process Dagster instance's STEP_FAILURE event)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from dagster import DagsterInstance, job, op

from farm_platform import config
from farm_platform.admin.reconcile import reconcile
from farm_platform.ingest.arrivals import Arrival, ArrivalQueue
from farm_platform.ingest.retries import Requeued, RetryPolicy, requeue_run
from farm_platform.layout import ImageKey
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.pubsub import PubSubResource, PulledMessage
from farm_platform.resources.tables import IMAGE_ARRIVALS_TABLE, Table
from farm_platform.resources.warehouse import WarehouseResource

T0 = dt.datetime(2026, 7, 3, 6, tzinfo=dt.UTC)
DATE = T0.date()
RUN_FAILED = "run r: OipUnavailable: model servers grpc://a, grpc://b unreachable"
AT_ONCE = dt.timedelta(0)


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse(request, tmp_path) -> WarehouseResource:
    if request.param == "duckdb":
        return WarehouseResource(url=f"duckdb:///{tmp_path / 'farm.duckdb'}")
    from farm_platform_dev.postgres import fresh_database

    return WarehouseResource(url=fresh_database(request.getfixturevalue("postgres_url"), "retries"))


@pytest.fixture
def pubsub(stack_env) -> PubSubResource:
    return PubSubResource(project=stack_env.project)


def announce(queue: ArrivalQueue, positions: list[str], now: dt.datetime, generation="1"):
    queue.record(
        [
            Arrival(
                ImageKey(position, DATE),
                generation,
                f"gs://farm/{position}/{DATE}/image.png",
                PulledMessage("", position, now.isoformat(), position.encode(), {"p": position}),
            )
            for position in positions
        ],
        now,
    )


def seconds(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


def test_a_failed_photo_waits_longer_after_each_failure_then_is_dead_lettered(
    warehouse, pubsub, dead_letters, drain
):
    """The shipped defaults: 4 runs, 30 s, 2 min and 8 min apart. Every run fails within
    seconds (all model servers down): the photo is not handed to a run a second before its
    back-off has passed, and after its 4th run, ~11 minutes on, it is dead-lettered."""
    queue, policy = ArrivalQueue(warehouse), RetryPolicy()
    assert (policy.max_attempts, policy.first_wait_seconds) == (4, 30)
    announce(queue, ["P000"], T0)
    (claim,) = queue.claim(100, AT_ONCE, T0)
    now = T0
    for wait in (30, 120, 480):
        now += seconds(6)  # the run fails fast
        assert requeue_run(queue, claim.run_key, policy, pubsub, RUN_FAILED, now) == Requeued(1, 0)
        assert queue.waiting_count() == 1
        assert queue.claim(100, AT_ONCE, now + seconds(wait - 1)) == []
        now += seconds(wait)
        (claim,) = queue.claim(100, AT_ONCE, now)
    now += seconds(6)
    assert requeue_run(queue, claim.run_key, policy, pubsub, RUN_FAILED, now) == Requeued(0, 1)
    (letter,) = drain(dead_letters)
    # 648 s from the first failure to the last.
    assert letter.attributes["error"] == f"photo failed in 4 runs over 10.8 min; last: {RUN_FAILED}"
    assert bytes(letter.data) == b"P000" and letter.attributes["p"] == "P000"
    assert queue.claim(100, AT_ONCE, now + dt.timedelta(days=1)) == []


def test_no_photo_retries_past_its_budget(warehouse, pubsub, dead_letters, drain):
    queue = ArrivalQueue(warehouse)
    policy = RetryPolicy(max_attempts=10, first_wait_seconds=30, budget_seconds=200)
    announce(queue, ["P000"], T0)
    (claim,) = queue.claim(100, AT_ONCE, T0)
    now = T0 + seconds(6)
    # 30 s, then 2 min fit in 200 s from the first failure; 8 min more would not.
    for wait in (30, 120):
        assert requeue_run(queue, claim.run_key, policy, pubsub, RUN_FAILED, now) == Requeued(1, 0)
        now += seconds(wait)
        (claim,) = queue.claim(100, AT_ONCE, now)
        now += seconds(6)
    assert requeue_run(queue, claim.run_key, policy, pubsub, RUN_FAILED, now) == Requeued(0, 1)
    (letter,) = drain(dead_letters)
    assert letter.attributes["error"].startswith("photo failed in 3 runs over ")
    assert "FARM_RETRY_BUDGET_SECONDS=200" in letter.attributes["error"]


def test_photos_backing_off_hold_back_no_other_photo_of_their_day(warehouse, pubsub):
    """Two photos of a failed run back off; a new photo of the same day is claimed at once
    without them, and once their wait is over they join the next batch at once."""
    queue = ArrivalQueue(warehouse)
    announce(queue, ["P000", "P001"], T0)
    (claim,) = queue.claim(100, AT_ONCE, T0)
    requeue_run(queue, claim.run_key, RetryPolicy(), pubsub, RUN_FAILED, T0 + seconds(6))
    announce(queue, ["P002"], T0 + seconds(10))
    (fresh,) = queue.claim(100, AT_ONCE, T0 + seconds(10))
    assert fresh.positions == ("P002",)
    announce(queue, ["P003"], T0 + seconds(30))
    # P003 waits for a batch (15 s); P000 and P001 wait out their 30 s back-off.
    assert queue.claim(100, seconds(15), T0 + seconds(35)) == []
    (retried,) = queue.claim(100, seconds(15), T0 + seconds(36))
    assert retried.positions == ("P000", "P001", "P003")


def test_a_warehouse_of_an_older_release_gains_the_queues_new_columns(warehouse):
    """image_arrivals as the release before retries made it, with a waiting photo: the
    queue adds its new columns in place and hands the photo to a run."""
    old = Table(
        IMAGE_ARRIVALS_TABLE.name,
        {
            name: kind
            for name, kind in IMAGE_ARRIVALS_TABLE.columns.items()
            if name not in IMAGE_ARRIVALS_TABLE.added_columns
        },
        IMAGE_ARRIVALS_TABLE.primary_key,
        IMAGE_ARRIVALS_TABLE.replace_scope,
    )
    with warehouse.connect() as connection:
        connection.execute(old.ddl())
    warehouse.execute(
        [
            (
                "INSERT INTO image_arrivals (position_id, date, generation, image_uri,"
                " received_at, attempts) VALUES (%s, %s, %s, %s, %s, %s)",
                ["P000", DATE, "1", "gs://farm/P000/image.png", T0, 0],
            )
        ]
    )
    (claim,) = ArrivalQueue(warehouse).claim(100, AT_ONCE, T0)
    assert claim.positions == ("P000",)
    columns = warehouse.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'image_arrivals'"
    )["column_name"].to_list()
    assert set(IMAGE_ARRIVALS_TABLE.added_columns) <= set(columns)


def test_reconcile_tells_apart_never_announced_dead_lettered_and_waiting_and_queues_none_twice(
    warehouse, pubsub, stack_env, dead_letters, drain
):
    bucket = BucketResource(url=stack_env.bucket_url())
    date = dt.date(2026, 7, 5) + dt.timedelta(days=uuid.uuid4().int % 300)
    positions = ["P000", "P001", "P002", "P003"]
    keys = {position: ImageKey(position, date) for position in positions}
    for key in keys.values():
        bucket.write(bucket.image_uri(key), b"a photo")
    queue, now = ArrivalQueue(warehouse), dt.datetime.now(dt.UTC)

    def announced(position: str, ack_id: str = "") -> Arrival:
        uri = bucket.image_uri(keys[position])
        return Arrival(keys[position], bucket.info(uri).generation, uri, _message(uri, ack_id))

    # P000's notification never came. P001's runs failed until it was dead-lettered,
    # P002's run failed once (it backs off), P003 waits for a batch.
    queue.record([announced("P001"), announced("P002")], now)
    for claim in queue.claim(1, AT_ONCE, now):
        attempts = 1 if claim.positions == ("P001",) else 4
        requeue_run(queue, claim.run_key, RetryPolicy(attempts), pubsub, RUN_FAILED)
    queue.record([announced("P003")], now)
    with DagsterInstance.ephemeral() as instance:
        first = reconcile(bucket, warehouse, positions, date, date, [], instance, pubsub)
        again = reconcile(bucket, warehouse, positions, date, date, [], instance, pubsub)
    assert first.recorded == [keys["P000"]]
    assert [key for key, _ in first.dead_lettered] == [keys["P001"]]
    assert RUN_FAILED in first.dead_lettered[0][1]
    assert [key for key, _ in first.waiting] == [keys["P002"], keys["P003"]]
    assert first.waiting[0][1] is not None and first.waiting[1][1] is None  # P002 backs off
    assert again.recorded == []  # P000 is now waiting: never queued twice
    assert [key for key, _ in again.waiting] == [keys["P000"], keys["P002"], keys["P003"]]
    report = "\n".join(first.report(date, date, limit=10))
    assert "1 never announced" in report and "1 dead-lettered" in report
    assert f"{date} P001: {first.dead_lettered[0][1]}" in report
    assert "2 waiting in the arrival queue" in report

    # The dead letter, replayed once the cause is fixed, is P001's one new piece of work.
    (letter,) = drain(dead_letters)
    replayed = announced("P001", ack_id="ack-1")
    assert queue.record([replayed], now).new == 1
    claims = queue.claim(100, AT_ONCE, now)
    assert sorted(p for claim in claims for p in claim.positions) == ["P000", "P001", "P003"]
    assert bytes(letter.data) == replayed.message.data


def _message(uri: str, ack_id: str = "") -> PulledMessage:
    data = f'{{"image_uri": "{uri}"}}'.encode()
    return PulledMessage(ack_id, uri, dt.datetime.now(dt.UTC).isoformat(), data, {})


class ModelServersDown(RuntimeError):
    pass


@op
def grade_on_the_model_servers() -> None:
    try:
        raise ConnectionRefusedError("connection refused")
    except ConnectionRefusedError as exc:
        raise ModelServersDown("model servers grpc://a, grpc://b unreachable\nsecond line") from exc


@job
def failing_image_run() -> None:
    grade_on_the_model_servers()


def test_the_dead_letter_names_the_failed_steps_own_error():
    """A run that failed in its op: the reason is the op's exception, one line, not the
    run's "Steps failed: [...]"; a run with no failed step falls back (None)."""
    from farm_platform.images.sensors import step_failure_cause

    with DagsterInstance.ephemeral() as instance:
        result = failing_image_run.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        cause = step_failure_cause(instance, result.run_id)
        assert cause is not None and "Steps failed" not in cause
        assert cause == "ModelServersDown: model servers grpc://a, grpc://b unreachable"
        assert step_failure_cause(instance, "no-such-run") is None


def test_retry_settings_are_validated(monkeypatch):
    from farm_platform.resources.ingest_policy import IngestPolicyResource

    # Given to the resource (as a test or the UI's launchpad would) or by the environment.
    with pytest.raises(config.ConfigError, match="FARM_RETRY_BACKOFF_SECONDS=0"):
        RetryPolicy.from_policy(IngestPolicyResource(retry_backoff_seconds=0))
    monkeypatch.setenv(config.FARM_RETRY_BACKOFF_SECONDS, "5")
    monkeypatch.setenv(config.FARM_RETRY_BUDGET_SECONDS, "ten minutes")
    with pytest.raises(config.ConfigError, match="FARM_RETRY_BUDGET_SECONDS"):
        IngestPolicyResource.from_environment()
    monkeypatch.setenv(config.FARM_RETRY_BUDGET_SECONDS, "600")
    policy = RetryPolicy.from_policy(IngestPolicyResource.from_environment())
    assert [policy.wait(n).total_seconds() for n in (1, 2, 3)] == [5, 20, 80]
    assert policy.budget_seconds == 600
