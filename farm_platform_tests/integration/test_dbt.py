"""The dbt project on DuckDB and PostgreSQL, against a synthetic trial with a known answer.

The synthetic farm: 7 control and 7 treated positions, 4 days, 4 leaves per photo.
disease_0 (grader v1): every position's mean grade falls 0.25/day in control and 0.75/day in
treated, plus per-position offsets that sum to zero within each area, so the
difference-in-differences effect is exactly -0.5 × days and the spread between positions is
not zero. disease_3: v1 (registered first, inactive) and v2 (active) grade the same leaves;
v2 has no treatment effect, v1 disagrees on one leaf per treated position on the last day.
Crops of an inactive detector version (v0) with all-healthy grades sit beside the active
ones. On the last day position C6 was not photographed and T6's photo is unreadable.

Each check computes its expectation independently of the SQL (plain Python over the rows
written), and the corrupt-data tests show that bad grades or a bad field map fail the build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from farm_platform.analytics.dbt_env import dbt_environment, dbt_project_copy
from farm_platform.ml.registry import DISEASE_TYPES
from farm_platform.report.data import effect_decisions, load_report_data
from farm_platform.report.effect_frame import treatment_effect_frame
from farm_platform.report.headline import design_line, summary_lines
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.farm import DbtBuildOutcome, invoke_dbt_build
from farm_platform_dev.postgres import fresh_database
from farm_platform_dev.simulate import FarmConfig, field_map, simulate_truth, true_position_day

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
    stamp = datetime(2024, 6, 10, tzinfo=UTC)
    images, crops, grades = [], [], []

    def crop(position: str, day: date, idx: int, cropper: tuple[str, str]) -> None:
        crops.append(
            {
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
        )

    def grade(
        position: str,
        day: date,
        idx: int,
        disease: str,
        value: int,
        version: str,
        cropper: tuple[str, str] = CROPPER,
    ) -> None:
        grades.append(
            {
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
                "graded_at": stamp,
                "dagster_run_id": "run-1",
            }
        )

    for day_index, day in enumerate(DAYS):
        for position in CONTROL + TREATED:
            if photographed(position, day):
                is_readable = readable(position, day)
                images.append(
                    {
                        "position_id": position,
                        "date": day,
                        "image_uri": f"file:///b/{position}/{day}/image.png",
                        "size_bytes": 1000,
                        "sha256": "0" * 64,
                        "width": 640 if is_readable else None,
                        "height": 480 if is_readable else None,
                        "error": None if is_readable else "cannot identify image file",
                        "ingested_at": stamp,
                        "generation": "1",
                        "message_id": f"m-{position}-{day}",
                        "published_at": stamp,
                        "dagster_run_id": "run-1",
                    }
                )
            if not readable(position, day):
                continue
            disease_0 = leaf_grades(mean_grade(position, day_index, "disease_0"))
            disease_3 = leaf_grades(mean_grade(position, day_index, "disease_3"))
            for idx in range(LEAVES_PER_PHOTO):
                crop(position, day, idx, CROPPER)
                grade(position, day, idx, "disease_0", disease_0[idx], "v1")
                grade(position, day, idx, "disease_3", disease_3[idx], "v2")
                old = disease_3[idx]
                if position in TREATED and day == LAST_DAY and idx == 0:
                    old = old + 1 if old < 3 else old - 1  # v1 disagrees here only
                grade(position, day, idx, "disease_3", old, "v1")
            if day_index == 0:
                # An inactive detector version's crops, all graded healthy: must not count.
                for idx in range(LEAVES_PER_PHOTO):
                    crop(position, day, idx, OLD_CROPPER)
                    grade(position, day, idx, "disease_0", 0, "v1", cropper=OLD_CROPPER)
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


@pytest.fixture(scope="module")
def farm() -> Farm:
    return synthetic_farm()


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def build(
    request: pytest.FixtureRequest, farm: Farm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Build]:
    """A clean `dbt build` of the synthetic farm, once per database."""
    with built_farm(request, farm, tmp_path_factory, "farm_dbt_test") as built:
        yield built


@contextlib.contextmanager
def built_farm(
    request: pytest.FixtureRequest,
    farm: Farm,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
) -> Iterator[Build]:
    """`dbt build` of `farm` in a fresh warehouse of the database `request.param` names."""
    tmp = tmp_path_factory.mktemp(f"{name}-{request.param}")
    project = dbt_project_copy(farm.positions, tmp / "project")
    if request.param == "duckdb":
        url = f"duckdb:///{tmp / 'warehouse.duckdb'}"
    else:
        url = fresh_database(request.getfixturevalue("postgres_url"), name)
    load_warehouse(url, farm)
    yield dbt_build(project, url)


# --------------------------------------------------------------------------- the clean build


def test_build_succeeds_with_every_test_passing(build: Build) -> None:
    assert build.success, f"failed nodes: {sorted(build.failed())}"
    tests = {node: s for node, s in build.statuses.items() if node.startswith("test.")}
    assert len(tests) > 40
    assert set(tests.values()) == {"pass"}, {n: s for n, s in tests.items() if s != "pass"}
    models = [node for node in build.statuses if node.startswith("model.")]
    assert {m.rsplit(".", 1)[1] for m in models} >= {
        "stg_disease_grades",
        "stg_active_disease_grades",
        "daily_severity",
        "position_trajectories",
        "treatment_effect",
        "coverage",
        "model_version_agreement",
        "model_version_confusion",
    }


def test_rebuild_is_idempotent(build: Build) -> None:
    # The daily schedule rebuilds over existing views and tables (PostgreSQL cannot simply
    # replace a view other views depend on); the marts must come out the same.
    before = build.query("SELECT * FROM treatment_effect ORDER BY disease_type, date")
    again = dbt_build(build.project, build.url)
    assert again.success, f"failed nodes: {sorted(again.failed())}"
    after = build.query("SELECT * FROM treatment_effect ORDER BY disease_type, date")
    assert before.height == 6
    # Equal up to float summation order (DuckDB aggregates in parallel, not bit-for-bit).
    assert_frame_equal(after, before, check_exact=False, rel_tol=0, abs_tol=TOLERANCE)


def _position_changes(
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


# Student t 0.975 quantiles from a printed table (the Welch df here are about 8 and 10).
T_975 = {
    6: 2.446912,
    7: 2.364624,
    8: 2.306004,
    9: 2.262157,
    10: 2.228139,
    11: 2.200985,
    12: 2.178813,
}


def test_treatment_effect_recovers_the_known_effect(build: Build, farm: Farm) -> None:
    rows = build.query(
        "SELECT * FROM treatment_effect WHERE disease_type = 'disease_0' ORDER BY date"
    ).to_dicts()
    assert [row["date"] for row in rows] == DAYS[1:]
    for day_index, row in enumerate(rows, start=1):
        known = KNOWN_EFFECT_PER_DAY * day_index
        assert row["days_since_start"] == day_index
        assert abs(row["effect"] - known) < TOLERANCE, row
        assert row["ci_low"] < known < row["ci_high"], row
        expected_n = 6 if DAYS[day_index] == LAST_DAY else 7
        assert (row["n_treated"], row["n_control"]) == (expected_n, expected_n)
        # Welch standard error and df over position changes, computed here from the rows.
        changes = _position_changes(farm, "disease_0")[DAYS[day_index]]
        treated, control = changes["treated"], changes["control"]
        a = statistics.variance(treated) / len(treated)
        b = statistics.variance(control) / len(control)
        assert abs(row["std_error"] - math.sqrt(a + b)) < TOLERANCE
        df = (a + b) ** 2 / (a**2 / (len(treated) - 1) + b**2 / (len(control) - 1))
        assert abs(row["df"] - df) < 1e-6
        t = T_975[math.floor(df)]
        assert abs(row["t_quantile"] - t) < 1e-6, (df, row["t_quantile"])
        assert abs(row["ci_low"] - (known - t * math.sqrt(a + b))) < 1e-6
        assert abs(row["ci_high"] - (known + t * math.sqrt(a + b))) < 1e-6
        assert row["significant"] == (row["ci_high"] < 0 or row["ci_low"] > 0)
    # By day 3 the treated area has healed 1.5 grades more: clearly significant.
    assert rows[-1]["significant"] is True


def test_treatment_effect_uses_only_the_active_grader_version(build: Build) -> None:
    # disease_3 v2 (active) has no effect; v1 (inactive) grades treated leaves higher on
    # the last day, so mixing it in would move the last day's effect away from 0.
    rows = build.query(
        "SELECT date, effect, n_treated FROM treatment_effect "
        "WHERE disease_type = 'disease_3' ORDER BY date"
    ).to_dicts()
    assert [row["date"] for row in rows] == DAYS[1:]
    for row in rows:
        assert abs(row["effect"]) < TOLERANCE, row
    assert build.query("SELECT DISTINCT disease_type FROM treatment_effect ORDER BY 1")[
        "disease_type"
    ].to_list() == ["disease_0", "disease_3"]


def test_daily_severity_shares(build: Build, farm: Farm) -> None:
    groups: dict[tuple[date, str, str], list[tuple[str, int]]] = defaultdict(list)
    for row in farm.active_grades():
        key = (row["date"], AREA[row["position_id"]], row["disease_type"])
        groups[key].append((row["position_id"], row["predicted_grade"]))
    frame = build.query("SELECT * FROM daily_severity")
    rows = {(r["date"], r["area"], r["disease_type"]): r for r in frame.iter_rows(named=True)}
    assert frame.height == len(rows) == len(groups) == len(DAYS) * 2 * 2
    for key, row in rows.items():
        values = groups[key]
        grades = [g for _, g in values]
        assert row["images"] == len({p for p, _ in values})
        assert row["leaves"] == len(grades)
        assert abs(row["mean_grade"] - statistics.fmean(grades)) < TOLERANCE
        assert abs(row["share_healthy"] - grades.count(0) / len(grades)) < TOLERANCE
        assert abs(row["share_severe"] - grades.count(3) / len(grades)) < TOLERANCE
    # By hand: day 0, control, disease_0: C0 C2 C4 C6 start at 3.0 (4 leaves of 3 each),
    # C1 C3 C5 at 2.75 (3, 3, 3, 2): 25 of 28 leaves severe, none healthy (the inactive
    # detector's all-healthy crops are not counted).
    first = rows[DAYS[0], "control", "disease_0"]
    assert (first["images"], first["leaves"]) == (7, 28)
    assert abs(first["share_severe"] - 25 / 28) < TOLERANCE
    assert first["share_healthy"] == 0
    # Day 3, treated, disease_0: T0 and T3 (mean 0.25: 1 0 0 0) have 3 healthy leaves each,
    # T4 (0.75: 1 1 1 0) one, T5 (0.5: 1 1 0 0) two: 9 of the 24 leaves of 6 readable photos.
    last = rows[LAST_DAY, "treated", "disease_0"]
    assert (last["images"], last["leaves"]) == (6, 24)
    assert abs(last["share_healthy"] - 9 / 24) < TOLERANCE
    assert last["share_severe"] == 0


def test_position_trajectories(build: Build) -> None:
    frame = build.query(
        "SELECT * FROM position_trajectories WHERE disease_type = 'disease_0' "
        "ORDER BY position_id, date"
    )
    # 14 positions × 4 days, less C6 and T6 on the last day.
    assert frame.height == 14 * 4 - 2
    t1 = frame.filter(pl.col("position_id") == "T1").to_dicts()
    # T1 starts at 2.75 and moves -0.75/day with offset +0.5 from day 1 on.
    assert [row["mean_grade"] for row in t1] == [2.75, 2.5, 1.75, 1.0]
    assert [row["change_from_first_day"] for row in t1] == [0.0, -0.25, -1.0, -1.75]
    assert [row["days_since_first_date"] for row in t1] == [0, 1, 2, 3]
    assert {row["area"] for row in t1} == {"treated"}


def test_coverage_reports_missing_and_unreadable(build: Build) -> None:
    frame = build.query("SELECT * FROM coverage ORDER BY date, area")
    assert frame.height == len(DAYS) * 2
    for row in frame.iter_rows(named=True):
        assert row["positions_in_field_map"] == 7
        if row["date"] != LAST_DAY:
            assert row["positions_photographed"] == 7
            assert (row["unreadable_images"], row["positions_missing"]) == (0, 0)
            assert row["missing_positions"] is None
            # Only the active detector's crops: 7 photos × 4 leaves (not the v0 ones).
            assert row["leaves"] == 28
            assert row["positions_graded"] == 7
    last = {row["area"]: row for row in frame.filter(pl.col("date") == LAST_DAY).to_dicts()}
    control, treated = last["control"], last["treated"]
    assert (control["positions_photographed"], control["unreadable_images"]) == (6, 0)
    assert (control["positions_missing"], control["missing_positions"]) == (1, "C6")
    assert (treated["positions_photographed"], treated["unreadable_images"]) == (7, 1)
    assert (treated["positions_missing"], treated["missing_positions"]) == (1, "T6")
    assert control["leaves"] == treated["leaves"] == 24
    assert control["positions_graded"] == treated["positions_graded"] == 6


def test_model_version_comparison(build: Build, farm: Farm) -> None:
    agreement = build.query("SELECT * FROM model_version_agreement").to_dicts()
    # Only disease_3 has two grader versions on the same leaves.
    assert len(agreement) == 1
    row = agreement[0]
    compared = sum(
        1
        for r in farm.disease_grades.iter_rows(named=True)
        if r["disease_type"] == "disease_3" and r["disease_model_version"] == "v2"
    )
    assert compared == (14 * 3 + 12) * LEAVES_PER_PHOTO
    # v1 disagrees on leaf 0 of each of the 6 readable treated photos of the last day.
    assert (row["disease_type"], row["version_a"], row["version_b"]) == ("disease_3", "v1", "v2")
    assert (row["version_a_active"], row["version_b_active"]) == (False, True)
    assert (row["leaves_compared"], row["leaves_agreeing"]) == (compared, compared - 6)
    assert abs(row["agreement_rate"] - (compared - 6) / compared) < TOLERANCE

    confusion = build.query("SELECT grade_a, grade_b, n FROM model_version_confusion")
    assert confusion["n"].sum() == compared
    expected: dict[tuple[int, int], int] = defaultdict(int)
    by_leaf = defaultdict(dict)
    for r in farm.disease_grades.iter_rows(named=True):
        if r["disease_type"] == "disease_3":
            leaf = (r["position_id"], r["date"], r["leaf_crop_idx"])
            by_leaf[leaf][r["disease_model_version"]] = r["predicted_grade"]
    for versions in by_leaf.values():
        expected[versions["v1"], versions["v2"]] += 1
    assert {(a, b): n for a, b, n in confusion.iter_rows()} == dict(expected)
    assert sum(n for (a, b), n in expected.items() if a != b) == 6


def test_model_version_effects_answer_the_question_under_each_version(build: Build, farm: Farm):
    columns = ["disease_type", "date", "n_treated", "n_control", "effect", "ci_low", "ci_high"]
    effects = build.query(
        "SELECT * FROM model_version_effects ORDER BY disease_type, disease_model_version, date"
    )
    # The active versions' rows are treatment_effect's, to the last digit.
    assert_frame_equal(
        effects.filter(pl.col("version_active")).select(columns),
        build.query("SELECT * FROM treatment_effect ORDER BY disease_type, date").select(columns),
    )
    # disease_3 v1 (inactive) grades treated leaf 0 differently on the last day only: its
    # effect is v2's before and moves away from 0 on that day, as computed from its rows.
    v1 = effects.filter(
        (pl.col("disease_type") == "disease_3") & (pl.col("disease_model_version") == "v1")
    ).to_dicts()
    assert [row["date"] for row in v1] == DAYS[1:]
    assert not any(row["version_active"] for row in v1)
    changes = _position_changes(farm, "disease_3", grader_version="v1")
    for row in v1:
        treated, control = changes[row["date"]]["treated"], changes[row["date"]]["control"]
        expected = statistics.fmean(treated) - statistics.fmean(control)
        assert abs(row["effect"] - expected) < TOLERANCE, row
    assert all(abs(row["effect"]) < TOLERANCE for row in v1[:-1])
    assert abs(v1[-1]["effect"]) > 0.01
    assert {tuple(r) for r in effects.select("disease_type", "disease_model_version").rows()} == {
        ("disease_0", "v1"),
        ("disease_3", "v1"),
        ("disease_3", "v2"),
    }


def test_the_report_headline_from_the_built_marts(build: Build) -> None:
    # The report's decision rules over the real mart (types as each database returns them).
    data = load_report_data(WarehouseResource(url=build.url), LAST_DAY)
    lines = summary_lines(data)
    assert len(lines) == 2
    # disease_0: 1.5 grades more healing in 3 days, conclusive even under the valid rule.
    # Each disease with the readable name of its grader's model card.
    # The synthetic farm's map has no design columns: two areas allocated by hand, so the
    # call is about the areas, and the design line says what the effect mixes in.
    assert lines[0].startswith(
        "disease_0 (brown spot): the treated area heals faster than the control area: "
        "conclusive (that is the medicine plus any difference in progression between the two "
        "areas)"
    ), lines
    assert data.design is not None and data.design["design"] == "allocated (two areas)"
    assert data.design["positions"] == 14 and data.design["blocks"] == 0
    assert "the effect is the medicine plus any difference in progression" in design_line(data)
    assert "Effect -1.500 grade after 3 days" in lines[0]
    assert lines[1].startswith("disease_3 (vein streak): no significant difference"), lines[1]
    decided = effect_decisions(data)
    calls = {
        (row["disease_type"], row["date"]): row["sequential_significant"]
        for row in decided.iter_rows(named=True)
    }
    assert len(calls) == 6 and calls["disease_0", LAST_DAY] is True
    assert not any(called for (disease, _), called in calls.items() if disease == "disease_3")
    # The valid rule is stricter than the day's interval: it calls nothing that one does not.
    assert not (decided["sequential_significant"] & ~decided["significant"]).any()


def test_nothing_is_held_back_without_failed_quality_checks(build: Build) -> None:
    # partition_quality exists (empty) in the synthetic warehouse: no partition is held back
    # and the active grades are all of them (the blocking path: test_quality.py).
    assert build.query("SELECT count(*) AS n FROM held_back_partitions")["n"][0] == 0
    active = build.query("SELECT count(*) AS n FROM stg_active_disease_grades")["n"][0]
    assert active == (14 * 3 + 12) * LEAVES_PER_PHOTO * 2  # disease_0 v1 + disease_3 v2


# --------------------------------------------------------------------------- gaps in the trial

# A partial first flight (only positions 0..2 of each area flown on the first day), a missed
# photo (T1 on the third day) and positions joining late (C5 and T5 from the third day).
FIRST_FLIGHT = {f"{area}{i}" for area in "CT" for i in range(3)}
MISSED_PHOTO = ("T1", DAYS[2])
LATE_JOINERS = {"C5": DAYS[2], "T5": DAYS[2]}


def _flown(position: str, day: date) -> bool:
    if day == DAYS[0] and position not in FIRST_FLIGHT:
        return False
    return (position, day) != MISSED_PHOTO and day >= LATE_JOINERS.get(position, DAYS[0])


def gappy_farm(farm: Farm) -> Farm:
    """The synthetic farm less the photos a gappy trial never took (the rows of every table)."""

    def flown(frame: pl.DataFrame) -> pl.DataFrame:
        keep = [_flown(p, d) for p, d in frame.select("position_id", "date").iter_rows()]
        return frame.filter(pl.Series(keep))

    return Farm(
        positions=farm.positions,
        drone_images=flown(farm.drone_images),
        leaf_crops=flown(farm.leaf_crops),
        disease_grades=flown(farm.disease_grades),
    )


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def gappy_build(
    request: pytest.FixtureRequest, farm: Farm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Build, Farm]]:
    gappy = gappy_farm(farm)
    with built_farm(request, gappy, tmp_path_factory, "farm_dbt_gaps") as built:
        assert built.success, f"failed nodes: {sorted(built.failed())}"
        yield built, gappy


def test_every_position_counts_from_its_own_first_graded_day(
    gappy_build: tuple[Build, Farm],
) -> None:
    build, gappy = gappy_build
    rows = build.query(
        "SELECT * FROM treatment_effect WHERE disease_type = 'disease_0' ORDER BY date"
    ).to_dicts()
    # Every date after the trial's first (the partial first flight's), none dropped.
    assert [row["date"] for row in rows] == DAYS[1:]
    assert {row["first_date"] for row in rows} == {DAYS[0]}
    # By hand, per area: day 1 counts the 3 positions of the first flight; day 2 adds the
    # 3 that started on day 1 (3, 4, 6), less T1 (missed photo); day 3 adds the late
    # joiners (first day: day 2) and T1 again, less C6 and T6 (not photographed, unreadable).
    # A trial-wide baseline would keep at most 3 per area.
    assert [(row["n_treated"], row["n_control"]) for row in rows] == [(3, 3), (5, 6), (6, 6)]
    assert [row["n_late_baseline"] for row in rows] == [0, 3 + 3, 3 + 3]
    changes = _position_changes(gappy, "disease_0")
    for row in rows:
        treated, control = changes[row["date"]]["treated"], changes[row["date"]]["control"]
        assert (row["n_treated"], row["n_control"]) == (len(treated), len(control))
        expected = statistics.fmean(treated) - statistics.fmean(control)
        assert abs(row["effect"] - expected) < TOLERANCE, row
        assert row["ci_low"] is not None and row["ci_high"] is not None


def test_trajectories_and_effect_share_the_baseline(gappy_build: tuple[Build, Farm]) -> None:
    build, _ = gappy_build
    trajectories = build.query(
        "SELECT * FROM position_trajectories WHERE disease_type = 'disease_0'"
    )
    # T1 missed day 2 but keeps its first-flight baseline; C5 joined on day 2.
    t1 = trajectories.filter(pl.col("position_id") == "T1").sort("date")
    assert t1["date"].to_list() == [DAYS[0], DAYS[1], DAYS[3]]
    assert set(t1["first_date"]) == {DAYS[0]}
    assert t1["days_since_first_date"].to_list() == [0, 1, 3]
    assert set(trajectories.filter(pl.col("position_id") == "C5")["first_date"]) == {DAYS[2]}
    # treatment_effect's arm means are the means of position_trajectories' changes.
    arms = (
        trajectories.filter(pl.col("days_since_first_date") > 0)
        .group_by("date", "area")
        .agg(pl.col("change_from_first_day").mean(), pl.len())
    )
    effect = build.query(
        "SELECT * FROM treatment_effect WHERE disease_type = 'disease_0'"
    ).to_dicts()
    for row in effect:
        for area in ("treated", "control"):
            arm = arms.filter((pl.col("date") == row["date"]) & (pl.col("area") == area))
            assert arm["len"].item() == row[f"n_{area}"]
            mean = arm["change_from_first_day"].item()
            assert abs(row[f"mean_change_{area}"] - mean) < TOLERANCE, (row, area)


# --------------------------------------------------------------------------- the fast path


def simulated_truth_farm(config: FarmConfig, skipped: set[tuple[str, date]]) -> Farm:
    """A simulated farm's TRUE grades as the warehouse rows perfect models would write
    (active detector v1, the active grader of each disease), less the `skipped` photos."""
    stamp = datetime(2026, 6, 1, tzinfo=UTC)
    active = {d: v for m, v, is_active, _, d, _ in MODEL_VERSIONS if is_active and d}
    images, crops, grades = [], [], []
    for key, leaves in simulate_truth(config):
        if (key.position_id, key.date) in skipped:
            continue
        where = {"position_id": key.position_id, "date": key.date}
        images.append(
            {
                **where,
                "image_uri": f"file:///b/{key.position_id}/{key.date}/image.png",
                "size_bytes": 1000,
                "sha256": "0" * 64,
                "width": 256,
                "height": 256,
                "error": None,
                "ingested_at": stamp,
                "generation": "1",
                "message_id": f"m-{key.position_id}-{key.date}",
                "published_at": stamp,
                "dagster_run_id": "run-1",
            }
        )
        for leaf in leaves:
            crops.append(
                {
                    **where,
                    "leaf_crop_idx": leaf.leaf_id,
                    "x0": leaf.x0,
                    "y0": leaf.y0,
                    "x1": leaf.x1,
                    "y1": leaf.y1,
                    "score": 1.0,
                    "crop_uri": f"file:///b/{key.position_id}/{key.date}/{leaf.leaf_id}.png",
                    "cropper_model_id": CROPPER[0],
                    "cropper_model_version": CROPPER[1],
                }
            )
            for disease, grade in zip(DISEASE_TYPES, leaf.grades, strict=True):
                grades.append(
                    {
                        **where,
                        "leaf_crop_idx": leaf.leaf_id,
                        "disease_type": disease,
                        "predicted_grade": grade,
                        "cropper_model_id": CROPPER[0],
                        "cropper_model_version": CROPPER[1],
                        "disease_model_id": f"{disease}_grader",
                        "disease_model_version": active[disease],
                        "confidence": 1.0,
                        "graded_at": stamp,
                        "dagster_run_id": "run-1",
                    }
                )
    positions = pl.DataFrame([dataclasses.asdict(p) for p in field_map(config)])
    return Farm(
        positions=positions,
        drone_images=pl.DataFrame(images, infer_schema_length=None),
        leaf_crops=pl.DataFrame(crops),
        disease_grades=pl.DataFrame(grades),
    )


@pytest.mark.parametrize(
    ("config", "skipped"),
    [
        (FarmConfig(positions=10, days=4, seed=11, effect=0.15), set()),
        # A partial first flight (P000, P006 start on day 1) and a missed photo.
        (
            FarmConfig(positions=9, days=5, seed=12, effect=0.0),
            {("P000", date(2026, 6, 1)), ("P006", date(2026, 6, 1)), ("P003", date(2026, 6, 3))},
        ),
        # Randomised in blocks of two neighbours, a gradient across the field, and a missed
        # photo that leaves its block partner outside any block with both arms that day.
        (
            FarmConfig(positions=10, days=4, seed=13, effect=0.15, layout="blocks", gradient=0.05),
            {("P004", date(2026, 6, 3))},
        ),
    ],
    ids=["two-areas", "two-areas-gaps", "blocks"],
)
def test_the_benchmark_fast_path_gives_dbt_numbers(
    config: FarmConfig, skipped: set[tuple[str, date]], tmp_path: Path
) -> None:
    # benchmarks/effect_recovery.py scores hundreds of farms through treatment_effect_frame
    # over true_position_day instead of rendering, grading and a dbt build per farm.
    farm = simulated_truth_farm(config, skipped)
    project = dbt_project_copy(farm.positions, tmp_path / "project")
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    load_warehouse(url, farm)
    built = dbt_build(project, url)
    assert built.success, f"failed nodes: {sorted(built.failed())}"
    from_dbt = built.query("SELECT * FROM treatment_effect ORDER BY disease_type, date")
    position_day = true_position_day(config).filter(
        ~pl.struct("position_id", "date").is_in([{"position_id": p, "date": d} for p, d in skipped])
    )
    fast = treatment_effect_frame(position_day)
    assert fast.columns == [c for c in from_dbt.columns if c in fast.columns]
    assert fast.height == from_dbt.height == 5 * (config.days - 1)
    assert_frame_equal(
        fast,
        from_dbt.select(fast.columns),
        check_dtypes=False,
        check_exact=False,
        rel_tol=0,
        abs_tol=1e-5,  # t quantiles: the seed's six decimals vs scipy's
    )
    if config.layout == "blocks":
        assert set(from_dbt["estimator"]) == {"within blocks"}
        assert set(from_dbt["design"]) == {"randomised in blocks"}
        assert from_dbt["n_blocks"].min() == 4 and from_dbt["n_outside_blocks"].max() == 1
        assert (from_dbt["df"] == from_dbt["n_blocks"] - 1).all()
    else:
        assert set(from_dbt["estimator"]) == {"welch"}
        assert set(from_dbt["design"]) == {"allocated (two areas)"}
    if config.seed == 12:
        assert fast["n_late_baseline"].max() == 2


# --------------------------------------------------------------------------- corrupt data


def test_a_grade_outside_the_scale_fails_the_build(farm: Farm, tmp_path: Path) -> None:
    project = dbt_project_copy(farm.positions, tmp_path / "project")
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    corrupt = farm.disease_grades.head(1).with_columns(
        pl.lit("disease_1").alias("disease_type"),
        pl.lit("disease_1_grader").alias("disease_model_id"),
        pl.lit(7).alias("predicted_grade"),
    )
    load_warehouse(url, farm, extra_grades=corrupt)
    build = dbt_build(project, url)
    assert not build.success
    failed = build.failed()
    assert any(name.startswith("in_range_stg_disease_grades_predicted_grade") for name in failed)
    assert len(failed) == 1, failed
    # Nothing downstream of the bad grades is built.
    assert build.statuses["model.farm.treatment_effect"] == "skipped"


def test_an_unknown_area_in_the_field_map_fails_the_build(farm: Farm, tmp_path: Path) -> None:
    positions = farm.positions.with_columns(
        pl.when(pl.col("position_id") == "T3")
        .then(pl.lit("sprayed"))
        .otherwise(pl.col("area"))
        .alias("area")
    )
    project = dbt_project_copy(positions, tmp_path / "project")
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    load_warehouse(url, farm)
    build = dbt_build(project, url)
    assert not build.success
    failed = build.failed()
    assert any(name.startswith("accepted_values_positions_area") for name in failed), failed
    assert build.statuses["model.farm.daily_severity"] == "skipped"


# --------------------------------------------------------------------------- dbt_env


def test_dbt_environment_for_duckdb(tmp_path: Path) -> None:
    env = dbt_environment(f"duckdb:///{tmp_path / 'farm.duckdb'}")
    assert env == {
        "FARM_DBT_TARGET": "duckdb",
        "FARM_DBT_SCHEMA": "main",
        "FARM_DUCKDB_PATH": str(tmp_path / "farm.duckdb"),
    }
    # README's form, three slashes then the absolute path, and SQLAlchemy's four: both are
    # the same absolute file for dbt and for the warehouse resource, wherever they run.
    for url in ("duckdb:///srv/farm/farm.duckdb", "duckdb:////srv/farm/farm.duckdb"):
        assert dbt_environment(url)["FARM_DUCKDB_PATH"] == "/srv/farm/farm.duckdb"
        assert WarehouseResource(url=url).duckdb_path == Path("/srv/farm/farm.duckdb")


def test_dbt_environment_for_postgres() -> None:
    env = dbt_environment("postgresql://farm:s%40cret@db.example:6543/warehouse?sslmode=require")
    assert env == {
        "FARM_DBT_TARGET": "postgres",
        "FARM_DBT_SCHEMA": "public",
        "FARM_PG_HOST": "db.example",
        "FARM_PG_PORT": "6543",
        "FARM_PG_USER": "farm",
        "FARM_PG_PASSWORD": "s@cret",
        "FARM_PG_DBNAME": "warehouse",
        "FARM_PG_SSLMODE": "require",
    }
    defaults = dbt_environment("postgres://farm@127.0.0.1/farm")
    assert (defaults["FARM_PG_PORT"], defaults["FARM_PG_PASSWORD"]) == ("5432", "")
    assert defaults["FARM_PG_SSLMODE"] == "prefer"


@pytest.mark.parametrize(
    "url",
    ["sqlite:///farm.db", "", "duckdb://", "duckdb:///:memory:", "postgresql://host-only"],
)
def test_dbt_environment_rejects_unsupported_urls(url: str) -> None:
    with pytest.raises(ValueError, match="FARM_WAREHOUSE"):
        dbt_environment(url)


def test_dbt_env_does_not_import_dbt() -> None:
    import subprocess
    import sys

    code = "import sys, farm_platform.analytics.dbt_env; print('dbt' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


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
    project = dbt_project_copy(farm.positions, destination)
    config = project / "dbt_project.yml"
    text = config.read_text()
    assert "late_commit_margin_minutes: 180" in text
    config.write_text(
        text.replace("late_commit_margin_minutes: 180", "late_commit_margin_minutes: 0")
    )
    return project


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
    project = dbt_project_copy(farm.positions, tmp_path / "project")  # the shipped margin
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
