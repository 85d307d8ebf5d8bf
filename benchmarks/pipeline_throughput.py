"""End-to-end throughput of the queue-driven pipeline against the bare model path.

    python benchmarks/pipeline_throughput.py [--images 200 1000] [--positions 50]
        [--dagster-postgres-url postgresql://user@host:port/db] [--event-batch-size 1000]

For each N: render N simulated photos, start the local emulators and the real
dagster-daemon on a fresh DAGSTER_HOME, upload the photos (the GCS emulator notifies
`drone_image`), and time from the first upload until every disease grade of every photo
is in the DuckDB warehouse. On the same photos, in the same process, it then times the
bare model path (decode → detect → crop → 5 graders, batch 32) and the sensor's ingest
alone (one `ingest_tick` over N messages of each form, no inference). Peak memory of a run
is the highest RSS seen for any run worker, sampled every 0.2 s: the code server starts each
run in a `multiprocessing` spawn child, so those are the processes sampled.

Dagster's own storage is SQLite in a temporary DAGSTER_HOME, or with
`--dagster-postgres-url` production's PostgreSQL (an empty database and one N: the runs
of the instance are counted); `--event-batch-size` sets
DAGSTER_EVENT_BATCH_SIZE, which makes dagster-postgres write materialization and planned
events in batches.

Where the time goes: it also counts the events Dagster stored for the image runs (per
image: one materialization per asset and one evaluation per asset check per partition,
plus their "planned" events) and prints the orchestration cost per image — end-to-end
seconds per image minus the bare model path's.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bare_model_path import measure_bare_path
from dagster import DagsterInstance

from farm_platform import settings
from farm_platform.assets.keys import DRONE_IMAGES, GRADES_BY_DISEASE, LEAF_CROPS
from farm_platform.bucket import bucket_filesystem
from farm_platform.daemon import DaemonProcess, prepare_dagster_home, wait_for_partitions
from farm_platform.field_map import write_field_map
from farm_platform.ingest import IngestCursor, ingest_tick
from farm_platform.layout import join
from farm_platform.partitions import PARTITION_RANGE_START_TAG
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.pubsub import PubSubResource
from farm_platform.simulate import FarmConfig, field_map, simulate_images
from farm_platform.simulate.publish import DroneMessagePublisher, captured_at
from farm_platform.stack import LocalStack

IMAGE_ASSETS = [DRONE_IMAGES, LEAF_CROPS, *GRADES_BY_DISEASE.values()]


class RunMemorySampler(threading.Thread):
    """Highest RSS of any Dagster run worker (a spawned child of the code server)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if b"spawn_main" not in (proc / "cmdline").read_bytes():
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
                except OSError:
                    continue


def create_subscription(stack, name: str) -> str:
    from farm_platform.stack import pubsub_subscriber

    subscriber = pubsub_subscriber(stack.pubsub_host)
    path = subscriber.subscription_path(stack.project, name)
    topic = subscriber.topic_path(stack.project, settings.DRONE_IMAGE_TOPIC)
    subscriber.create_subscription(
        request={"name": path, "topic": topic, "ack_deadline_seconds": 600}
    )
    return name


def ingest_rate(stack, subscription: str, positions: list[str], expected: int) -> float:
    pubsub = PubSubResource(project=stack.project, subscription=subscription)
    bucket = BucketResource(url=stack.bucket_url())
    cursor, pulled, seconds = IngestCursor(), 0, 0.0
    while pulled < expected:
        outcome = ingest_tick(cursor, pubsub, bucket, positions, positions)
        if not outcome.stats.pulled:
            break
        cursor, pulled = outcome.cursor, pulled + outcome.stats.pulled
        seconds += outcome.stats.seconds
    return pulled / seconds if seconds else 0.0


def bench(
    n_images: int, positions: int, workdir: Path, postgres_url: str | None = None
) -> dict[str, float]:
    days = math.ceil(n_images / positions)
    config = FarmConfig(positions=positions, days=days, seed=5)
    photos = list(simulate_images(config))[:n_images]
    pngs = [photo.png for photo in photos]
    print(f"\n== N = {len(photos)} photos ({positions} positions × {days} days)", flush=True)

    with LocalStack() as stack:
        dagster_home = workdir / f"dagster-{n_images}"
        prepare_dagster_home(dagster_home, postgres_url=postgres_url)
        field_map_path = write_field_map(field_map(config), workdir / f"positions-{n_images}.csv")
        environment = {
            **stack.environment(),
            settings.FARM_WAREHOUSE: f"duckdb:///{workdir / f'warehouse-{n_images}.duckdb'}",
            settings.FARM_FIELD_MAP: str(field_map_path),
        }
        os.environ.update(environment)
        notifications = create_subscription(stack, f"bench-notify-{uuid.uuid4().hex[:8]}")
        drone_messages = create_subscription(stack, f"bench-drone-{uuid.uuid4().hex[:8]}")
        fs, root = bucket_filesystem(stack.bucket_url())
        sampler = RunMemorySampler()
        with (
            DaemonProcess(dagster_home, environment, workdir / f"daemon-{n_images}.log") as daemon,
            DagsterInstance.from_config(str(dagster_home)) as instance,
        ):
            time.sleep(20)  # the daemon loads the code location and records the models
            sampler.start()
            started = time.perf_counter()
            fs.pipe({join(root, photo.key.relative_path()): photo.png for photo in photos})
            wait_for_partitions(instance, IMAGE_ASSETS, len(photos), 3600, daemon, poll_seconds=1)
            end_to_end = time.perf_counter() - started
            sampler.stopped.set()
            runs = instance.get_runs_count()
            events = sum(
                len(instance.all_logs(record.dagster_run.run_id))
                for record in instance.get_run_records()
                if record.dagster_run.tags.get(PARTITION_RANGE_START_TAG)
            )

        publisher = DroneMessagePublisher(stack.project)
        for index, photo in enumerate(photos):
            uri = f"{stack.bucket_url()}/{photo.key.relative_path()}"
            publisher.publish(uri, photo.key, "bench-drone", captured_at(photo.key, index))
        publisher.flush()
        ids = [p.position_id for p in field_map(config)]
        notification_rate = ingest_rate(stack, notifications, ids, len(photos))
        drone_rate = ingest_rate(stack, drone_messages, ids, len(photos))

    bare = measure_bare_path(pngs, batch_size=32)
    pipeline_rate = len(photos) / end_to_end
    figures = {
        "images": len(photos),
        "runs": runs,
        "end_to_end_images_per_s": pipeline_rate,
        "bare_images_per_s": bare["images_per_s"],
        "ratio": pipeline_rate / bare["images_per_s"],
        "ingest_notifications_per_s": notification_rate,
        "ingest_drone_messages_per_s": drone_rate,
        "peak_run_rss_mb": sampler.peak_mb,
        "dagster_events_per_image": events / len(photos),
        "orchestration_ms_per_image": 1000 * (1 / pipeline_rate - 1 / bare["images_per_s"]),
    }
    for name, value in figures.items():
        print(
            f"  {name:32s} {value:10.2f}"
            if isinstance(value, float)
            else f"  {name:32s} {value:10d}"
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--positions", type=int, default=50)
    parser.add_argument("--dagster-postgres-url", help="Dagster storage in PostgreSQL")
    parser.add_argument("--event-batch-size", type=int, default=0, help="DAGSTER_EVENT_BATCH_SIZE")
    args = parser.parse_args()
    if args.dagster_postgres_url and len(args.images) > 1:
        parser.error("with --dagster-postgres-url give one --images N (runs are counted per DB)")
    if args.event_batch_size:
        os.environ["DAGSTER_EVENT_BATCH_SIZE"] = str(args.event_batch_size)
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as workdir:
        for n_images in args.images:
            bench(n_images, args.positions, Path(workdir), args.dagster_postgres_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
