"""Incremental dbt builds: morning by morning, each build equals a full refresh."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from dbt_farm import (
    CONTROL,
    DAYS,
    TOLERANCE,
    TREATED,
    Farm,
    dbt_build,
    farm_fixture,  # noqa: F401 (the fixture `farm`)
    load_warehouse,
    photographed,
)
from polars.testing import assert_frame_equal

from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.farm import dbt_workdir, invoke_dbt_build
from farm_platform_dev.postgres import fresh_database

# --------------------------------------------------------------------------- incremental builds
#
# The synthetic farm written morning by morning, as the image runs write it, with
# `dbt build` after each morning; after every build each mart must equal, row for row, a
# `dbt build --full-refresh` of the same warehouse. The mornings bring a late first photo,
# a backfilled (re-graded) day, a photo re-graded with fewer leaves, partitions held back
# (one of them a position's first day) and a switch of the active grader version.
#
# The data tests run on each test's last build only: the builds before it check the
# incremental logic, which equality with a full refresh decides (data tests are functions
# of the tables, and equal tables pass or fail them alike), and the last state holds every
# event of the ones before it (late photo, backfill, held-back partitions, version switch).
# The data tests on every model's full build are test_build_succeeds_with_every_test_passing's.

# Every table a report or a later model reads that the incremental build maintains or
# derives from incremental tables.
INCREMENTAL_OUTPUTS = (
    "daily_severity",
    "coverage",
    "position_trajectories",
    "treatment_effect",
    "model_version_agreement",
    "model_version_confusion",
    "model_version_effects",
    "int_position_day_by_version",
    "int_version_pairs_by_day",
)
LATE_PHOTO = ("T2", DAYS[0])  # uploaded two days late: T2's first graded day moves back
LAST_MORNING = "nothing new"


def _stamped(frame: pl.DataFrame, column: str, at: datetime) -> pl.DataFrame:
    """`frame` stamped `at`, as a run stamps the rows it writes."""
    return frame.with_columns(pl.lit(at, dtype=pl.Datetime("us", "UTC")).alias(column))


def _day_photos(day: date) -> list[tuple[str, date]]:
    """The photos of `day` the image runs write that morning (T2's first one comes late)."""
    return [(p, day) for p in CONTROL + TREATED if photographed(p, day) and (p, day) != LATE_PHOTO]


def _photo_rows(farm: Farm, photos: list[tuple[str, date]]) -> dict:
    """The rows the image pipeline writes for `photos`, stamped now: the time the run
    starts grading them (it may commit them later)."""
    now = datetime.now(UTC)
    keys = pl.DataFrame(
        {"position_id": [p for p, _ in photos], "date": [d for _, d in photos]},
        schema={"position_id": pl.String, "date": pl.Date},
    )
    return {
        "drone_images": _stamped(
            farm.drone_images.join(keys, on=["position_id", "date"]), "ingested_at", now
        ),
        "leaf_crops": farm.leaf_crops.join(keys, on=["position_id", "date"]),
        "disease_grades": _stamped(
            farm.disease_grades.join(keys, on=["position_id", "date"]), "graded_at", now
        ),
    }


def _write(url: str, rows: dict[str, pl.DataFrame]) -> None:
    WarehouseResource(url=url).replace_many([(table, frame, None) for table, frame in rows.items()])


def _hold_back(url: str, position: str, day: date) -> None:
    """A failed blocking check on `position`'s disease_0 grades of `day`, as the quality
    gate records it."""
    quality = pl.DataFrame(
        {
            "position_id": [position],
            "date": [day],
            "asset": ["disease_0_grades"],
            "check_name": ["grades_valid"],
            "passed": [False],
            "severity": ["ERROR"],
            "details": ["{}"],
            "checked_at": [datetime.now(UTC)],
            "dagster_run_id": ["run-quality"],
        }
    )
    WarehouseResource(url=url).replace_rows("partition_quality", quality)


def _outputs(url: str) -> dict[str, pl.DataFrame]:
    """Every incremental output, rows sorted by every column (a canonical order)."""
    frames = {}
    for table in INCREMENTAL_OUTPUTS:
        frame = WarehouseResource(url=url).query(f"SELECT * FROM {table}")
        frames[table] = frame.sort(frame.columns, nulls_last=True)
    return frames


def _assert_same_outputs(incremental: dict, full: dict, when: str) -> None:
    for table in INCREMENTAL_OUTPUTS:
        try:
            # Equal up to float summation order (DuckDB aggregates in parallel).
            assert_frame_equal(
                incremental[table], full[table], check_exact=False, rel_tol=0, abs_tol=TOLERANCE
            )
        except AssertionError as error:
            message = f"after {when}: {table} differs from a full refresh: {error}"
            raise AssertionError(message) from None


def _changed_days(url: str) -> list[date]:
    return (
        WarehouseResource(url=url)
        .query("SELECT date FROM int_changed_days ORDER BY date")["date"]
        .to_list()
    )


def _empty_warehouse(url: str, farm: Farm) -> None:
    """The warehouse's tables, the registry and no photo yet."""
    load_warehouse(
        url,
        farm.__class__(
            farm.positions,
            *(f.clear() for f in (farm.drone_images, farm.leaf_crops, farm.disease_grades)),
        ),
    )


def _mornings(farm: Farm, url: str) -> Iterator[tuple[str, set[date] | None]]:
    """Write the farm morning by morning; yield after each morning its name and the dates
    an incremental build must rebuild (None: every date)."""
    _empty_warehouse(url, farm)
    _write(url, _photo_rows(farm, _day_photos(DAYS[0])))
    yield "day 0 without T2's photo", None  # the first build: every date
    _write(url, _photo_rows(farm, _day_photos(DAYS[1])))
    yield "day 1", {DAYS[1]}
    # Two new days in one morning (a missed build), and a late photo of the first day.
    _write(url, _photo_rows(farm, _day_photos(DAYS[2])))
    _write(url, _photo_rows(farm, [LATE_PHOTO]))
    _write(url, _photo_rows(farm, _day_photos(DAYS[3])))
    yield "days 2 and 3 and T2's late first photo of day 0", {DAYS[0], DAYS[2], DAYS[3]}

    # Backfill of day 1: disease_0 re-graded with the same models (its rows replaced, one
    # grade lower on every leaf of the treated area, C0 now with three leaves instead of four).
    day1 = _photo_rows(farm, _day_photos(DAYS[1]))
    grades = day1["disease_grades"].filter(
        (pl.col("disease_type") == "disease_0")
        & ~((pl.col("position_id") == "C0") & (pl.col("leaf_crop_idx") == 3))
    )
    grades = grades.with_columns(
        predicted_grade=pl.when(pl.col("position_id").str.starts_with("T"))
        .then((pl.col("predicted_grade") - 1).clip(0, 3))
        .otherwise(pl.col("predicted_grade"))
    )
    # Every photo keeps at least one leaf, so the frame names every (photo, models) it
    # replaces: C0's fourth leaf goes with the rest of its old rows.
    WarehouseResource(url=url).replace_many([("disease_grades", grades, None)])
    yield "backfill of day 1", {DAYS[1]}

    # The quality gate holds back T1's disease_0 on day 2, and T3's on day 0, its first day.
    _hold_back(url, "T1", DAYS[2])
    _hold_back(url, "T3", DAYS[0])
    yield "held back: T1 on day 2, T3 on its first day", {DAYS[0], DAYS[2]}

    # The old disease_3 grader is made active again: every date changes.
    with WarehouseResource(url=url).connect() as connection:
        connection.execute(
            "UPDATE model_versions SET active = (version = 'v1') "
            "WHERE model_id = 'disease_3_grader'"
        )
    yield "disease_3 v1 active again", None

    yield LAST_MORNING, set()


def _incremental_project(farm: Farm, destination: Path) -> Path:
    """The dbt project with no late-commit margin: this test's rows all commit at once, and
    with a margin the rows written just before a build would be taken again by the next."""
    return dbt_workdir(farm.positions, destination, {"late_commit_margin_minutes": 0})


def _assert_equals_a_full_refresh(project: Path, url: str, full_url: str, when: str) -> None:
    """`dbt build --full-refresh` of `full_url` (a copy of `url`) gives every incremental
    output of `url`, row for row. The reference needs only the models (the data tests are
    the incremental builds' concern, see above)."""
    full = invoke_dbt_build(
        project, full_url, full_refresh=True, tests=False, target="target_full_refresh"
    )
    assert full.success, (when, sorted(full.failed()))
    _assert_same_outputs(_outputs(url), _outputs(full_url), when)


@contextlib.contextmanager
def _warehouse_and_copy(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, Callable[[str], str]]]:
    """An empty warehouse of `db` and a function that copies it, for a full refresh beside
    the incremental one."""
    if db == "duckdb":

        def copy_duckdb(url: str) -> str:
            source = WarehouseResource(url=url).duckdb_path
            target = tmp_path / "full_refresh.duckdb"
            for suffix in ("", ".wal"):
                target.with_name(target.name + suffix).unlink(missing_ok=True)
                if source.with_name(source.name + suffix).exists():
                    shutil.copyfile(
                        source.with_name(source.name + suffix),
                        target.with_name(target.name + suffix),
                    )
            return f"duckdb:///{target}"

        yield f"duckdb:///{tmp_path / 'warehouse.duckdb'}", copy_duckdb
        return
    import psycopg

    postgres_url = request.getfixturevalue("postgres_url")
    base, _, _ = postgres_url.rpartition("/")

    def copy_postgres(url: str) -> str:
        # CREATE DATABASE … TEMPLATE copies the warehouse (no one else may be connected).
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS farm_full_refresh WITH (FORCE)")
            admin.execute("CREATE DATABASE farm_full_refresh TEMPLATE farm_incremental")
        return f"{base}/farm_full_refresh"

    yield fresh_database(postgres_url, "farm_incremental"), copy_postgres


@pytest.mark.slow
@pytest.mark.parametrize("db", ["duckdb", "postgres"])
def test_incremental_builds_equal_a_full_refresh(
    db: str, farm: Farm, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    project = _incremental_project(farm, tmp_path / "project")
    built_days: set[date] = set()
    with _warehouse_and_copy(db, tmp_path, request) as (url, copy_url):
        for when, expected_days in _mornings(farm, url):
            build = dbt_build(project, url, tests=when == LAST_MORNING)
            assert build.success, (when, sorted(build.failed()))
            written = set(
                WarehouseResource(url=url).query("SELECT DISTINCT date FROM disease_grades")["date"]
            )
            built_days |= written
            assert set(_changed_days(url)) == (
                built_days if expected_days is None else expected_days
            ), when
            full_url = copy_url(url)
            _assert_equals_a_full_refresh(project, url, full_url, when)
            assert set(_changed_days(full_url)) == built_days, when


@pytest.mark.slow
@pytest.mark.parametrize("db", ["duckdb", "postgres"])
def test_rows_committed_after_a_build_they_predate_are_rebuilt_next(
    db: str, farm: Farm, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The late-commit margin. A run stamps its rows when it starts grading (t0) and commits
    them later; a build that starts in between (t1 > t0) does not see them and becomes the
    watermark, so the next build must take rows stamped before t1 again. Here a run grades
    day 2 and T2's late first photo of day 0 (its whole curve moves) and commits after a
    build: the next build rebuilds both dates and equals a full refresh. With the margin at
    0 it rebuilds nothing and the marts lack day 2."""
    project = dbt_workdir(farm.positions, tmp_path / "project")  # the shipped margin
    with _warehouse_and_copy(db, tmp_path, request) as (url, copy_url):
        _empty_warehouse(url, farm)
        _write(url, _photo_rows(farm, _day_photos(DAYS[0]) + _day_photos(DAYS[1])))
        build = dbt_build(project, url, tests=False)
        assert build.success, sorted(build.failed())

        uncommitted = _photo_rows(farm, _day_photos(DAYS[2]) + [LATE_PHOTO])  # stamped t0
        stamped_at = uncommitted["disease_grades"]["graded_at"].max()
        build = dbt_build(project, url, tests=False)  # starts at t1, before the run commits
        assert build.success, sorted(build.failed())
        watermark = build.query("SELECT build_started_at FROM analytics_watermark").item()
        assert watermark > stamped_at, "the build must start after the rows were stamped"
        _write(url, uncommitted)

        build = dbt_build(project, url)
        assert build.success, sorted(build.failed())
        assert {DAYS[0], DAYS[2]} <= set(_changed_days(url))
        _assert_equals_a_full_refresh(project, url, copy_url(url), "a commit after a build")


@pytest.mark.slow
@pytest.mark.parametrize("db", ["duckdb", "postgres"])
def test_a_partial_build_leaves_the_watermark_for_the_models_it_left_out(
    db: str, farm: Farm, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A build of some incremental models (a `--select`, a subset materialized in the UI)
    that includes analytics_watermark must not advance it: the models it left out would
    then never rebuild the days that changed. The next complete build takes them and
    equals a full refresh."""
    project = _incremental_project(farm, tmp_path / "project")
    subset = ["+daily_severity", "+coverage", "analytics_watermark"]

    with _warehouse_and_copy(db, tmp_path, request) as (url, copy_url):

        def watermark() -> pl.DataFrame:
            return WarehouseResource(url=url).query("SELECT * FROM analytics_watermark")

        _empty_warehouse(url, farm)
        _write(url, _photo_rows(farm, _day_photos(DAYS[0])))
        partial = invoke_dbt_build(project, url, select=subset, tests=False)
        assert partial.success, sorted(partial.failed())
        assert watermark().is_empty()  # no complete build yet
        build = dbt_build(project, url, tests=False)
        assert build.success, sorted(build.failed())
        assert set(_changed_days(url)) == {DAYS[0]}
        after_complete = watermark()
        assert after_complete.height == 1

        _write(url, _photo_rows(farm, _day_photos(DAYS[1])))
        partial = invoke_dbt_build(project, url, select=subset, tests=False)
        assert partial.success, sorted(partial.failed())
        assert_frame_equal(watermark(), after_complete)

        build = dbt_build(project, url)
        assert build.success, sorted(build.failed())
        assert set(_changed_days(url)) == {DAYS[1]}
        assert watermark()["build_started_at"].item() > after_complete["build_started_at"].item()
        when = "a partial build, then a complete one"
        _assert_equals_a_full_refresh(project, url, copy_url(url), when)
