"""One tick of drone-image ingestion: Pub/Sub messages in, day runs of photos out.

Delivery protocol (docs/contracts.md, Delivery; the queue itself is
`farm_platform.ingest.arrivals`):
- a valid announcement is recorded in the warehouse's arrival queue and its message is
  held, not acknowledged. It is acknowledged once the run that processes its photo has
  been stored by Dagster: the run's key rides in the sensor cursor, which Dagster stores
  in the same write that reserves the tick's run requests, and the next tick confirms it.
- ignored messages, duplicates of photos already handed to a stored run, and dead
  letters (once the dead-letter publish is confirmed) are acknowledged at once.
- a photo's identity is (position, date) plus the object's generation, so the same
  message delivered twice (or a notification and a drone message for the same upload) is
  one unit of work, while a re-upload of the same photo is new work.
- arrivals are batched per day across ticks: a run starts when a day has
  `max_photos_per_run` pending photos, when its oldest has waited `max_wait_seconds`, or
  when the day went quiet (a tick drained the subscription and nothing for that day was
  published in the last `quiet_after_seconds`).
The cursor holds only the run keys of the last tick's claims: its size does not grow
with the number of photos. While Pub/Sub is unreachable a tick still hands the queue's
waiting photos to runs; what it could not acknowledge is redelivered and then
acknowledged as a duplicate.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable, Collection, Container, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from farm_platform import config
from farm_platform.ingest.arrivals import Arrival, ArrivalQueue, Claim, publish_datetime
from farm_platform.ingest.messages import (
    Ignored,
    ImageArrival,
    Rejected,
    TrialFacts,
    parse_message,
)
from farm_platform.layout import MISSING_OBJECT_ERROR
from farm_platform.partitions import TrialCalendar
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform.resources.pubsub import PubSubResource, PubSubUnavailable, PulledMessage


@dataclass(frozen=True)
class IngestSettings:
    max_messages_per_tick: int = 5000
    pull_batch: int = 1000
    pull_timeout_seconds: float = 2.0
    # Keep a whole tick (pull, object lookups, queue writes) well inside Dagster's sensor
    # evaluation timeout (60 s by default); what does not fit waits for the next tick.
    tick_budget_seconds: float = 30.0
    max_photos_per_run: int = config.DEFAULT_RUN_MAX_PHOTOS
    max_wait_seconds: float = (
        config.DEFAULT_GRADE_WITHIN_SECONDS - config.DEFAULT_SENSOR_INTERVAL_SECONDS
    )
    # A day whose newest announcement is this old, in a tick that drained the subscription,
    # has stopped uploading: its waiting photos run at once.
    quiet_after_seconds: float = config.DEFAULT_BATCH_QUIET_SECONDS
    # Long enough for the next tick to acknowledge held messages, short enough that a
    # tick that dies before Dagster stores it has its messages redelivered soon.
    ack_extension_seconds: int = 120
    object_lookup_threads: int = 16
    # Which dates are day partitions and a photo's local day (the `trial_calendar`
    # resource's), and the field map's path that a rejection of an unknown position names.
    calendar: TrialCalendar = TrialCalendar()
    field_map: str = str(config.DEFAULT_FIELD_MAP_PATH)

    @classmethod
    def from_policy(
        cls,
        policy: IngestPolicyResource,
        calendar: TrialCalendar | None = None,
        field_map: str = str(config.DEFAULT_FIELD_MAP_PATH),
    ) -> IngestSettings:
        """The batching the sensor's `ingest_policy` resource sets, over the trial's calendar
        (the sensor's `trial_calendar` resource) and the field map at `field_map`."""
        return cls(
            max_photos_per_run=int(policy.number("run_max_photos")),
            max_wait_seconds=policy.batch_wait_seconds(),
            quiet_after_seconds=policy.number("batch_quiet_seconds"),
            calendar=calendar or TrialCalendar(),
            field_map=field_map,
        )


@dataclass
class IngestCursor:
    # Run keys of the claims the last tick returned (stored with its run requests).
    claims: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str | None) -> IngestCursor:
        if not text:
            return cls()
        return cls(list(json.loads(text).get("claims", [])))

    def to_json(self) -> str:
        return json.dumps({"claims": self.claims})


@dataclass
class IngestStats:
    pulled: int = 0
    new_images: int = 0
    duplicates: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    acknowledged: int = 0
    runs: int = 0
    photos_requested: int = 0
    deferred: int = 0
    seconds: float = 0.0
    # Why Pub/Sub could not be used this tick (the queue's work went on without it).
    pubsub_error: str | None = None

    def summary(self) -> str:
        rate = self.pulled / self.seconds if self.seconds else 0.0
        outage = f"Pub/Sub unavailable: {self.pubsub_error}; " if self.pubsub_error else ""
        return outage + (
            f"pulled {self.pulled} messages ({rate:.0f}/s): {self.new_images} new images, "
            f"{self.duplicates} duplicates, {self.ignored} ignored, "
            f"{self.dead_lettered} dead-lettered, {self.deferred} deferred to the next tick; "
            f"acknowledged {self.acknowledged}; "
            f"{self.runs} run(s) requested for {self.photos_requested} photo(s)"
        )

    def run_tag(self) -> str:
        """The tick, short enough for the UI's runs table, which cuts tags at ~40
        characters (the whole summary is in the tick's log)."""
        return (
            f"{self.new_images} new, {self.duplicates} dup, "
            f"{self.dead_lettered} dead-lettered of {self.pulled}"
        )


@dataclass
class IngestOutcome:
    claims: list[Claim]
    cursor: IngestCursor
    stats: IngestStats
    # Messages this tick acknowledged itself: ignored ones, duplicates, dead-lettered ones.
    acknowledged_ids: list[str] = field(default_factory=list)


def ingest_tick(
    cursor: IngestCursor,
    pubsub: PubSubResource,
    bucket: BucketResource,
    queue: ArrivalQueue,
    known_positions: Callable[[], Collection[str]],
    settings: IngestSettings | None = None,
) -> IngestOutcome:
    """`known_positions` is asked after the pull: a position added to the field map just
    before its first photo was announced is known to the tick that pulls the announcement
    (asked before the pull, the tick dead-lettered those photos as unknown positions)."""
    settings = settings or IngestSettings()
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    stats = IngestStats()

    # The cursor we were given is stored: its claims' runs are recorded by Dagster.
    released = queue.confirm(cursor.claims, now)
    try:
        pubsub.acknowledge(released)
        stats.acknowledged += len(released)
        messages, drained = _pull(pubsub, settings, started)
    except PubSubUnavailable as exc:
        stats.pubsub_error = str(exc)
        messages, drained = [], False
    stats.pulled = len(messages)
    known = _known_or_release(known_positions, pubsub, messages)
    classified = _classify(messages, bucket, known, settings, started)
    arrivals, ack_now, deferred = _settle_all_but_arrivals(classified, pubsub, stats)
    ack_now.extend(_record(arrivals, queue, pubsub, settings, now, stats))
    if ack_now:
        pubsub.acknowledge(ack_now)
        stats.acknowledged += len(ack_now)

    claims = queue.claim(
        settings.max_photos_per_run,
        dt.timedelta(seconds=settings.max_wait_seconds),
        now,
        # Which days are quiet is known only if this tick saw everything waiting.
        busy_dates=_busy_dates(arrivals, settings, now) if drained and not deferred else None,
    )
    stats.runs = len(claims)
    stats.photos_requested = sum(len(claim.positions) for claim in claims)
    stats.seconds = time.monotonic() - started
    return IngestOutcome(claims, IngestCursor([c.run_key for c in claims]), stats, ack_now)


def _known_or_release(
    known_positions: Callable[[], Collection[str]],
    pubsub: PubSubResource,
    messages: list[PulledMessage],
) -> frozenset[str]:
    try:
        return frozenset(known_positions())
    except Exception:
        # A field map that cannot be read fails the tick with its error; what the tick
        # pulled is released at once rather than held until its ack deadline.
        with contextlib.suppress(PubSubUnavailable):
            if messages:
                pubsub.extend_deadline([message.ack_id for message in messages], 0)
        raise


def _settle_all_but_arrivals(
    classified: list[
        tuple[PulledMessage, ImageArrival | Ignored | Rejected | _Deferred, str | None]
    ],
    pubsub: PubSubResource,
    stats: IngestStats,
) -> tuple[list[Arrival], list[str], list[str]]:
    """The tick's arrivals; the ack ids to acknowledge (ignored and dead-lettered
    messages); the deferred ones, released at once."""
    ack_now: list[str] = []
    dead_letters: list[tuple[PulledMessage, str]] = []
    arrivals: list[Arrival] = []
    deferred: list[str] = []
    for message, parsed, generation in classified:
        if isinstance(parsed, Ignored):
            stats.ignored += 1
            ack_now.append(message.ack_id)
        elif isinstance(parsed, Rejected):
            dead_letters.append((message, parsed.error))
        elif isinstance(parsed, _Deferred):
            deferred.append(message.ack_id)
        else:
            arrivals.append(Arrival(parsed.key, generation, parsed.image_uri, message))
    if deferred:
        # Past the tick's budget: released at once, so the next tick gets them again.
        pubsub.extend_deadline(deferred, 0)
        stats.deferred = len(deferred)
    if dead_letters:
        pubsub.dead_letter(
            [(message.data, message.attributes, error) for message, error in dead_letters]
        )
        stats.dead_lettered = len(dead_letters)
        ack_now.extend(message.ack_id for message, _ in dead_letters)
    return arrivals, ack_now, deferred


def _record(
    arrivals: list[Arrival],
    queue: ArrivalQueue,
    pubsub: PubSubResource,
    settings: IngestSettings,
    now: dt.datetime,
    stats: IngestStats,
) -> list[str]:
    """Records the arrivals; holds the messages of new ones (acknowledged once their run
    is stored) and returns the ack ids of those the queue already had."""
    recorded = queue.record(arrivals, now)
    stats.new_images, stats.duplicates = recorded.new, recorded.duplicates
    acknowledged_now = set(recorded.ack_now)
    held = [a.message.ack_id for a in arrivals if a.message.ack_id not in acknowledged_now]
    if held:
        pubsub.extend_deadline(held, settings.ack_extension_seconds)
    return list(recorded.ack_now)


def _busy_dates(
    arrivals: list[Arrival], settings: IngestSettings, now: dt.datetime
) -> set[dt.date]:
    # A day is busy while its photos are still being announced: published in the last
    # `quiet_after_seconds`, so more of them may be on their way.
    return {
        arrival.key.date
        for arrival in arrivals
        if (published := publish_datetime(arrival.message.publish_time)) is None
        or (now - published).total_seconds() < settings.quiet_after_seconds
    }


def _pull(
    pubsub: PubSubResource, settings: IngestSettings, started: float
) -> tuple[list[PulledMessage], bool]:
    """Messages pulled this tick, and whether the subscription was drained (an empty pull)."""
    messages: list[PulledMessage] = []
    while len(messages) < settings.max_messages_per_tick:
        if time.monotonic() - started > settings.tick_budget_seconds / 2:
            break
        wanted = min(settings.pull_batch, settings.max_messages_per_tick - len(messages))
        batch = pubsub.pull(wanted, settings.pull_timeout_seconds)
        if not batch:
            return messages, True
        messages.extend(batch)
    return messages, False


@dataclass(frozen=True)
class _Deferred:
    """A message whose object lookup did not fit in this tick: it is released, not lost."""


def _classify(
    messages: Sequence[PulledMessage],
    bucket: BucketResource,
    known_positions: Container[str],
    settings: IngestSettings,
    started: float,
) -> list[tuple[PulledMessage, ImageArrival | Ignored | Rejected | _Deferred, str | None]]:
    """Parse every message and look its object up in the bucket: the generation a photo is
    recorded with is the bucket's, never the message's word for it."""
    trial = TrialFacts(
        known_positions,
        settings.calendar.valid_dates(),
        settings.calendar.timezone,
        settings.field_map,
    )
    parsed = [
        parse_message(message.data, message.attributes, bucket.root, trial) for message in messages
    ]

    def look_up(item: ImageArrival) -> tuple[ImageArrival | Ignored | Rejected, str | None]:
        info = bucket.info(item.image_uri)
        if info is None:
            return Rejected(f"{item.image_uri}: {MISSING_OBJECT_ERROR}"), None
        if item.generation and item.generation != info.generation:
            if _older(item.generation, info.generation):
                # The object was overwritten since: its newer generation is announced too.
                superseded = f"generation {item.generation} superseded by {info.generation}"
                return Ignored(superseded), None
            forged = (
                f"objectGeneration {item.generation} is not the generation of "
                f"{item.image_uri} in the bucket ({info.generation})"
            )
            return Rejected(forged), None
        return item, info.generation

    pool = ThreadPoolExecutor(settings.object_lookup_threads)
    futures = {
        index: pool.submit(look_up, item)
        for index, item in enumerate(parsed)
        if isinstance(item, ImageArrival)
    }
    remaining = max(0.0, settings.tick_budget_seconds - (time.monotonic() - started))
    wait(futures.values(), timeout=remaining)
    pool.shutdown(wait=False, cancel_futures=True)
    results: list[tuple[PulledMessage, Any, str | None]] = []
    for index, (message, item) in enumerate(zip(messages, parsed, strict=True)):
        future = futures.get(index)
        if future is None:
            results.append((message, item, None))
        elif future.done() and not future.cancelled() and future.exception() is None:
            results.append((message, *future.result()))
        else:
            results.append((message, _Deferred(), None))
    return results


def _older(generation: str, than: str) -> bool:
    return generation.isdigit() and than.isdigit() and int(generation) < int(than)
