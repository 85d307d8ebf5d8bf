"""The whole queue-driven pipeline through the real dagster-daemon and real emulators."""

import collections
import datetime as dt
import json
import os
import signal
import time
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterInstance,
    RunsFilter,
)

from farm_platform import settings
from farm_platform.assets.images import DRONE_IMAGES_READABLE
from farm_platform.assets.keys import DRONE_IMAGES, GRADES_BY_DISEASE, LEAF_CROPS
from farm_platform.bucket import bucket_filesystem
from farm_platform.daemon import DaemonProcess, prepare_dagster_home, wait_for_partitions
from farm_platform.ml.registry import ModelRegistry
from farm_platform.resources.warehouse import DISEASE_GRADES_COLUMNS, WarehouseResource
from farm_platform.sensors.drone_image_sensor import IMAGES_TAG
from farm_platform.simulate import DroneMessagePublisher, FarmConfig, write_farm

pytestmark = pytest.mark.slow
IMAGE_ASSETS = [DRONE_IMAGES, LEAF_CROPS, *GRADES_BY_DISEASE.values()]


class Platform:
    """A private DAGSTER_HOME, warehouse and field map on the session's emulators."""

    def __init__(self, stack, root: Path):
        self.stack = stack
        self.root = root
        self.dagster_home = root / "dagster"
        prepare_dagster_home(self.dagster_home)
        self.field_map = root / "positions.csv"
        self.warehouse = WarehouseResource(url=f"duckdb:///{root / 'warehouse.duckdb'}")
        self.environment = {
            **stack.environment(),
            settings.FARM_WAREHOUSE: self.warehouse.url,
            settings.FARM_FIELD_MAP: str(self.field_map),
            settings.DAGSTER_HOME: str(self.dagster_home),
        }
        self.fs, _ = bucket_filesystem(stack.bucket_url())

    def daemon(self) -> DaemonProcess:
        return DaemonProcess(self.dagster_home, self.environment, self.root / "daemon.log")

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(str(self.dagster_home))

    def simulate(self, config: FarmConfig) -> int:
        summary = write_farm(
            config,
            self.stack.bucket_url(),
            self.field_map,
            DroneMessagePublisher(self.stack.project),
            truth_url=str(self.root / "ground_truth"),
        )
        return summary.images

    def rows(self, sql: str) -> pl.DataFrame:
        return self.warehouse.query(sql)


@pytest.fixture
def platform(local_stack, default_subscription, tmp_path, monkeypatch):
    for name, value in local_stack.environment().items():
        monkeypatch.setenv(name, value)
    return Platform(local_stack, tmp_path)


def image_runs(instance: DagsterInstance) -> list:
    return [
        record.dagster_run
        for record in instance.get_run_records(RunsFilter())
        if IMAGES_TAG in record.dagster_run.tags
    ]


def materializations_per_partition(instance: DagsterInstance, key: AssetKey) -> collections.Counter:
    records = instance.fetch_materializations(key, limit=10_000).records
    return collections.Counter(record.partition_key for record in records)


def assert_grades_match_crops(platform: Platform) -> int:
    crops = platform.rows("SELECT * FROM leaf_crops")
    grades = platform.rows("SELECT * FROM disease_grades")
    assert crops.height > 0
    assert grades.height == crops.height * 5
    assert set(grades.columns) == set(DISEASE_GRADES_COLUMNS)
    per_disease = grades.group_by("disease_type").len()
    assert sorted(per_disease["disease_type"].to_list()) == sorted(GRADES_BY_DISEASE)
    assert set(per_disease["len"].to_list()) == {crops.height}
    active = ModelRegistry().active_versions()
    for row in (
        grades.select("disease_type", "disease_model_id", "disease_model_version")
        .unique()
        .iter_rows(named=True)
    ):
        assert row["disease_model_id"] == f"{row['disease_type']}_grader"
        assert row["disease_model_version"] == active[row["disease_model_id"]]
    assert set(grades["cropper_model_version"]) == {active["leaf_detector"]}
    return crops.height


def test_simulated_farm_and_bad_messages_end_to_end(
    platform, subscriber, publisher, dead_letters, drain
):
    config = FarmConfig(positions=4, days=2, start_date=dt.date(2026, 11, 1), seed=7)
    images = platform.simulate(config)
    bucket = platform.stack.bucket_url()
    # Photos that exist but cannot be read: found by the run, not by the sensor.
    platform.fs.pipe_file(f"{bucket}/P001/2026-11-03/image.png", b"")
    platform.fs.pipe_file(f"{bucket}/P002/2026-11-03/image.png", b"\x89PNG but truncated")
    topic = subscriber.topic_path(platform.stack.project, settings.DRONE_IMAGE_TOPIC)
    bad = {
        "not JSON": b"\x00garbage",
        "no image_uri": json.dumps({"drone_id": "d1"}).encode(),
        "outside the layout": json.dumps({"image_uri": f"{bucket}/P000/x.png"}).encode(),
        "bad date": json.dumps({"image_uri": f"{bucket}/P000/2026-11-31/image.png"}).encode(),
        "disagrees": json.dumps(
            {"image_uri": f"{bucket}/P000/2026-11-01/image.png", "date": "2026-11-02"}
        ).encode(),
        "unknown position": json.dumps(
            {"image_uri": f"{bucket}/P777/2026-11-01/image.png"}
        ).encode(),
        "does not exist": json.dumps({"image_uri": f"{bucket}/P003/2026-11-04/image.png"}).encode(),
    }
    for data in bad.values():
        publisher.publish(topic, data, source="e2e-test").result(timeout=10)

    with platform.daemon() as daemon, platform.instance() as instance:
        wait_for_partitions(instance, IMAGE_ASSETS, images + 2, timeout_seconds=300, daemon=daemon)
        runs = image_runs(instance)

        letters = drain(dead_letters, quiet_seconds=5)
        errors = [letter.attributes["error"] for letter in letters]
        for reason in bad:
            assert sum(reason in error for error in errors) == 1, (reason, errors)
        assert sum("empty" in error for error in errors) == 1
        assert sum("corrupt" in error for error in errors) == 1
        assert len(letters) == len(bad) + 2
        for letter in letters:
            if "source" in letter.attributes:  # the bad messages: originals kept
                assert bytes(letter.data) in bad.values()

        # Sixteen messages (a notification and a drone message per photo) plus two broken
        # uploads became a handful of runs, each image processed once.
        assert 1 <= len(runs) <= 3
        assert set(materializations_per_partition(instance, DRONE_IMAGES).values()) == {1}

        leaves = assert_grades_match_crops(platform)
        truth = pl.read_parquet(platform.root / "ground_truth" / "leaves.parquet")
        assert abs(leaves - truth.height) <= 0.1 * truth.height
        for uri in platform.rows("SELECT crop_uri FROM leaf_crops")["crop_uri"]:
            assert platform.fs.exists(uri), uri
        broken = platform.rows(
            "SELECT position_id, error FROM drone_images WHERE error IS NOT NULL"
        )
        assert sorted(broken["position_id"]) == ["P001", "P002"]
        # ... and exactly those partitions fail drone_images' `readable` check.
        checks = [
            record.event.dagster_event.event_specific_data
            for record in instance.event_log_storage.get_asset_check_execution_history(
                AssetCheckKey(DRONE_IMAGES, DRONE_IMAGES_READABLE), limit=1000
            )
        ]
        assert len(checks) == images + 2
        assert sorted(check.partition for check in checks if not check.passed) == [
            "2026-11-03|P001",
            "2026-11-03|P002",
        ]

        # The same message again is not new work.
        again = json.dumps({"image_uri": f"{bucket}/P000/2026-11-01/image.png"}).encode()
        publisher.publish(topic, again).result(timeout=10)
        time.sleep(35)  # three sensor ticks
        assert len(image_runs(instance)) == len(runs)


def test_daemon_killed_after_a_tick_loses_and_duplicates_nothing(platform, subscriber):
    config = FarmConfig(positions=4, days=2, start_date=dt.date(2026, 11, 10), seed=11)
    images = platform.simulate(config)

    with platform.instance() as instance:
        daemon = platform.daemon().start()
        deadline = time.monotonic() + 120
        while not image_runs(instance):
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.5)
        # The tick that requested the run is stored; its messages are not yet acknowledged.
        os.kill(daemon.process.pid, signal.SIGKILL)
        daemon.process.wait()

        # While the daemon is down, more photos arrive.
        later = FarmConfig(positions=4, days=1, start_date=dt.date(2026, 11, 12), seed=11)
        images += platform.simulate(later)

        with platform.daemon() as restarted:
            wait_for_partitions(
                instance, IMAGE_ASSETS, images, timeout_seconds=300, daemon=restarted
            )
            time.sleep(25)  # two more ticks: redeliveries must not start more work
            counts = materializations_per_partition(instance, DRONE_IMAGES)
            assert len(counts) == images
            assert set(counts.values()) == {1}, counts
            assert_grades_match_crops(platform)
        daemon.stop(kill=True)  # the first daemon's orphaned children, if any
