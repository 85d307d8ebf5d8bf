"""When a failed run's photo gets its next run, and when it is dead-lettered instead.

A run that fails because something it needs is down (every model-server replica, the
warehouse, the bucket) fails within seconds; retried at once, a photo would spend all its
attempts in the first minute of an outage. So each failure puts the photo's next run
further away: `first_wait`, then 4 times that, and so on (30 s, 2 min, 8 min by default:
4 runs span about ten minutes), within a `budget` counted from its first failure.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from farm_platform import config
from farm_platform.ingest.arrivals import ArrivalQueue, as_utc
from farm_platform.resources.ingest_policy import IngestPolicyResource


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = config.DEFAULT_MAX_PHOTO_ATTEMPTS
    first_wait_seconds: float = config.DEFAULT_RETRY_BACKOFF_SECONDS
    budget_seconds: float = config.DEFAULT_RETRY_BUDGET_SECONDS

    @classmethod
    def from_policy(cls, policy: IngestPolicyResource) -> RetryPolicy:
        """What the `ingest_policy` resource sets (FARM_MAX_PHOTO_ATTEMPTS,
        FARM_RETRY_BACKOFF_SECONDS, FARM_RETRY_BUDGET_SECONDS)."""
        return cls(
            int(policy.number("max_photo_attempts")),
            policy.number("retry_backoff_seconds"),
            policy.number("retry_budget_seconds"),
        )

    def wait(self, attempts: int) -> dt.timedelta:
        """The wait after a photo's `attempts`-th failed run."""
        factor = config.RETRY_BACKOFF_FACTOR ** max(attempts - 1, 0)
        return dt.timedelta(seconds=self.first_wait_seconds * factor)

    def next_run(
        self, attempts: int, first_failed_at: dt.datetime | None, now: dt.datetime
    ) -> dt.datetime | None:
        """When a photo whose `attempts`-th run just failed may run again; None when it is
        out of attempts, or that would be past its budget."""
        if attempts >= self.max_attempts:
            return None
        at = now + self.wait(attempts)
        since = first_failed_at or now
        if (at - since).total_seconds() > self.budget_seconds:
            return None
        return at

    def spent(self, attempts: int, first_failed_at: dt.datetime | None, now: dt.datetime) -> str:
        """Why a photo is dead-lettered, for its dead letter."""
        since = first_failed_at or now
        minutes = (now - since).total_seconds() / 60
        if attempts >= self.max_attempts:
            return f"photo failed in {attempts} runs over {minutes:.1f} min"
        return (
            f"photo failed in {attempts} runs over {minutes:.1f} min; its next try would pass "
            f"FARM_RETRY_BUDGET_SECONDS={self.budget_seconds:g}"
        )


@dataclass(frozen=True)
class Requeued:
    """What became of a failed run's photos."""

    pending: int  # back in the queue: the sensor hands them to a new run after the wait
    dead_lettered: int  # out of attempts or budget


def requeue_run(
    queue: ArrivalQueue,
    run_key: str,
    policy: RetryPolicy,
    pubsub: Any,
    failure: str,
    now: dt.datetime | None = None,
) -> Requeued:
    """Put the photos claimed by a failed run back to pending, each to wait out its
    back-off (`policy`); those out of attempts or budget are dead-lettered with `failure`.
    Idempotent: a second call for the same run finds nothing claimed by it."""
    now = now or dt.datetime.now(dt.UTC)
    claimed = queue.query(
        "SELECT * FROM image_arrivals WHERE run_key = %s AND dead_lettered_at IS NULL",
        [run_key],
    )
    if not claimed.height:
        return Requeued(0, 0)
    retries: list[tuple[str, Sequence[object]]] = []
    exhausted: list[tuple[pl.DataFrame, str]] = []
    # The photos of one run share their history: one statement per group, not per photo.
    for (attempts, first_failed_at), group in claimed.group_by("attempts", "first_failed_at"):
        first = as_utc(first_failed_at) if first_failed_at else None
        at = policy.next_run(attempts, first, now)
        if at is None:
            exhausted.append((group, f"{policy.spent(attempts, first, now)}; last: {failure}"))
            continue
        retries.append(
            (
                "UPDATE image_arrivals SET run_key = NULL, requested_at = NULL,"
                " not_before = %s, first_failed_at = %s, failure = %s WHERE run_key = %s"
                " AND attempts = %s AND first_failed_at IS NOT DISTINCT FROM %s"
                " AND dead_lettered_at IS NULL",
                [at, first or now, failure, run_key, attempts, first],
            )
        )
    queue.warehouse.execute(retries)
    for group, error in exhausted:
        give_up(queue, group, pubsub, error, now)
    dead = sum(group.height for group, _ in exhausted)
    return Requeued(claimed.height - dead, dead)


def give_up(
    queue: ArrivalQueue, arrivals: pl.DataFrame, pubsub: Any, error: str, now: dt.datetime
) -> None:
    """Dead-letter the announcing messages of `arrivals` (rows of image_arrivals), then
    mark them dead-lettered with `error`: never claimed again, and what `reconcile`
    reports, until a replayed dead letter announces the photo again (new work)."""
    pubsub.dead_letter(
        [
            (
                base64.b64decode(row["message_data"] or ""),
                json.loads(row["message_attributes"] or "{}"),
                error,
            )
            for row in arrivals.iter_rows(named=True)
        ]
    )
    queue.warehouse.execute(
        [
            (
                "UPDATE image_arrivals SET dead_lettered_at = %s, failure = %s,"
                " requested_at = coalesce(requested_at, %s)"
                " WHERE position_id = %s AND date = %s AND generation = %s",
                [now, error, now, row["position_id"], row["date"], row["generation"]],
            )
            for row in arrivals.iter_rows(named=True)
        ]
    )
