"""The probes of `benchmarks/sensor_at_scale.py`, timed in its own process on the
topology's servers with the production classes: one full tick's `ingest_tick` split by
what it calls, the claim query with every photo waiting, and opening a Dagster storage
connection."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from sensor_scale_log import DAY

from farm_platform import config
from farm_platform.images.sensors import claim_run_request
from farm_platform.ingest.arrivals import ArrivalQueue
from farm_platform.ingest.tick import IngestCursor, IngestSettings, ingest_tick
from farm_platform.layout import ImageKey
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.field_map import FieldMapResource
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform.resources.pubsub import PubSubResource
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.postgres import PostgresServer, fresh_database
from farm_platform_dev.simulate.farm import position_id
from farm_platform_dev.stack import StackInfo


class Timed:
    """An object whose method calls are timed (start, end, name), for a probe's split."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.calls: list[tuple[float, float, str]] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.target, name)
        if not callable(value):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.calls.append((started, time.perf_counter(), name))

        return timed

    def seconds(self, *names: str, until: float = float("inf")) -> float:
        """Wall time covered by calls of `names` (all, if none) up to `until`: overlapping
        calls from threads count once."""
        spans = sorted(
            (s, min(e, until))
            for s, e, name in self.calls
            if (not names or name in names) and s < until
        )
        covered, reached = 0.0, float("-inf")
        for start, end in spans:
            if end > reached:
                covered += end - max(start, reached)
                reached = end
        return covered


def tick_probe(
    server: PostgresServer, info: StackInfo, environment: dict[str, str], since: float
) -> dict[str, float]:
    """One full tick's `ingest_tick` in this process, what it calls timed: the subscription
    is sought back to `since`, before the day was announced (every announcement is delivered
    again); the queue is a scratch database's (a day's first tick: every photo new)."""
    positions_started = time.perf_counter()
    positions = list(FieldMapResource(path=environment[config.FARM_FIELD_MAP]).positions())
    field_map_seconds = time.perf_counter() - positions_started
    pubsub = PubSubResource(project=info.project)
    pubsub.seek(dt.datetime.fromtimestamp(since, dt.UTC))
    timed_pubsub = Timed(pubsub)
    bucket = Timed(BucketResource(url=environment[config.FARM_BUCKET]))
    scratch = WarehouseResource(url=fresh_database(server.url, "tick_probe"))
    # A tick's queue checks the schema once, as every tick's does; creating it is not a tick's.
    scratch.create_schema()
    warehouse = Timed(scratch)
    queue = ArrivalQueue(warehouse)  # type: ignore[arg-type]
    policy = IngestPolicyResource.from_environment()
    started = time.perf_counter()
    outcome = ingest_tick(
        IngestCursor(),
        timed_pubsub,  # type: ignore[arg-type]
        bucket,  # type: ignore[arg-type]
        queue,
        lambda: positions,
        IngestSettings.from_policy(policy),
    )
    ended = time.perf_counter()
    ingest = ended - started
    started = time.perf_counter()
    summary = outcome.stats.run_tag()
    requests = [claim_run_request(claim, policy, summary) for claim in outcome.claims]
    run_requests = time.perf_counter() - started
    pubsub.acknowledge(queue.held_ack_ids())
    return {
        "pulled": outcome.stats.pulled,
        "new": outcome.stats.new_images,
        "runs": len(requests),
        "ingest": ingest,
        "pull": timed_pubsub.seconds("pull"),
        "ack": timed_pubsub.seconds("acknowledge", "extend_deadline"),
        # Lookups past the tick's budget go on after it returns: only its part counts.
        "lookups": bucket.seconds("info", until=ended),
        "warehouse": warehouse.seconds(),
        "field_map": field_map_seconds,
        "run_requests": run_requests,
    }


def claim_probe(server: PostgresServer, photos: int, max_photos: int) -> dict[str, float]:
    """The production `ArrivalQueue.claim` with all `photos` of the day waiting, on a
    scratch database of the same server: its SELECT of waiting photos and its UPDATEs."""
    from farm_platform.ingest.arrivals import Arrival
    from farm_platform.resources.pubsub import PulledMessage

    warehouse = Timed(WarehouseResource(url=fresh_database(server.url, "claim_probe")))
    queue = ArrivalQueue(warehouse)  # type: ignore[arg-type]
    now = dt.datetime.now(dt.UTC)
    arrivals = [
        Arrival(
            ImageKey(position_id(index), DAY),
            "1",
            f"gs://farm-images/{position_id(index)}/{DAY}/image.png",
            PulledMessage(f"probe-{index}", str(index), now.isoformat(), b"", {}),
        )
        for index in range(photos)
    ]
    queue.record(arrivals, now)
    warehouse.calls.clear()
    # The day is quiet (no busy date): every waiting photo is claimed.
    claims = queue.claim(max_photos, dt.timedelta(hours=1), now, busy_dates=set())
    return {
        "claims": len(claims),
        "select": warehouse.seconds("query"),
        "update": warehouse.seconds("execute"),
    }


def connection_probe(dagster_url: str, count: int = 20) -> float:
    """Seconds to open and close one connection to the Dagster database as dagster-postgres
    does (psycopg2, password over TCP: a SCRAM exchange each time)."""
    import psycopg2

    started = time.perf_counter()
    for _ in range(count):
        psycopg2.connect(dagster_url).close()
    return (time.perf_counter() - started) / count
