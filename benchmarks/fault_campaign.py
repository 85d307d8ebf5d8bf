"""The fault campaign: break the running platform on purpose and count what survives.

    python benchmarks/fault_campaign.py [--photos 8] [--only NAME ...]
    python benchmarks/fault_campaign.py --production [--photos 8] [--only NAME ...]

Each fault gets a fresh local stack, DAGSTER_HOME and DuckDB warehouse, the real
dagster-daemon, and a simulated day of `--photos` photos announced by their GCS
notifications (plus whatever the fault adds). After the fault, the platform recovers
without a human; then the table says, per fault: photos sent, photos graded (a
`drone_images` row with crops and grades of every disease), photos dead-lettered, photos
lost (neither), and photos doubled (a key with more than one row), plus bad messages sent
and dead-lettered.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from docs_table import add_write_docs_flag, write_docs

from farm_platform import config
from farm_platform.admin.instance import prepare_dagster_home
from farm_platform.images.run_tags import PHOTOS_TAG
from farm_platform.layout import ImageKey, join
from farm_platform.resources.field_map import write_field_map
from farm_platform.resources.pubsub import PubSubResource
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import (
    DaemonProcess,
    wait_for_failed_tick,
    wait_for_photos,
    wait_for_sensor_tick_in_progress,
)
from farm_platform_dev.emulators import pubsub_publisher, pubsub_subscriber
from farm_platform_dev.local_stack import LocalStack
from farm_platform_dev.postgres import PostgresServer
from farm_platform_dev.processes import kill_now, processes_in_group
from farm_platform_dev.simulate import FarmConfig, field_map, simulate_images
from farm_platform_dev.simulate.render import png_header_only

sys.path.insert(0, str(Path(__file__).resolve().parent))
from production_faults import PRODUCTION_FAULTS, run_production_faults  # noqa: E402

DAY = dt.date(2026, 11, 20)


@dataclass
class Campaign:
    """One fault's platform: stack, daemon, warehouse and what was sent."""

    local_stack: LocalStack
    workdir: Path
    photos: int
    daemon: DaemonProcess | None = None
    bad_sent: int = 0
    # The warehouse: a DuckDB file in workdir, unless a PostgreSQL server is given.
    postgres: PostgresServer | None = None

    def __post_init__(self) -> None:
        assert self.local_stack.info is not None, "start the LocalStack first"
        self.stack = self.local_stack.info
        self.config = FarmConfig(positions=self.photos, days=1, start_date=DAY, seed=31)
        self.dagster_home = self.workdir / "dagster"
        prepare_dagster_home(self.dagster_home, quick_polling=True)
        self.warehouse = WarehouseResource(
            url=self.postgres.url
            if self.postgres
            else f"duckdb:///{self.workdir / 'warehouse.duckdb'}"
        )
        positions = write_field_map(field_map(self.config), self.workdir / "positions.csv")
        self.environment = {
            **self.stack.environment(),
            config.FARM_WAREHOUSE: self.warehouse.url,
            config.FARM_FIELD_MAP: str(positions),
            config.FARM_RUN_TIMEOUT_SECONDS: "20",
            config.FARM_WAREHOUSE_LOCK_SECONDS: "3",
        }
        os.environ.update(self.environment)
        self.subscriber = pubsub_subscriber(self.stack.pubsub_host)
        self.dead = self.subscriber.subscription_path(self.stack.project, "campaign-dead")
        self.subscribe_to_dead_letters()

    def subscribe_to_dead_letters(self) -> None:
        topic = self.subscriber.topic_path(self.stack.project, config.DEAD_LETTER_TOPIC)
        self.subscriber.create_subscription(request={"name": self.dead, "topic": topic})

    def start_daemon(self) -> DaemonProcess:
        log = self.workdir / "daemon.log"
        self.daemon = DaemonProcess(self.dagster_home, self.environment, log).start()
        return self.daemon

    def upload(self, extra: dict[str, bytes] | None = None) -> None:
        from farm_platform.layout import bucket_filesystem

        fs, root = bucket_filesystem(self.stack.bucket_url())
        objects = {join(root, p.key.relative_path()): p.png for p in simulate_images(self.config)}
        objects.update({join(root, path): data for path, data in (extra or {}).items()})
        fs.pipe(objects)

    def publish(self, messages: list[tuple[bytes, dict[str, str]]], bad: bool = True) -> None:
        publisher = pubsub_publisher(self.stack.pubsub_host)
        topic = publisher.topic_path(self.stack.project, config.DRONE_IMAGE_TOPIC)
        for data, attributes in messages:
            publisher.publish(topic, data, **attributes).result(timeout=30)
        if bad:
            self.bad_sent += len(messages)

    def dead_letters(self) -> list[Any]:
        from google.api_core.exceptions import DeadlineExceeded

        letters: list[Any] = []
        while True:
            try:
                response = self.subscriber.pull(
                    request={"subscription": self.dead, "max_messages": 1000}, timeout=3
                )
            except DeadlineExceeded:
                return letters
            if not response.received_messages:
                return letters
            letters += [m.message for m in response.received_messages]
            self.subscriber.acknowledge(
                request={
                    "subscription": self.dead,
                    "ack_ids": [m.ack_id for m in response.received_messages],
                }
            )


def first_image_run(instance: DagsterInstance, statuses: list[DagsterRunStatus]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        records = instance.get_run_records(RunsFilter(statuses=statuses))
        if any(PHOTOS_TAG in record.dagster_run.tags for record in records):
            return
        time.sleep(0.2)
    raise RuntimeError(f"no image run became {statuses}")


def kill_worker(campaign: Campaign, instance: DagsterInstance, *markers: str) -> None:
    """kill -9 of the run worker and the processes named by the other `markers` (each
    must be found: a fault that kills nothing tests nothing)."""
    first_image_run(instance, [DagsterRunStatus.STARTED])
    group = campaign.daemon.process.pid
    deadline = time.monotonic() + 60
    while not processes_in_group(group, markers[0]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {markers[0]!r} process to kill")
        time.sleep(0.2)
    victims = [pid for marker in markers for pid in processes_in_group(group, marker)]
    missing = [marker for marker in markers if not processes_in_group(group, marker)]
    if missing:
        raise RuntimeError(f"no {missing} process to kill")
    kill_now(victims)


def fault_kill_worker(campaign: Campaign, instance: DagsterInstance) -> None:
    kill_worker(campaign, instance, "spawn_main")


def fault_kill_worker_and_code_server(campaign: Campaign, instance: DagsterInstance) -> None:
    kill_worker(campaign, instance, "spawn_main", "api grpc")


def fault_kill_daemon_mid_run(campaign: Campaign, instance: DagsterInstance) -> None:
    first_image_run(instance, [DagsterRunStatus.STARTED])
    campaign.daemon.stop(kill=True)
    campaign.start_daemon()


def fault_kill_daemon_mid_tick(campaign: Campaign, instance: DagsterInstance) -> None:
    assert campaign.daemon is not None
    wait_for_sensor_tick_in_progress(instance, campaign.daemon, campaign.upload, 120)
    campaign.daemon.stop(kill=True)
    campaign.start_daemon()


def fault_restart_pubsub(campaign: Campaign, instance: DagsterInstance) -> None:
    """The emulator dies right after the day's uploads (their unread notifications die with
    it), one photo is uploaded again while it is down, then it restarts empty and the day
    is reconciled."""
    from farm_platform.admin.reconcile import reconcile
    from farm_platform.resources.bucket import BucketResource

    campaign.local_stack.kill_pubsub_emulator()
    bucket = BucketResource(url=campaign.stack.bucket_url())
    again = ImageKey("P000", DAY)
    bucket.write(bucket.image_uri(again), bucket.read(bucket.image_uri(again)))
    time.sleep(15)  # an outage across a sensor tick or two
    campaign.local_stack.recover()
    campaign.subscribe_to_dead_letters()
    positions = [f"P{i:03d}" for i in range(campaign.photos)]
    pubsub = PubSubResource(project=campaign.stack.project)
    reconcile(bucket, campaign.warehouse, positions, DAY, DAY, [], instance, pubsub)


def fault_lock_warehouse(campaign: Campaign, instance: DagsterInstance) -> None:
    """Another process holds the DuckDB file from the run's start until the requeue sensor
    has failed on it too: the warehouse is down exactly when the failed run's photos must
    be put back."""
    first_image_run(instance, [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTED])
    holder = duckdb.connect(str(campaign.warehouse.duckdb_path))
    try:
        first_image_run(instance, [DagsterRunStatus.FAILURE])
        wait_for_failed_tick(instance, campaign.daemon, "requeue_failed_photos", 180)
    finally:
        holder.close()


def fault_kill_postgres(campaign: Campaign, instance: DagsterInstance) -> None:
    """The PostgreSQL warehouse killed (-9, every backend) as the day's run starts, kept
    down until the requeue sensor has failed on it, then restarted on the same data."""
    assert campaign.postgres is not None
    first_image_run(instance, [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
    campaign.postgres.kill()
    try:
        first_image_run(instance, [DagsterRunStatus.FAILURE])
        wait_for_failed_tick(instance, campaign.daemon, "requeue_failed_photos", 180)
    finally:
        campaign.postgres.restart()


def fault_poison_messages(campaign: Campaign, instance: DagsterInstance) -> None:
    bucket = campaign.stack.bucket_url().removeprefix("gs://")
    notification = {"eventType": "OBJECT_FINALIZE", "bucketId": bucket}
    real = ImageKey("P000", DAY).relative_path()
    campaign.publish(
        [
            (b"[" * 20_000 + b"]" * 20_000, {}),
            (b'{"image_uri": ' + b"7" * 5000 + b"}", {}),
            (b"x" * (5 * 1024 * 1024), {}),
            (b"{}", {**notification, "objectId": real, "objectGeneration": "\u00b2"}),
            (b"{}", {**notification, "objectId": real, "objectGeneration": "9" * 19}),
            (b"{}", {**notification, "objectId": "P001/2026-11-21/image.png"}),
        ]
    )
    # Not bad: a drone message that carries a stray bucketId attribute is still one.
    stray = json.dumps({"image_uri": f"gs://{bucket}/{real}"}).encode()
    campaign.publish([(stray, {"bucketId": "x"})], bad=False)


def fault_burst(campaign: Campaign, instance: DagsterInstance) -> None:
    """10,000 messages: each photo announced again and again, and bad ones between."""
    bucket = campaign.stack.bucket_url()
    good = [
        json.dumps({"image_uri": f"{bucket}/{ImageKey(f'P{i:03d}', DAY).relative_path()}"})
        for i in range(campaign.photos)
    ]
    messages = []
    for index in range(10_000):
        if index % 10 == 0:
            messages.append((json.dumps({"image_uri": f"{bucket}/nowhere.png"}).encode(), {}))
        else:
            messages.append((good[index % len(good)].encode(), {"copy": str(index)}))
    publisher = pubsub_publisher(campaign.stack.pubsub_host)
    topic = publisher.topic_path(campaign.stack.project, config.DRONE_IMAGE_TOPIC)
    futures = [publisher.publish(topic, data, **attrs) for data, attrs in messages]
    for future in futures:
        future.result(timeout=60)
    campaign.bad_sent += sum(1 for data, _ in messages if b"nowhere" in data)


BOMB_POSITION = "P001"
POSTGRES_FAULT = (
    "PostgreSQL warehouse killed -9 as a run starts, restarted after the requeue failed"
)


BEFORE_UPLOAD, AFTER_UPLOAD, UPLOADS_ITSELF = "before upload", "after upload", "uploads itself"
FAULTS: dict[str, tuple[Callable[[Campaign, DagsterInstance], None], str]] = {
    # name: (inject, when)
    "kill -9 run worker": (fault_kill_worker, AFTER_UPLOAD),
    "kill -9 run worker + code server": (fault_kill_worker_and_code_server, AFTER_UPLOAD),
    "kill -9 daemon mid-run": (fault_kill_daemon_mid_run, AFTER_UPLOAD),
    "kill -9 daemon mid-tick": (fault_kill_daemon_mid_tick, UPLOADS_ITSELF),
    "Pub/Sub emulator restarted mid-stream": (fault_restart_pubsub, AFTER_UPLOAD),
    "warehouse locked past its timeout, through the failed run's requeue": (
        fault_lock_warehouse,
        AFTER_UPLOAD,
    ),
    POSTGRES_FAULT: (fault_kill_postgres, AFTER_UPLOAD),
    "poison and forged messages": (fault_poison_messages, BEFORE_UPLOAD),
    "decompression bomb among good photos": (lambda campaign, instance: None, BEFORE_UPLOAD),
    "10,000-message burst of duplicates and bad messages": (fault_burst, AFTER_UPLOAD),
}


def run_fault(name: str, photos: int, workdir: Path) -> dict[str, Any]:
    inject, when = FAULTS[name]
    local_stack = LocalStack()
    local_stack.start()
    postgres = PostgresServer(durable=True).start() if name == POSTGRES_FAULT else None
    try:
        campaign = Campaign(local_stack, workdir, photos, postgres=postgres)
        bomb = name.startswith("decompression")
        extra = (
            {ImageKey(BOMB_POSITION, DAY).relative_path(): png_header_only(40_000, 40_000)}
            if bomb
            else None
        )
        campaign.start_daemon()
        with DagsterInstance.from_config(str(campaign.dagster_home)) as instance:
            try:
                if when == BEFORE_UPLOAD:
                    inject(campaign, instance)
                if when != UPLOADS_ITSELF:
                    campaign.upload(extra)
                if when in (AFTER_UPLOAD, UPLOADS_ITSELF):
                    inject(campaign, instance)
                wait_for_photos(
                    instance,
                    campaign.warehouse,
                    photos,
                    600,
                    campaign.daemon,
                    tolerate_failed_runs=True,
                )
                time.sleep(15)  # late redeliveries must not add work
                letters = campaign.dead_letters()
                failed_runs = len(
                    instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
                )
            finally:
                campaign.daemon.stop(kill=True)
        return tally(name, campaign, letters, failed_runs)
    finally:
        local_stack.stop()
        if postgres is not None:
            postgres.stop()


def tally(name: str, campaign: Campaign, letters: list[Any], failed_runs: int) -> dict[str, Any]:
    query = campaign.warehouse.query
    images = query("SELECT position_id, error FROM drone_images")
    graded = query(
        "SELECT position_id FROM disease_grades GROUP BY position_id"
        " HAVING count(DISTINCT disease_type) = 5"
    )["position_id"].to_list()
    no_leaves = query(
        "SELECT i.position_id FROM drone_images AS i WHERE i.error IS NULL AND NOT EXISTS"
        " (SELECT 1 FROM leaf_crops AS c WHERE c.position_id = i.position_id)"
    )["position_id"].to_list()
    unusable = images.filter(images["error"].is_not_null())["position_id"].to_list()
    grade_key = "position_id, date, leaf_crop_idx, disease_type, disease_model_version"
    doubled = query(
        f"SELECT count(*) AS n FROM (SELECT {grade_key} FROM disease_grades"
        f" GROUP BY {grade_key} HAVING count(*) > 1) AS doubled"
    )["n"][0]
    sent = campaign.photos
    accounted = set(graded) | set(no_leaves) | set(unusable)
    return {
        "fault": name,
        "photos sent": sent,
        "graded": len(set(graded) | set(no_leaves)),
        "unusable, dead-lettered": len(unusable),
        "lost": sent - len(accounted),
        "doubled rows": int(doubled),
        "bad messages sent": campaign.bad_sent,
        "dead letters": len(letters),
        "failed runs (recovered)": failed_runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument(
        "--only", nargs="*", choices=sorted([*FAULTS, *PRODUCTION_FAULTS]), help="default: all"
    )
    parser.add_argument(
        "--production",
        action="store_true",
        help="the rows of the production topology (benchmarks/production_faults.py) instead",
    )
    add_write_docs_flag(parser)
    args = parser.parse_args()
    rows = []
    if args.production:
        names = [name for name in args.only or PRODUCTION_FAULTS if name in PRODUCTION_FAULTS]
        rows = run_production_faults(names, args.photos)
    for name in [] if args.production else [n for n in args.only or FAULTS if n in FAULTS]:
        print(f"== {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix="farm-faults-") as workdir:
            rows.append(run_fault(name, args.photos, Path(workdir)))
        print("   " + ", ".join(f"{k}: {v}" for k, v in rows[-1].items() if k != "fault"))
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    if args.write_docs:  # the production topology's rows are a table of their own
        table = [[row[c] for c in columns] for row in rows]
        name = "fault_campaign-production" if args.production else "fault_campaign"
        write_docs(name, columns, table, note=f"{args.photos} photos of one day per fault.")
    return 0 if all(row["lost"] == 0 and row["doubled rows"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
