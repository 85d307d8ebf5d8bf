"""Trials with gaps (a partial first flight, a missed photo, late joiners) and the simulated
layouts (two areas, blocks) through dbt, against the Python estimate the benchmarks use.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from dbt_farm import (
    CROPPER,
    DAYS,
    MODEL_VERSIONS,
    TOLERANCE,
    Build,
    Farm,
    built_farm,
    dbt_build,
    farm_fixture,  # noqa: F401 (the fixture `farm`)
    load_warehouse,
    position_changes,
)
from polars.testing import assert_frame_equal

from farm_platform.ml.registry import DISEASE_TYPES
from farm_platform.report.effect_frame import treatment_effect_frame
from farm_platform_dev.farm import dbt_workdir
from farm_platform_dev.simulate import FarmConfig, field_map, simulate_truth, true_position_day

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
    changes = position_changes(gappy, "disease_0")
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
    project = dbt_workdir(farm.positions, tmp_path / "project")
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
