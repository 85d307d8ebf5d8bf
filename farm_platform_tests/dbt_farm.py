"""The synthetic trial with a known answer that the dbt tests (test_dbt_*.py) build, and how
they run dbt on it, on DuckDB and PostgreSQL.

The synthetic farm: 7 control and 7 treated positions, 4 days, 4 leaves per photo.
disease_0 (grader v1): every position's mean grade falls 0.25/day in control and 0.75/day in
treated, plus per-position offsets that sum to zero within each area, so the
difference-in-differences effect is exactly -0.5 × days and the spread between positions is
not zero. disease_3: v1 (registered first, inactive) and v2 (active) grade the same leaves;
v2 has no treatment effect, v1 disagrees on one leaf per treated position on the last day.
Crops of an inactive detector version (v0) with all-healthy grades sit beside the active
ones. On the last day position C6 was not photographed and T6's photo is unreadable.

Each check computes its expectation independently of the SQL (plain Python over the rows
written).
"""

from __future__ import annotations

import contextlib
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.farm import DbtBuildOutcome, dbt_workdir, invoke_dbt_build
from farm_platform_dev.postgres import fresh_database

DAYS = [date(2024, 6, 3) + timedelta(days=d) for d in range(4)]
LAST_DAY = DAYS[-1]
LEAVES_PER_PHOTO = 4
CONTROL = [f"C{i}" for i in range(7)]
TREATED = [f"T{i}" for i in range(7)]
AREA = {**dict.fromkeys(CONTROL, "control"), **dict.fromkeys(TREATED, "treated")}
NOT_PHOTOGRAPHED = ("C6", LAST_DAY)
UNREADABLE = ("T6", LAST_DAY)
# Change per day of every position's mean grade, per area (disease_0).
SLOPE = {"control": -0.25, "treated": -0.75}
KNOWN_EFFECT_PER_DAY = -0.5
# Offsets (days ≥ 1) per position index; they sum to zero over indices 0..5 and index 6 is 0,
# so the area means stay on the slope even on the last day, when index 6 is missing.
OFFSET = {
    "control": [-0.25, 0.25, 0.0, 0.0, -0.25, 0.25, 0.0],
    "treated": [-0.5, 0.5, 0.25, -0.25, 0.0, 0.0, 0.0],
}
CROPPER = ("leaf_detector", "v1")
OLD_CROPPER = ("leaf_detector", "v0")
MODEL_VERSIONS = [
    # model_id, version, active, task, disease_type, recorded_at
    ("leaf_detector", "v0", False, "leaf_detector", None, "2024-05-01"),
    ("leaf_detector", "v1", True, "leaf_detector", None, "2024-05-20"),
    ("disease_0_grader", "v1", True, "disease_grader", "disease_0", "2024-05-01"),
    ("disease_1_grader", "v1", True, "disease_grader", "disease_1", "2024-05-01"),
    ("disease_2_grader", "v1", True, "disease_grader", "disease_2", "2024-05-01"),
    ("disease_3_grader", "v1", False, "disease_grader", "disease_3", "2024-05-01"),
    ("disease_3_grader", "v2", True, "disease_grader", "disease_3", "2024-06-10"),
    ("disease_4_grader", "v1", True, "disease_grader", "disease_4", "2024-05-01"),
]
MODEL_VERSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS model_versions (model_id TEXT NOT NULL, version TEXT NOT NULL, "
    "active BOOLEAN NOT NULL, task TEXT NOT NULL, disease_type TEXT, sha256 TEXT NOT NULL, "
    "recorded_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (model_id, version))"
)
TOLERANCE = 1e-9


# --------------------------------------------------------------------------- synthetic data


def leaf_grades(mean: float) -> list[int]:
    """Four integer grades (0..3) whose mean is `mean` (a multiple of 0.25)."""
    total = round(mean * LEAVES_PER_PHOTO)
    assert 0 <= total <= 3 * LEAVES_PER_PHOTO and total == mean * LEAVES_PER_PHOTO
    whole, extra = divmod(total, LEAVES_PER_PHOTO)
    return [whole + 1] * extra + [whole] * (LEAVES_PER_PHOTO - extra)


def photographed(position: str, day: date) -> bool:
    return (position, day) != NOT_PHOTOGRAPHED


def readable(position: str, day: date) -> bool:
    return photographed(position, day) and (position, day) != UNREADABLE


def mean_grade(position: str, day_index: int, disease: str) -> float:
    area = AREA[position]
    index = int(position[1:])
    offset = OFFSET[area][index] if day_index else 0.0
    if disease == "disease_0":
        start = 3.0 if index % 2 == 0 else 2.75
        return start + SLOPE[area] * day_index + offset
    # disease_3 (v2): the same slope in both areas, so no treatment effect.
    return 2.5 - 0.25 * day_index + offset


@dataclass
class Farm:
    positions: pl.DataFrame
    drone_images: pl.DataFrame
    leaf_crops: pl.DataFrame
    disease_grades: pl.DataFrame

    def active_grades(self) -> list[dict[str, Any]]:
        """The rows the reports must use, picked in Python from the registry constants."""
        active = {(m, v) for m, v, is_active, *_ in MODEL_VERSIONS if is_active}
        return [
            row
            for row in self.disease_grades.iter_rows(named=True)
            if (row["disease_model_id"], row["disease_model_version"]) in active
            and (row["cropper_model_id"], row["cropper_model_version"]) in active
        ]


# When every row of the synthetic farm was ingested and graded.
STAMP = datetime(2024, 6, 10, tzinfo=UTC)


def _crop_row(position: str, day: date, idx: int, cropper: tuple[str, str]) -> dict:
    return {
        "position_id": position,
        "date": day,
        "leaf_crop_idx": idx,
        "x0": 0.0,
        "y0": 0.0,
        "x1": 10.0,
        "y1": 10.0,
        "score": 0.9,
        "crop_uri": f"file:///b/{position}/{day}/{cropper[0]}/{cropper[1]}/{idx}.png",
        "cropper_model_id": cropper[0],
        "cropper_model_version": cropper[1],
    }


def _grade_row(
    key: tuple[str, date, int],
    disease: str,
    value: int,
    version: str,
    cropper: tuple[str, str] = CROPPER,
) -> dict:
    """The grade of leaf `key` (position, day, crop index)."""
    position, day, idx = key
    return {
        "position_id": position,
        "date": day,
        "leaf_crop_idx": idx,
        "disease_type": disease,
        "predicted_grade": value,
        "cropper_model_id": cropper[0],
        "cropper_model_version": cropper[1],
        "disease_model_id": f"{disease}_grader",
        "disease_model_version": version,
        "confidence": 0.8,
        "graded_at": STAMP,
        "dagster_run_id": "run-1",
    }


def _image_row(position: str, day: date) -> dict:
    is_readable = readable(position, day)
    return {
        "position_id": position,
        "date": day,
        "image_uri": f"file:///b/{position}/{day}/image.png",
        "size_bytes": 1000,
        "sha256": "0" * 64,
        "width": 640 if is_readable else None,
        "height": 480 if is_readable else None,
        "error": None if is_readable else "cannot identify image file",
        "ingested_at": STAMP,
        "generation": "1",
        "message_id": f"m-{position}-{day}",
        "published_at": STAMP,
        "dagster_run_id": "run-1",
    }


def synthetic_farm() -> Farm:
    positions = pl.DataFrame(
        {
            "position_id": CONTROL + TREATED,
            "area": [AREA[p] for p in CONTROL + TREATED],
            "latitude": [51.98] * 14,
            "longitude": [5.66 + 0.0003 * i for i in range(14)],
            "dose_ml_per_sqft": [0.0] * 7 + [120.0] * 7,
        }
    )
    images, crops, grades = [], [], []
    for day_index, day in enumerate(DAYS):
        for position in CONTROL + TREATED:
            if photographed(position, day):
                images.append(_image_row(position, day))
            if not readable(position, day):
                continue
            disease_0 = leaf_grades(mean_grade(position, day_index, "disease_0"))
            disease_3 = leaf_grades(mean_grade(position, day_index, "disease_3"))
            for idx in range(LEAVES_PER_PHOTO):
                key = (position, day, idx)
                crops.append(_crop_row(position, day, idx, CROPPER))
                grades.append(_grade_row(key, "disease_0", disease_0[idx], "v1"))
                grades.append(_grade_row(key, "disease_3", disease_3[idx], "v2"))
                old = disease_3[idx]
                if position in TREATED and day == LAST_DAY and idx == 0:
                    old = old + 1 if old < 3 else old - 1  # v1 disagrees here only
                grades.append(_grade_row(key, "disease_3", old, "v1"))
            if day_index == 0:
                # An inactive detector version's crops, all graded healthy: must not count.
                for idx in range(LEAVES_PER_PHOTO):
                    crops.append(_crop_row(position, day, idx, OLD_CROPPER))
                    key = (position, day, idx)
                    grades.append(_grade_row(key, "disease_0", 0, "v1", cropper=OLD_CROPPER))
    return Farm(
        positions=positions,
        drone_images=pl.DataFrame(images, infer_schema_length=None),
        leaf_crops=pl.DataFrame(crops),
        disease_grades=pl.DataFrame(grades),
    )


def load_warehouse(
    url: str,
    farm: Farm,
    extra_grades: pl.DataFrame | None = None,
    model_versions: list[tuple[Any, ...]] | None = None,
) -> None:
    warehouse = WarehouseResource(url=url)
    warehouse.create_schema()
    warehouse.replace_rows("drone_images", farm.drone_images)
    warehouse.replace_rows("leaf_crops", farm.leaf_crops)
    grades = farm.disease_grades
    if extra_grades is not None:
        grades = pl.concat([grades, extra_grades], how="vertical_relaxed")
    warehouse.replace_rows("disease_grades", grades)
    values = ", ".join(
        f"('{model}', '{version}', {str(active).lower()}, '{task}', "
        f"{'NULL' if disease is None else repr(disease)}, '{'a' * 64}', "
        f"CAST('{recorded} 00:00:00+00' AS TIMESTAMP WITH TIME ZONE))"
        for model, version, active, task, disease, recorded in model_versions or MODEL_VERSIONS
    )
    with warehouse.connect() as connection:
        connection.execute(MODEL_VERSIONS_DDL)
        connection.execute("DELETE FROM model_versions")
        connection.execute(
            "INSERT INTO model_versions "
            "(model_id, version, active, task, disease_type, sha256, recorded_at) "
            f"VALUES {values}"
        )


# --------------------------------------------------------------------------- running dbt


@dataclass
class Build:
    project: Path
    url: str
    outcome: DbtBuildOutcome

    @property
    def success(self) -> bool:
        return self.outcome.success

    @property
    def statuses(self) -> dict[str, str]:
        return self.outcome.statuses

    def failed(self) -> set[str]:
        return set(self.outcome.failed())

    def query(self, sql: str) -> pl.DataFrame:
        return WarehouseResource(url=self.url).query(sql)


def dbt_build(project: Path, warehouse_url: str, tests: bool = True) -> Build:
    return Build(project, warehouse_url, invoke_dbt_build(project, warehouse_url, tests=tests))


# Import it as `farm_fixture` into a test module: pytest then provides `farm` there, one
# per module.
@pytest.fixture(scope="module", name="farm")
def farm_fixture() -> Farm:
    return synthetic_farm()


@contextlib.contextmanager
def built_farm(
    request: pytest.FixtureRequest,
    farm: Farm,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
) -> Iterator[Build]:
    """`dbt build` of `farm` in a fresh warehouse of the database `request.param` names."""
    tmp = tmp_path_factory.mktemp(f"{name}-{request.param}")
    project = dbt_workdir(farm.positions, tmp / "project")
    if request.param == "duckdb":
        url = f"duckdb:///{tmp / 'warehouse.duckdb'}"
    else:
        url = fresh_database(request.getfixturevalue("postgres_url"), name)
    load_warehouse(url, farm)
    yield dbt_build(project, url)


def position_changes(
    farm: Farm, disease: str, grader_version: str | None = None
) -> dict[date, dict[str, list[float]]]:
    """Per date: the change of each position's mean grade since its own first graded date,
    per area, over the active grades, or over one grader version's grades on the active
    cropper (positions on their first date are left out)."""
    if grader_version is None:
        rows = farm.active_grades()
    else:
        rows = [
            row
            for row in farm.disease_grades.iter_rows(named=True)
            if row["disease_model_version"] == grader_version
            and (row["cropper_model_id"], row["cropper_model_version"]) == CROPPER
        ]
    leaves: dict[tuple[str, date], list[int]] = defaultdict(list)
    for row in rows:
        if row["disease_type"] == disease:
            leaves[row["position_id"], row["date"]].append(row["predicted_grade"])
    means = {key: statistics.fmean(values) for key, values in leaves.items()}
    # The baseline rule: each position's own first graded date.
    own_first: dict[str, date] = {}
    changes: dict[date, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (position, day), value in sorted(means.items()):
        first = own_first.setdefault(position, day)
        if day > first:
            changes[day][AREA[position]].append(value - means[position, first])
    return changes
