"""What the ingest test modules share: the farm's positions, ticks until something
arrives, uploads and publishes through the emulators' clients (their fixtures `queue` and
`farm` are in conftest.py)."""

import datetime as dt
import io
import json
import time

from dagster import DagsterRun, DagsterRunStatus
from dagster._core.utils import make_new_run_id
from PIL import Image

from farm_platform.images.sensors import RUN_KEY_TAG
from farm_platform.ingest.arrivals import Arrival
from farm_platform.ingest.tick import IngestCursor, IngestSettings, ingest_tick
from farm_platform.layout import ImageKey
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform.resources.pubsub import PubSubResource, PulledMessage

POSITIONS = [f"P{i:03d}" for i in range(4)]
# Claim pending photos at once: the tests of holding arrivals set their own limits.
SETTINGS = IngestSettings(pull_timeout_seconds=1.0, max_wait_seconds=0)
# The requeue sensor's policy in these tests: a failed run's photos are claimable at once.
RETRY_POLICY = IngestPolicyResource(retry_backoff_seconds=0.001)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 60, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


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


def stored_run(instance, run_key: str, status: DagsterRunStatus = DagsterRunStatus.FAILURE):
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
