"""The whole queue-driven pipeline through the real dagster-daemon and real emulators."""

import collections
import datetime as dt
import functools
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterInstance,
    RunsFilter,
)
from fsspec import AbstractFileSystem

from farm_platform.admin.configured import configured_registry
from farm_platform.admin.instance import prepare_dagster_home
from farm_platform.config import (
    DAGSTER_HOME,
    DRONE_IMAGE_TOPIC,
    FARM_BATCH_QUIET_SECONDS,
    FARM_FIELD_MAP,
    FARM_SENSOR_INTERVAL_SECONDS,
    FARM_WAREHOUSE,
    IMAGE_LOCATION,
)
from farm_platform.images.keys import DRONE_IMAGES, GRADES_BY_DISEASE, LEAF_CROPS
from farm_platform.images.run_tags import PHOTOS_TAG
from farm_platform.layout import bucket_filesystem
from farm_platform.quality.expectations import IMAGE_QUALITY
from farm_platform.resources.tables import DISEASE_GRADES_COLUMNS
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import (
    DaemonProcess,
    ended_tick_id,
    wait_for_photos,
    wait_for_ticks,
    workspace_of,
)
from farm_platform_dev.simulate import DroneMessagePublisher, FarmConfig, write_farm

pytestmark = pytest.mark.slow
IMAGE_ASSETS = [DRONE_IMAGES, LEAF_CROPS, *GRADES_BY_DISEASE.values()]


class Platform:
    """A private DAGSTER_HOME, warehouse and field map on the session's emulators."""

    def __init__(self, stack, root: Path, warehouse_url: str | None = None):
        self.stack = stack
        self.root = root
        self.dagster_home = root / "dagster"
        prepare_dagster_home(self.dagster_home, quick_polling=True)
        self.field_map = root / "positions.csv"
        self.warehouse = WarehouseResource(
            url=warehouse_url or f"duckdb:///{root / 'warehouse.duckdb'}"
        )
        self.environment = {
            **stack.environment(),
            FARM_WAREHOUSE: self.warehouse.url,
            FARM_FIELD_MAP: str(self.field_map),
            DAGSTER_HOME: str(self.dagster_home),
            # The daemon's fastest sensor loop: tests wait on every tick.
            FARM_SENSOR_INTERVAL_SECONDS: "5",
            # The simulated farms upload in one burst: their days are quiet at once.
            FARM_BATCH_QUIET_SECONDS: "1",
        }

    @functools.cached_property
    def fs(self) -> AbstractFileSystem:
        """The bucket's filesystem, made when first used: gcsfs reads STORAGE_EMULATOR_HOST
        then, and without it looks for Google credentials (~15 s here) and the real GCS."""
        return bucket_filesystem(self.stack.bucket_url())[0]

    def daemon(self) -> DaemonProcess:
        """The daemon over the image location alone: these tests grade photos, and the
        analytics location (its schedule fires once a day) would only add a code server
        that the daemon starts again at every workspace reload (each minute)."""
        workspace = workspace_of([IMAGE_LOCATION], self.root / "workspace.yaml")
        return DaemonProcess(
            self.dagster_home, self.environment, self.root / "daemon.log", workspace
        )

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(str(self.dagster_home))

    def record_active_models(self) -> None:
        """Record the registry's active versions on the instance, in this process, as the
        model_registry_sensor's first run does on a fresh one: the daemon then starts on a
        platform that has run before, and its first image run does not queue behind a model
        run (a run process, ~5 s). The fresh instance's model run is the model story's and
        the demo's."""
        from dagster import materialize

        from farm_platform.config import FARM_MODELS_DIR
        from farm_platform.images.registered_models import registered_models
        from farm_platform_dev.farm import farm_resources

        resources = farm_resources(
            self.stack.bucket_url(), self.warehouse.url, self.environment.get(FARM_MODELS_DIR)
        )
        with self.instance() as instance:
            assert materialize([registered_models], instance=instance, resources=resources).success

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

    def wait(self, instance: DagsterInstance, photos: int, daemon: DaemonProcess) -> None:
        wait_for_photos(instance, self.warehouse, photos, timeout_seconds=300, daemon=daemon)


@pytest.fixture
def platform(local_stack, default_subscription, tmp_path, monkeypatch):
    for name, value in local_stack.environment().items():
        monkeypatch.setenv(name, value)
    platform = Platform(local_stack, tmp_path)
    platform.record_active_models()
    return platform


def saw_duplicates_or_requested_runs(tick: Any) -> bool:
    """A drone_image_sensor tick that counted a redelivered photo as a duplicate, or that
    requested a run (which the caller's assertion of no new run then fails)."""
    duplicates = re.search(r"\b[1-9]\d* duplicates", tick.skip_reason or "")
    return bool(tick.run_ids) or duplicates is not None


def image_runs(instance: DagsterInstance) -> list:
    return [
        record.dagster_run
        for record in instance.get_run_records(RunsFilter())
        if PHOTOS_TAG in record.dagster_run.tags
    ]


def materializations_per_partition(instance: DagsterInstance, key: AssetKey) -> collections.Counter:
    records = instance.fetch_materializations(key, limit=10_000).records
    return collections.Counter(record.partition_key for record in records)


def runs_per_day(instance: DagsterInstance) -> collections.Counter:
    return collections.Counter(run.tags["dagster/partition"] for run in image_runs(instance))


def check_evaluations(instance: DagsterInstance, asset: AssetKey, check_name: str) -> list:
    return [
        record.event.dagster_event.event_specific_data
        for record in instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset, check_name), limit=1000
        )
    ]


def assert_no_duplicate_keys(platform: Platform) -> None:
    for table, key in (
        ("drone_images", "position_id, date"),
        ("leaf_crops", "position_id, date, cropper_model_version, leaf_crop_idx"),
        (
            "disease_grades",
            "position_id, date, leaf_crop_idx, disease_type, disease_model_version",
        ),
    ):
        doubled = platform.rows(
            f"SELECT {key}, count(*) AS n FROM {table} GROUP BY {key} HAVING count(*) > 1"
        )
        assert doubled.height == 0, (table, doubled)


def assert_grades_match_crops(platform: Platform) -> int:
    crops = platform.rows("SELECT * FROM leaf_crops")
    grades = platform.rows("SELECT * FROM disease_grades")
    assert crops.height > 0
    assert grades.height == crops.height * 5
    assert set(grades.columns) == set(DISEASE_GRADES_COLUMNS)
    per_disease = grades.group_by("disease_type").len()
    assert sorted(per_disease["disease_type"].to_list()) == sorted(GRADES_BY_DISEASE)
    assert set(per_disease["len"].to_list()) == {crops.height}
    active = configured_registry().active_versions()
    for row in (
        grades.select("disease_type", "disease_model_id", "disease_model_version")
        .unique()
        .iter_rows(named=True)
    ):
        assert row["disease_model_id"] == f"{row['disease_type']}_grader"
        assert row["disease_model_version"] == active[row["disease_model_id"]]
    assert set(grades["cropper_model_version"]) == {active["leaf_detector"]}
    return crops.height


def test_simulated_farm_bad_messages_and_a_reupload_end_to_end(
    platform, subscriber, publisher, dead_letters, drain
):
    """One daemon through three stories: a farm with broken uploads and bad messages, a
    repeated message, and a photo uploaded again later the same day. Each assertion's
    message names its story: one scenario, not three daemons and three setups."""
    config = FarmConfig(positions=4, days=2, start_date=dt.date(2026, 11, 1), seed=7)
    images = platform.simulate(config)
    topic = subscriber.topic_path(platform.stack.project, DRONE_IMAGE_TOPIC)
    bad = upload_broken_photos_and_publish_bad_messages(platform, publisher, topic)

    with platform.daemon() as daemon, platform.instance() as instance:
        platform.wait(instance, images + 4, daemon)
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

        graded_by_day_and_broken_photos_held_back(platform, instance, runs, images)
        a_repeated_message_is_no_new_work(platform, instance, daemon, publisher, topic, runs)
        a_reupload_replaces_the_photo_rows(platform, instance, daemon, images)


def upload_broken_photos_and_publish_bad_messages(platform, publisher, topic) -> dict[str, bytes]:
    """Two unreadable photos beside two good ones of a third day, and one message of each
    kind that cannot become a photo (reason -> data)."""
    bucket = platform.stack.bucket_url()
    # Photos that exist but cannot be read: found by the run, not by the sensor.
    platform.fs.pipe_file(f"{bucket}/P001/2026-11-03/image.png", b"")
    platform.fs.pipe_file(f"{bucket}/P002/2026-11-03/image.png", b"\x89PNG but truncated")
    # ... beside two good photos of the same day (copies of the day before).
    for position in ("P000", "P003"):
        data = platform.fs.cat_file(f"{bucket}/{position}/2026-11-02/image.png")
        platform.fs.pipe_file(f"{bucket}/{position}/2026-11-03/image.png", data)
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
    return bad


def graded_by_day_and_broken_photos_held_back(platform, instance, runs, images) -> None:
    # Sixteen messages (a notification and a drone message per photo) plus two broken
    # uploads became one run per day (a day's arrivals can straddle two batches).
    days = runs_per_day(instance)
    assert sorted(days) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert set(days.values()) <= {1, 2}
    assert materializations_per_partition(instance, DRONE_IMAGES) == days
    assert sum(int(run.tags[PHOTOS_TAG]) for run in runs) == images + 4
    assert_no_duplicate_keys(platform)

    assert_grades_match_crops(platform)
    simulated = platform.rows("SELECT count(*) AS n FROM leaf_crops WHERE date < '2026-11-03'")
    truth = pl.read_parquet(platform.root / "ground_truth" / "leaves.parquet")
    assert abs(simulated["n"][0] - truth.height) <= 0.1 * truth.height
    for uri in platform.rows("SELECT crop_uri FROM leaf_crops")["crop_uri"]:
        assert platform.fs.exists(uri), uri
    broken = platform.rows("SELECT position_id, error FROM drone_images WHERE error IS NOT NULL")
    assert sorted(broken["position_id"]) == ["P001", "P002"]
    # ... and the day's image_quality check fails naming exactly those positions.
    checks = check_evaluations(instance, DRONE_IMAGES, IMAGE_QUALITY)
    assert len(checks) == len(runs)  # one evaluation per day run, not per photo
    assert all(check.target_materialization_data is not None for check in checks)
    failed = [check for check in checks if not check.passed]
    assert [check.partition for check in failed] == ["2026-11-03"]
    assert failed[0].metadata["failed_positions"].value == ["P001", "P002"]
    # A bad photo holds back only itself: the day's other grades pass their checks.
    quality = platform.rows(
        "SELECT position_id, passed FROM partition_quality"
        " WHERE date = '2026-11-03' AND check_name = 'grades_valid'"
    )
    assert quality.height == 5 * 2 and quality["passed"].all()
    assert set(quality["position_id"]) == {"P000", "P003"}


def a_repeated_message_is_no_new_work(platform, instance, daemon, publisher, topic, runs) -> None:
    """The same message again is not new work."""
    bucket = platform.stack.bucket_url()
    again = json.dumps({"image_uri": f"{bucket}/P000/2026-11-01/image.png"}).encode()
    before = ended_tick_id(instance)
    publisher.publish(topic, again).result(timeout=10)
    # The tick that pulls it counts it a duplicate and requests nothing (a tick that
    # requests a run ends the wait too, and fails the assertion).
    wait_for_ticks(
        instance,
        daemon,
        1,
        120,
        after=before,
        where=saw_duplicates_or_requested_runs,
    )
    assert len(image_runs(instance)) == len(runs)


def a_reupload_replaces_the_photo_rows(platform, instance, daemon, images) -> None:
    """Later, P000 is photographed again on its first day (a new generation of its
    object): the day's next run replaces the photo's rows, it adds none."""
    bucket = platform.stack.bucket_url()
    day = "2026-11-01"
    photo = f"position_id = 'P000' AND date = DATE '{day}'"
    first_generation = platform.rows(f"SELECT generation FROM drone_images WHERE {photo}")
    runs_of_day = runs_per_day(instance)[day]
    data = platform.fs.cat_file(f"{bucket}/P001/{day}/image.png")
    platform.fs.pipe_file(f"{bucket}/P000/{day}/image.png", data)
    deadline = time.monotonic() + 120
    while runs_per_day(instance)[day] == runs_of_day:
        assert time.monotonic() < deadline, f"no run for the re-upload\n{daemon.log_tail()}"
        time.sleep(1)
    platform.wait(instance, images + 4, daemon)
    assert materializations_per_partition(instance, DRONE_IMAGES)[day] == runs_of_day + 1
    again = platform.rows(f"SELECT generation, sha256 FROM drone_images WHERE {photo}")
    assert again.height == 1, f"the re-upload added a row: {again}"
    assert again["generation"][0] != first_generation["generation"][0]
    same_as = f"position_id = 'P001' AND date = DATE '{day}'"
    assert (
        again["sha256"][0]
        == platform.rows(f"SELECT sha256 FROM drone_images WHERE {same_as}")["sha256"][0]
    ), "the re-upload's row is not the new photo's"
    assert_no_duplicate_keys(platform)
    assert_grades_match_crops(platform)


# The daemon killed after a tick requested a run is in `make test`'s time as
# test_faults_e2e.py's "daemon" case; this variant (more photos arrive while it is down, and
# two ticks of redeliveries must start nothing) runs with `make test-faults`.
@pytest.mark.fault_campaign
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
            platform.wait(instance, images, restarted)
            runs = len(image_runs(instance))
            # Two more ticks: redeliveries must not start more work.
            wait_for_ticks(instance, restarted, 2, 120)
            assert len(image_runs(instance)) == runs
            assert platform.rows("SELECT count(*) AS n FROM drone_images")["n"][0] == images
            assert sorted(runs_per_day(instance)) == ["2026-11-10", "2026-11-11", "2026-11-12"]
            assert_no_duplicate_keys(platform)
            assert_grades_match_crops(platform)
        daemon.stop(kill=True)  # the first daemon's orphaned children, if any
