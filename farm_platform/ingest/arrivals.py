"""The arrival queue: photos announced on Pub/Sub, held, handed to day runs, retried.

It lives in the warehouse (tables `image_arrivals` and `arrival_acks`), so its size grows
with the trial, not with the sensor cursor, and it is the de-duplication state:

- `record`: a valid announcement of a photo generation not seen before becomes a pending
  arrival; its message is *held* (ack id stored), not acknowledged.
- `claim`: pending photos of one day become a run's photo list once a batch is full or the
  oldest has waited long enough. The claim's run key goes into the sensor cursor.
- `confirm`: on the next tick the cursor that Dagster stored with the run request proves
  the run is recorded; only then are the held messages acknowledged. Claims of a tick that
  died before Dagster stored it are released and claimed again.
- `requeue_run` (`farm_platform.ingest.retries`): the photos of a failed run go back to pending,
  each not to be claimed before its back-off has passed; out of attempts or budget they
  are dead-lettered and kept as such (`dead_lettered_at`) until a replay announces them
  again. De-duplication never hides a photo whose rows are missing.
- `stranded`: photos handed to a stored run that never ingested them; `reconcile` puts
  those of finished runs back with `requeue_run`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Container, Sequence
from dataclasses import dataclass

import polars as pl

from farm_platform.layout import ImageKey
from farm_platform.resources.pubsub import PulledMessage
from farm_platform.resources.tables import ARRIVAL_ACKS_TABLE, IMAGE_ARRIVALS_TABLE
from farm_platform.resources.warehouse import WarehouseResource


@dataclass(frozen=True)
class Arrival:
    """A valid announcement: this generation of this photo is in the bucket."""

    key: ImageKey
    generation: str
    image_uri: str
    message: PulledMessage


@dataclass(frozen=True)
class RecordOutcome:
    new: int
    duplicates: int
    # Duplicates of photos already handed to a stored run: acknowledge at once.
    ack_now: list[str]


@dataclass(frozen=True)
class Claim:
    """One run's worth of photos of one day."""

    run_key: str
    date: dt.date
    positions: tuple[str, ...]


@dataclass(frozen=True)
class HeldMessage:
    """The message that announced a photo, for dead-lettering it."""

    data: bytes
    attributes: dict[str, str]
    generation: str
    message_id: str | None
    published_at: dt.datetime | None


# Run keys of the sensor's runs; a failed run with another key has no claimed photos.
PHOTO_RUN_KEY_PREFIX = "photos-"


def _in(values: Sequence[object]) -> str:
    return ", ".join(["%s"] * len(values))


class ArrivalQueue:
    def __init__(self, warehouse: WarehouseResource):
        self.warehouse = warehouse
        self._schema_ready = False

    def query(self, sql: str, parameters: Sequence[object] = ()) -> pl.DataFrame:
        if not self._schema_ready:
            self.warehouse.create_schema()
            self._schema_ready = True
        return self.warehouse.query(sql, parameters)

    # ------------------------------------------------------------------ the sensor's tick

    def confirm(self, stored_run_keys: Sequence[str], now: dt.datetime) -> list[str]:
        """Mark the claims of the stored cursor requested; release claims of a tick that
        died before Dagster stored it. Returns the ack ids now safe to acknowledge."""
        statements: list[tuple[str, Sequence[object]]] = []
        if stored_run_keys:
            statements.append(
                (
                    "UPDATE image_arrivals SET requested_at = %s"
                    f" WHERE requested_at IS NULL AND run_key IN ({_in(stored_run_keys)})",
                    [now, *stored_run_keys],
                )
            )
            statements.append(
                (
                    "UPDATE image_arrivals SET run_key = NULL WHERE requested_at IS NULL"
                    f" AND run_key IS NOT NULL AND run_key NOT IN ({_in(stored_run_keys)})",
                    list(stored_run_keys),
                )
            )
        else:
            statements.append(
                (
                    "UPDATE image_arrivals SET run_key = NULL"
                    " WHERE requested_at IS NULL AND run_key IS NOT NULL",
                    [],
                )
            )
        # One connection for the statements and the release (a DuckDB file opened once).
        with self.warehouse.batch():
            self.warehouse.execute(statements)
            return self._release_acks()

    def _release_acks(self) -> list[str]:
        """Ack ids of messages whose photo is handed to a stored run; forgotten here."""
        held = self.query(
            "SELECT acks.ack_id FROM arrival_acks AS acks JOIN image_arrivals AS arrivals"
            " ON arrivals.position_id = acks.position_id AND arrivals.date = acks.date"
            " AND arrivals.generation = acks.generation"
            " WHERE arrivals.requested_at IS NOT NULL"
        )
        ack_ids = held["ack_id"].to_list() if held.height else []
        for start in range(0, len(ack_ids), 1000):
            chunk = ack_ids[start : start + 1000]
            self.warehouse.execute(
                [(f"DELETE FROM arrival_acks WHERE ack_id IN ({_in(chunk)})", chunk)]
            )
        return ack_ids

    def record(self, arrivals: Sequence[Arrival], now: dt.datetime) -> RecordOutcome:
        """Store new photo generations as pending and hold every message's ack id."""
        if not arrivals:
            return RecordOutcome(0, 0, [])
        with self.warehouse.batch():  # the lookup and the write on one connection
            return self._record(arrivals, now)

    def _record(self, arrivals: Sequence[Arrival], now: dt.datetime) -> RecordOutcome:
        dates = sorted({arrival.key.date for arrival in arrivals})
        # A dead-lettered photo announced again (its dead letter replayed) is new work.
        known = self.query(
            "SELECT position_id, date, generation, requested_at FROM image_arrivals"
            f" WHERE date IN ({_in(dates)}) AND dead_lettered_at IS NULL",
            dates,
        )
        requested: dict[tuple[str, dt.date, str], bool] = {
            (row["position_id"], row["date"], row["generation"]): row["requested_at"] is not None
            for row in known.iter_rows(named=True)
        }
        ack_now: list[str] = []
        new_rows: dict[tuple[str, dt.date, str], Arrival] = {}
        held: list[Arrival] = []
        duplicates = 0
        for arrival in arrivals:
            identity = (arrival.key.position_id, arrival.key.date, arrival.generation)
            if requested.get(identity):
                duplicates += 1
                ack_now.append(arrival.message.ack_id)
                continue
            if identity in requested or identity in new_rows:
                duplicates += 1
            else:
                new_rows[identity] = arrival
            if arrival.message.ack_id:  # a reconciled photo has no message to hold
                held.append(arrival)
        self.warehouse.replace_many(
            [
                ("image_arrivals", _arrival_rows(list(new_rows.values()), now), None),
                ("arrival_acks", _ack_rows(held, now), None),
            ]
        )
        return RecordOutcome(len(new_rows), duplicates, ack_now)

    def held_ack_ids(self) -> list[str]:
        frame = self.query("SELECT ack_id FROM arrival_acks")
        return frame["ack_id"].to_list() if frame.height else []

    def claim(
        self,
        max_photos: int,
        max_wait: dt.timedelta,
        now: dt.datetime,
        busy_dates: Container[dt.date] | None = None,
    ) -> list[Claim]:
        """Hand pending photos to runs: full batches at once; the rest once the oldest has
        waited `max_wait`, or as soon as their day is quiet. `busy_dates`: the days still
        being uploaded, from a tick that drained the subscription (every other day is
        quiet: its flight's upload is over); None when the tick did not see everything.
        A photo backing off after a failed run waits until its `not_before`."""
        # The query and the claim's update on one connection (a DuckDB file opened once).
        with self.warehouse.batch():
            pending = self.query(
                "SELECT position_id, date, min(received_at) AS first_received"
                " FROM image_arrivals WHERE run_key IS NULL"
                " AND (not_before IS NULL OR not_before <= %s) GROUP BY position_id, date",
                [now],
            )
            claims: list[Claim] = []
            if not pending.height:
                return claims
            for (date,), day in pending.sort("first_received", "position_id").group_by(
                "date", maintain_order=True
            ):
                rows = day.rows(named=True)
                for start in range(0, len(rows), max_photos):
                    batch = rows[start : start + max_photos]
                    waited = now - as_utc(batch[0]["first_received"])
                    quiet = busy_dates is not None and date not in busy_dates
                    if len(batch) < max_photos and waited < max_wait and not quiet:
                        break
                    positions = tuple(sorted(row["position_id"] for row in batch))
                    claims.append(Claim(_run_key(date, positions, now), date, positions))
            self.warehouse.execute(
                [
                    (
                        "UPDATE image_arrivals SET run_key = %s, attempts = attempts + 1"
                        f" WHERE run_key IS NULL AND date = %s"
                        f" AND position_id IN ({_in(claim.positions)})",
                        [claim.run_key, claim.date, *claim.positions],
                    )
                    for claim in claims
                ]
            )
            return claims

    # ------------------------------------------------------------------ runs

    def stranded(self, start: dt.date, end: dt.date) -> pl.DataFrame:
        """Photos of the days handed to a run that Dagster stored, which never ingested them:
        no `drone_images` row at their generation and no newer announcement of the photo.
        Columns position_id, date, generation, run_key. Whether their run is still going is
        the Dagster instance's to say."""
        return self.not_ingested(
            start,
            end,
            "a.position_id, a.date, a.generation, a.run_key",
            "a.requested_at IS NOT NULL AND a.dead_lettered_at IS NULL",
        )

    def not_ingested(
        self, start: dt.date, end: dt.date, columns: str, condition: str
    ) -> pl.DataFrame:
        """`columns` of the days' arrivals `a` matching `condition` that are the photo's
        latest announcement and have no `drone_images` row at their generation."""
        return self.query(
            f"SELECT {columns} FROM image_arrivals AS a WHERE ({condition})"
            " AND a.date BETWEEN %s AND %s"
            " AND NOT EXISTS (SELECT 1 FROM drone_images AS i WHERE i.position_id ="
            " a.position_id AND i.date = a.date AND i.generation = a.generation)"
            " AND NOT EXISTS (SELECT 1 FROM image_arrivals AS n WHERE n.position_id ="
            " a.position_id AND n.date = a.date AND n.received_at > a.received_at)"
            " ORDER BY a.date, a.position_id",
            [start, end],
        )

    def recorded_positions(self, date: dt.date) -> list[str]:
        """Every position with a photo of `date` the platform has recorded (announced or
        already ingested): what a run of the whole day processes. No bucket listing."""
        frame = self.query(
            "SELECT position_id FROM image_arrivals WHERE date = %s AND dead_lettered_at IS NULL"
            " UNION SELECT position_id FROM drone_images WHERE date = %s",
            [date, date],
        )
        return sorted(frame["position_id"].to_list()) if frame.height else []

    def announcements(self, date: dt.date, positions: Sequence[str]) -> dict[str, HeldMessage]:
        """Per position, the latest announced generation of its photo of `date`."""
        if not positions:
            return {}
        frame = self.query(
            "SELECT position_id, generation, message_id, published_at, message_data,"
            " message_attributes, received_at FROM image_arrivals"
            f" WHERE date = %s AND position_id IN ({_in(positions)})",
            [date, *positions],
        )
        latest: dict[str, HeldMessage] = {}
        for row in frame.sort("received_at").iter_rows(named=True):
            latest[row["position_id"]] = HeldMessage(
                data=base64.b64decode(row["message_data"] or ""),
                attributes=json.loads(row["message_attributes"] or "{}"),
                generation=row["generation"],
                message_id=row["message_id"],
                published_at=row["published_at"],
            )
        return latest

    def pending_count(self) -> int:
        """Photos not yet handed to a run that Dagster stored."""
        return self._count("requested_at IS NULL")

    def waiting_count(self) -> int:
        """Photos waiting for a batch (not claimed by any run yet)."""
        return self._count("run_key IS NULL")

    def _count(self, condition: str) -> int:
        frame = self.query(f"SELECT count(*) AS n FROM image_arrivals WHERE {condition}")
        return int(frame["n"][0])


def _run_key(date: dt.date, positions: Sequence[str], now: dt.datetime) -> str:
    # The claim time makes a retried claim of the same photos a new run.
    digest = hashlib.sha1(
        "\n".join([date.isoformat(), now.isoformat(), *positions]).encode()
    ).hexdigest()
    return f"{PHOTO_RUN_KEY_PREFIX}{date.isoformat()}-{digest[:16]}"


def as_utc(value: dt.datetime) -> dt.datetime:
    """A warehouse timestamp as an aware datetime (DuckDB may give a naive UTC one)."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _arrival_rows(arrivals: Sequence[Arrival], now: dt.datetime) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "position_id": [a.key.position_id for a in arrivals],
            "date": [a.key.date for a in arrivals],
            "generation": [a.generation for a in arrivals],
            "image_uri": [a.image_uri for a in arrivals],
            "message_id": [a.message.message_id for a in arrivals],
            "published_at": [publish_datetime(a.message.publish_time) for a in arrivals],
            "message_data": [base64.b64encode(a.message.data).decode() for a in arrivals],
            "message_attributes": [json.dumps(a.message.attributes) for a in arrivals],
            "received_at": [now] * len(arrivals),
            "run_key": [None] * len(arrivals),
            "requested_at": [None] * len(arrivals),
            "attempts": [0] * len(arrivals),
            **{column: [None] * len(arrivals) for column in IMAGE_ARRIVALS_TABLE.added_columns},
        },
        schema=IMAGE_ARRIVALS_TABLE.polars_schema,
    )


def _ack_rows(arrivals: Sequence[Arrival], now: dt.datetime) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ack_id": [a.message.ack_id for a in arrivals],
            "position_id": [a.key.position_id for a in arrivals],
            "date": [a.key.date for a in arrivals],
            "generation": [a.generation for a in arrivals],
            "pulled_at": [now] * len(arrivals),
        },
        schema=ARRIVAL_ACKS_TABLE.polars_schema,
    ).unique("ack_id", keep="last")


def publish_datetime(value: str) -> dt.datetime | None:
    """A Pub/Sub publish time (ISO 8601) as an aware datetime; None when absent."""
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
