"""Runs of a day partition, in this process, on a real DuckDB file and a folder bucket:
whole-day runs, chunked streaming, concurrent runs of one day, grades-only re-grades."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

from farm_platform.admin.configured import configured_registry
from farm_platform.layout import ImageKey
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform_dev.farm import (
    GradedFarm,
    copy_farm,
    grade_simulated_farm,
    materialize_day,
)
from farm_platform_dev.simulate import FarmConfig
from farm_platform_dev.simulate.render import png_header_only

CONFIG = FarmConfig(positions=3, days=1, seed=21)
DAY = CONFIG.dates[0].isoformat()
CROP_KEY = ["position_id", "leaf_crop_idx"]
GRADE_KEY = ["position_id", "leaf_crop_idx", "disease_type"]


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> GradedFarm:
    return grade_simulated_farm(CONFIG, tmp_path_factory.mktemp("day_runs") / "farm")


def table(resources: dict[str, object], name: str, order: list[str]) -> pl.DataFrame:
    return resources["warehouse"].query(f"SELECT * FROM {name}").sort(order)


def test_a_run_without_a_photo_list_processes_every_recorded_photo_of_its_day(graded, tmp_path):
    resources = copy_farm(graded, tmp_path)
    before = table(resources, "drone_images", ["position_id"])
    # A photo in the bucket that no message announced and no run recorded: the whole-day
    # run works from what the platform recorded and never lists the bucket.
    bucket = resources["bucket"]
    stray = bucket.image_uri(ImageKey("P999", CONFIG.dates[0]))
    bucket.write(stray, bucket.read(bucket.image_uri(ImageKey("P000", CONFIG.dates[0]))))

    assert materialize_day(resources, DAY)  # no positions: the whole day

    after = table(resources, "drone_images", ["position_id"])
    assert after["position_id"].to_list() == before["position_id"].to_list()
    assert set(after["dagster_run_id"]).isdisjoint(set(before["dagster_run_id"]))
    grades = table(resources, "disease_grades", GRADE_KEY)
    assert grades.height == 5 * table(resources, "leaf_crops", CROP_KEY).height
    assert grades.select(GRADE_KEY).is_unique().all()


def test_a_runs_chunk_size_and_severity_jump_are_its_run_config_else_the_policys():
    """The sensor writes the policy's values into each run's config (the launchpad shows
    them); a run given its own values uses them; one given none falls back to the policy."""
    from farm_platform.config import ConfigError
    from farm_platform.images.run_config import OP_NAME, PhotoRunConfig, photo_run_config

    policy = IngestPolicyResource(run_chunk_photos=5, max_severity_jump=0.5)
    written = photo_run_config(["P000"], policy)["ops"][OP_NAME]["config"]
    assert written == {"positions": ["P000"], "chunk_photos": 5, "max_severity_jump": 0.5}
    assert photo_run_config(["P000"])["ops"][OP_NAME]["config"] == {"positions": ["P000"]}
    unset = PhotoRunConfig()
    assert (unset.chunk(policy), unset.severity_jump(policy)) == (5, 0.5)
    assert (unset.chunk(IngestPolicyResource()), unset.severity_jump(IngestPolicyResource())) == (
        64,
        1.5,
    )
    own = PhotoRunConfig(chunk_photos=2, max_severity_jump=3.0)
    assert (own.chunk(policy), own.severity_jump(policy)) == (2, 3.0)
    with pytest.raises(ConfigError, match="FARM_RUN_CHUNK_PHOTOS=0"):
        PhotoRunConfig(chunk_photos=0).chunk(policy)


def test_chunk_size_does_not_change_a_single_row(graded, tmp_path):
    resources = copy_farm(graded, tmp_path)
    # One photo at a time, three chunks (FARM_RUN_CHUNK_PHOTOS=1 in a deployment).
    resources["ingest_policy"] = IngestPolicyResource(run_chunk_photos=1)
    assert materialize_day(resources, DAY, ["P000", "P001", "P002"])
    numbers = ["x0", "y0", "x1", "y1", "score"]
    chunked = table(resources, "leaf_crops", CROP_KEY).drop("crop_uri")
    whole = graded.warehouse.query("SELECT * FROM leaf_crops").sort(CROP_KEY).drop("crop_uri")
    assert chunked.drop(numbers).equals(whole.drop(numbers))
    for column in numbers:
        assert (chunked[column] - whole[column]).abs().max() < 1e-4
    grades = ["position_id", "leaf_crop_idx", "disease_type", "predicted_grade"]
    assert (
        table(resources, "disease_grades", GRADE_KEY)
        .select(grades)
        .equals(
            graded.warehouse.query("SELECT * FROM disease_grades").sort(GRADE_KEY).select(grades)
        )
    )


@pytest.mark.slow
def test_two_runs_of_one_day_at_once_write_each_photo_once(graded, tmp_path):
    """Two run processes of the same day against one DuckDB file: the second waits for the
    file lock instead of failing, and each photo's rows replace the other's."""
    resources = copy_farm(graded, tmp_path)
    program = (
        "import sys; from farm_platform_dev.farm import farm_resources, materialize_day; "
        "ok = materialize_day(farm_resources(sys.argv[1], sys.argv[2]), sys.argv[3], "
        "sys.argv[4].split(',') if sys.argv[4] else None); sys.exit(0 if ok else 1)"
    )
    arguments = [resources["bucket"].url, resources["warehouse"].url, DAY]
    runs = [
        subprocess.Popen([sys.executable, "-c", program, *arguments, positions])
        for positions in ("", "P000,P002")  # the whole day, and a batch of two photos
    ]
    assert [run.wait(timeout=600) for run in runs] == [0, 0]
    images = table(resources, "drone_images", ["position_id"])
    assert images["position_id"].to_list() == ["P000", "P001", "P002"]
    crops = table(resources, "leaf_crops", CROP_KEY)
    assert crops.select(CROP_KEY).is_unique().all()
    assert crops.height == graded.warehouse.query("SELECT * FROM leaf_crops").height
    grades = table(resources, "disease_grades", GRADE_KEY)
    assert grades.select(GRADE_KEY).is_unique().all() and grades.height == 5 * crops.height


def test_a_grades_only_run_regrades_the_stored_crops(graded, tmp_path):
    resources = copy_farm(graded, tmp_path)
    crops_before = table(resources, "leaf_crops", CROP_KEY)
    grades_before = table(resources, "disease_grades", GRADE_KEY)

    assert materialize_day(resources, DAY, selection=["disease_3_grades"])

    assert table(resources, "leaf_crops", CROP_KEY).equals(crops_before)  # detector not run
    grades = table(resources, "disease_grades", GRADE_KEY)
    regraded = grades.filter(pl.col("disease_type") == "disease_3")
    assert regraded.height == crops_before.height
    old_runs = set(grades_before["dagster_run_id"])
    assert set(regraded["dagster_run_id"]).isdisjoint(old_runs)
    others = grades.filter(pl.col("disease_type") != "disease_3")
    assert set(others["dagster_run_id"]) <= old_runs
    assert regraded["predicted_grade"].to_list() == (
        grades_before.filter(pl.col("disease_type") == "disease_3")["predicted_grade"].to_list()
    )


def encoded(mode: str, size: tuple[int, int], kind: str) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=kind)
    return buffer.getvalue()


def test_unusable_photos_are_recorded_and_never_graded_and_the_rest_are(graded, tmp_path):
    resources = copy_farm(graded, tmp_path)
    bucket = resources["bucket"]
    unusable = {
        "P100": (encoded("RGB", (1, 1), "PNG"), "1×1 pixels"),
        "P101": (encoded("I;16", (256, 256), "PNG"), "pixel mode I;16"),
        "P102": (encoded("RGB", (256, 256), "JPEG"), "a JPEG file"),
        "P103": (png_header_only(40_000, 40_000), "decompression bomb"),
    }
    for position, (data, _) in unusable.items():
        bucket.write(bucket.image_uri(ImageKey(position, CONFIG.dates[0])), data)

    assert materialize_day(resources, DAY, ["P000", *unusable, "P002"])

    images = table(resources, "drone_images", ["position_id"])
    errors = dict(zip(images["position_id"], images["error"], strict=True))
    for position, (_, reason) in unusable.items():
        assert errors[position] and reason in errors[position], errors[position]
    assert errors["P000"] is None and errors["P002"] is None
    crops = table(resources, "leaf_crops", CROP_KEY)
    assert not set(unusable) & set(crops["position_id"])
    quality = resources["warehouse"].query(
        "SELECT position_id, passed FROM partition_quality WHERE check_name = 'image_quality'"
    )
    failed = sorted(quality.filter(~pl.col("passed"))["position_id"])
    assert failed == sorted(unusable)


def test_reconcile_hands_unannounced_photos_to_the_queue_and_lists_ungraded_ones(graded, tmp_path):
    import datetime as dt

    from dagster import DagsterInstance

    from farm_platform.admin.reconcile import reconcile
    from farm_platform.ingest.arrivals import ArrivalQueue

    resources = copy_farm(graded, tmp_path)
    bucket, warehouse = resources["bucket"], resources["warehouse"]
    day, next_day = CONFIG.dates[0], CONFIG.dates[0] + dt.timedelta(days=1)
    # A photo uploaded while its notification was lost: in the bucket, nowhere else.
    lost = ImageKey("P001", next_day)
    bucket.write(bucket.image_uri(lost), bucket.read(bucket.image_uri(ImageKey("P001", day))))
    # A photo whose disease_3 grades are missing.
    warehouse.execute(
        [
            (
                "DELETE FROM disease_grades WHERE position_id = 'P000' AND disease_type = %s",
                ["disease_3"],
            )
        ]
    )
    graders = [
        (card.id, card.version)
        for card in configured_registry().active_cards().values()
        if card.task == "disease_grader"
    ]
    positions = ["P000", "P001", "P002"]

    instance = DagsterInstance.ephemeral()
    result = reconcile(bucket, warehouse, positions, day, next_day, graders, instance, None)

    assert result.in_bucket == 4
    assert result.recorded == [lost]
    assert result.ungraded == [ImageKey("P000", day)]
    again = reconcile(bucket, warehouse, positions, day, next_day, graders, instance, None)
    assert again.recorded == []  # the queue knows it now
    # The sensor's next claim hands it to a run, which grades it.
    queue = ArrivalQueue(warehouse)
    now = dt.datetime.now(dt.UTC)
    (claim,) = queue.claim(2000, dt.timedelta(seconds=15), now, busy_dates=set())
    assert (claim.date, claim.positions) == (next_day, ("P001",))
    assert materialize_day(resources, next_day.isoformat(), list(claim.positions))
    graded_lost = warehouse.query(
        "SELECT count(*) AS n FROM disease_grades WHERE date = %s", [next_day]
    )["n"][0]
    assert graded_lost > 0


@pytest.mark.parametrize("selection", [None, ["disease_3_grades"], ["drone_images", "leaf_crops"]])
def test_a_run_reports_every_check_it_selected(graded, tmp_path, selection):
    """Dagster warns "did not yield or return expected outputs" on a run page when an op
    omits a selected check's result; a healthy run must not show it."""
    from dagster import DagsterEventType, DagsterInstance

    resources = copy_farm(graded, tmp_path)
    with DagsterInstance.ephemeral() as instance:
        assert materialize_day(resources, DAY, instance=instance, selection=selection)
        (run,) = instance.get_runs()
        messages = [record.message for record in instance.all_logs(run.run_id)]
        evaluations = instance.all_logs(run.run_id)
    assert not [m for m in messages if "did not yield or return expected outputs" in m]
    checked = [
        record
        for record in evaluations
        if record.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    assert checked, "the run evaluated no check at all"
    # The check outcomes went to partition_quality, whose asset records the day.
    quality = [
        record.asset_materialization
        for record in evaluations
        if record.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION
        and record.asset_materialization.asset_key.to_user_string() == "partition_quality"
    ]
    assert [event.partition for event in quality] == [DAY]
    # Every asset the run materialized says where its models ran (the inference resource).
    materialized = [
        record.asset_materialization.metadata
        for record in evaluations
        if record.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION
        and record.asset_materialization.asset_key.to_user_string() != "partition_quality"
    ]
    assert materialized
    assert all(metadata["inference"].value == "local" for metadata in materialized)
    assert all(metadata["models_ran"].value.startswith("in this run") for metadata in materialized)


def test_a_run_that_fails_after_committing_some_photos_says_so_on_the_day(graded, tmp_path):
    """The bucket refuses the last photo's crops (a file stands where their folder goes):
    the run fails after the other photos' rows were committed. The day's drone_images
    asset then carries an observation saying how many photos' rows stand, so the UI does
    not show a bare FAILURE beside rows that are in the warehouse."""
    import shutil
    from pathlib import Path

    from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

    resources = copy_farm(graded, tmp_path)
    resources["ingest_policy"] = IngestPolicyResource(run_chunk_photos=1)  # a commit per photo
    root = Path(resources["bucket"].root.removeprefix("file://"))
    in_the_way = root / "P002" / DAY / configured_registry().detector().id
    shutil.rmtree(in_the_way)
    in_the_way.write_text("not a folder")

    with DagsterInstance.ephemeral() as instance:
        assert not materialize_day(resources, DAY, ["P000", "P001", "P002"], instance=instance)
        (failed,) = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
        committed = (
            resources["warehouse"]
            .query(
                "SELECT position_id FROM drone_images WHERE dagster_run_id = %s ORDER BY 1",
                [failed.run_id],
            )["position_id"]
            .to_list()
        )
        assert committed == ["P000", "P001"]
        (observation,) = [
            record.asset_observation
            for record in instance.fetch_observations(AssetKey("drone_images"), limit=5).records
        ]
    assert observation.partition == DAY
    assert observation.metadata["committed_photos"].value == 2
    assert observation.metadata["photos"].value == 3
    assert "failed after committing the rows of 2 of its 3 photo(s)" in observation.description
