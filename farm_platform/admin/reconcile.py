"""`farm-platform reconcile`: the bucket's photos of a date range against the warehouse.

A photo whose notification never came (the emulator dropped it during an outage, a
subscription was deleted, a message expired) is in the bucket but nowhere else. For every
position of the field map and every day of the range, the photo's object is looked up
(no listing of the bucket: crops would make it huge); a photo that the arrival queue has
never seen, at the generation the bucket has, is recorded as an arrival, so the sensor
hands it to a run as it would any other. Photos that were ingested but have no grades from
the active models are listed: they need a backfill, not new work.

Photos handed to a run that never ingested them are *stranded* once that run has ended
(failed, canceled, or gone): `requeue_failed_photos` normally puts them back, and this is
the net under it. Those of ended runs are requeued (or dead-lettered, out of attempts);
those whose run is still queued or going are only counted.

The other photos the platform has not graded are told apart and left alone, so that no
photo is queued twice: those *dead-lettered* after their runs failed (with the reason; the
dead letter is what to replay once the cause is fixed) and those *waiting in the arrival
queue* (for a batch, or for their back-off after a failed run).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from farm_platform.ingest.arrivals import Arrival, ArrivalQueue, as_utc
from farm_platform.ingest.retries import RetryPolicy, requeue_run
from farm_platform.layout import ImageKey, check_bucket
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform.resources.pubsub import PulledMessage
from farm_platform.resources.warehouse import WarehouseResource

RECONCILE_SOURCE = "farm-platform reconcile"


@dataclass(frozen=True)
class Reconciliation:
    in_bucket: int
    recorded: list[ImageKey]  # never announced: now in the arrival queue
    ungraded: list[ImageKey]  # ingested, readable, no grades from the active models
    stranded: list[ImageKey]  # handed to a run that ended without them: requeued
    in_runs: int  # handed to runs still queued or going
    dead_lettered: list[tuple[ImageKey, str]]  # after failed runs, with the reason: left alone
    waiting: list[tuple[ImageKey, dt.datetime | None]]  # in the queue, and since when retried

    def report(self, start: dt.date, end: dt.date, limit: int) -> list[str]:
        """What `farm-platform reconcile` prints: each kind, then up to `limit` of its photos."""
        kinds: list[tuple[str, list[str]]] = [
            (
                f"{len(self.recorded)} never announced: recorded in the arrival queue, the "
                "sensor hands them to runs",
                [_named(key) for key in self.recorded],
            ),
            (
                f"{len(self.dead_lettered)} dead-lettered after their runs failed: left alone; "
                "replay their dead letters once the cause is fixed (`farm-platform dlq replay`)",
                [f"{_named(key)}: {reason}" for key, reason in self.dead_lettered],
            ),
            (
                f"{len(self.waiting)} waiting in the arrival queue (for a batch, or to retry "
                "after a failed run): the sensor hands them to runs, nothing to do",
                [
                    _named(key) + (f" (retry at {at:%H:%M:%S} UTC)" if at else "")
                    for key, at in self.waiting
                ],
            ),
            (
                f"{len(self.stranded)} handed to runs that ended without them: back in the "
                f"arrival queue ({self.in_runs} more in runs still queued or going)",
                [_named(key) for key in self.stranded],
            ),
            (
                f"{len(self.ungraded)} ingested without grades of the active models: "
                "re-grade them with `farm-platform backfill`",
                [_named(key) for key in self.ungraded],
            ),
        ]
        lines = [f"{self.in_bucket} photo(s) in the bucket from {start} to {end}"]
        for title, photos in kinds:
            lines += [title, *(f"  {photo}" for photo in photos[:limit])]
        return lines


def _named(key: ImageKey) -> str:
    return f"{key.date_str} {key.position_id}"


def requeue_stranded(
    queue: ArrivalQueue, instance: Any, pubsub: Any, start: dt.date, end: dt.date
) -> tuple[list[ImageKey], int]:
    """Requeue the days' photos whose run ended without ingesting them (one that failed
    while the warehouse was down, one canceled, one the instance never had). Returns the
    requeued photos and the number still in unfinished runs."""
    from dagster import RunsFilter

    from farm_platform.images.sensors import RUN_KEY_TAG

    stranded = queue.stranded(start, end)
    # The retry policy the sensors run with: FARM_MAX_PHOTO_ATTEMPTS and FARM_RETRY_*.
    policy = RetryPolicy.from_policy(IngestPolicyResource.from_environment())
    requeued: list[ImageKey] = []
    in_runs = 0
    for (run_key,), photos in stranded.group_by("run_key", maintain_order=True):
        runs = instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: run_key}))
        if any(not run.is_finished for run in runs):
            in_runs += photos.height
            continue
        ended = (
            f"run {runs[0].run_id} ended {runs[0].status.value} without ingesting the photo"
            if runs
            else f"no Dagster run has key {run_key}"
        )
        requeue_run(
            queue,
            run_key,
            policy,
            pubsub,
            ended,
        )
        requeued += [ImageKey(p, d) for p, d in photos.select("position_id", "date").rows()]
    return requeued, in_runs


def reconcile(
    bucket: BucketResource,
    warehouse: WarehouseResource,
    positions: Sequence[str],
    start: dt.date,
    end: dt.date,
    active_graders: Sequence[tuple[str, str]],
    instance: Any,
    pubsub: Any,
    threads: int = 16,
) -> Reconciliation:
    """Record the range's unannounced photos in the arrival queue, requeue its stranded
    ones (`instance`: the Dagster instance whose runs were handed them), list the
    ungraded ones."""
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    # One clear sentence when the bucket does not answer, not a traceback per lookup.
    check_bucket(bucket.root)
    keys = [
        ImageKey(position, start + dt.timedelta(days=offset))
        for offset in range((end - start).days + 1)
        for position in positions
    ]
    with ThreadPoolExecutor(threads) as pool:
        infos = list(pool.map(lambda key: bucket.info(bucket.image_uri(key)), keys))
    in_bucket = {key: info for key, info in zip(keys, infos, strict=True) if info is not None}

    queue = ArrivalQueue(warehouse)
    known = _known_generations(warehouse, start, end)
    dead_lettered, waiting = _not_yet_graded(queue, start, end)
    now = dt.datetime.now(dt.UTC)
    missing = [
        Arrival(key, info.generation, info.uri, _reconcile_message(info.uri, now))
        for key, info in sorted(in_bucket.items())
        if (key.position_id, key.date, info.generation) not in known
        # Ingested without a known generation (no announcement): not lost.
        and (key.position_id, key.date, None) not in known
    ]
    queue.record(missing, now)
    stranded, in_runs = requeue_stranded(queue, instance, pubsub, start, end)
    return Reconciliation(
        in_bucket=len(in_bucket),
        recorded=[arrival.key for arrival in missing],
        ungraded=_ungraded(warehouse, start, end, active_graders),
        stranded=stranded,
        in_runs=in_runs,
        dead_lettered=dead_lettered,
        waiting=waiting,
    )


def _reconcile_message(uri: str, now: dt.datetime) -> PulledMessage:
    """What a reconciled photo's arrival keeps of its "message": a drone message naming it,
    so that if the photo proves unusable its dead letter can be replayed like any other."""
    data = json.dumps({"image_uri": uri}).encode()
    return PulledMessage("", "", now.isoformat(), data, {"source": RECONCILE_SOURCE})


def _known_generations(
    warehouse: WarehouseResource, start: dt.date, end: dt.date
) -> set[tuple[str, dt.date, str | None]]:
    warehouse.create_schema()
    frame = warehouse.query(
        "SELECT position_id, date, generation FROM image_arrivals WHERE date BETWEEN %s AND %s"
        " UNION SELECT position_id, date, generation FROM drone_images"
        " WHERE date BETWEEN %s AND %s",
        [start, end, start, end],
    )
    return set(frame.rows())


def _not_yet_graded(
    queue: ArrivalQueue, start: dt.date, end: dt.date
) -> tuple[list[tuple[ImageKey, str]], list[tuple[ImageKey, dt.datetime | None]]]:
    """The days' announced photos not ingested at their latest generation: dead-lettered
    (with the reason), and waiting in the queue (with when a failed one is retried)."""
    frame = queue.not_ingested(
        start,
        end,
        "a.position_id, a.date, a.failure, a.dead_lettered_at, a.not_before",
        "a.dead_lettered_at IS NOT NULL OR a.requested_at IS NULL",
    )
    dead_lettered, waiting = [], []
    for row in frame.iter_rows(named=True):
        key = ImageKey(row["position_id"], row["date"])
        if row["dead_lettered_at"] is not None:
            dead_lettered.append((key, row["failure"] or "no reason recorded"))
        else:
            waiting.append((key, as_utc(row["not_before"]) if row["not_before"] else None))
    return dead_lettered, waiting


def _ungraded(
    warehouse: WarehouseResource,
    start: dt.date,
    end: dt.date,
    active_graders: Sequence[tuple[str, str]],
) -> list[ImageKey]:
    """Readable ingested photos lacking grades of some active grader (crops, if any, exist)."""
    if not active_graders:
        return []
    graded = " AND ".join(
        "EXISTS (SELECT 1 FROM disease_grades AS g WHERE g.position_id = i.position_id"
        " AND g.date = i.date AND g.disease_model_id = %s AND g.disease_model_version = %s)"
        for _ in active_graders
    )
    with_leaves = (
        "EXISTS (SELECT 1 FROM leaf_crops AS c WHERE c.position_id = i.position_id"
        " AND c.date = i.date)"
    )
    frame = warehouse.query(
        "SELECT i.position_id, i.date FROM drone_images AS i"
        " WHERE i.error IS NULL AND i.date BETWEEN %s AND %s"
        f" AND {with_leaves} AND NOT ({graded}) ORDER BY i.date, i.position_id",
        [start, end, *[value for grader in active_graders for value in grader]],
    )
    return [ImageKey(position, date) for position, date in frame.rows()]
