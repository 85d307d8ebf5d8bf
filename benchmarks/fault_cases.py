"""The faults of `benchmarks/fault_campaign.py` on the local stack: a `Campaign` (its stack,
daemon, warehouse and simulated day) and each way of breaking it."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

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
    wait_for_sensor_tick_in_progress,
)
from farm_platform_dev.emulators import pubsub_publisher, pubsub_subscriber
from farm_platform_dev.local_stack import LocalStack
from farm_platform_dev.postgres import PostgresServer
from farm_platform_dev.processes import kill_now, processes_in_group
from farm_platform_dev.simulate import FarmConfig, field_map, simulate_images

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
