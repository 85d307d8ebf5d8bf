"""The trial's design (issue 43): the field map's optional block and assignment columns,
`farm-platform trial design`, and the simulator's three layouts on the same locations."""

import dataclasses
import math
from collections import Counter

import numpy as np
import polars as pl
import pytest

from farm_platform.cli import main
from farm_platform.resources.field_map import (
    FieldMapError,
    Position,
    read_field_map,
    write_field_map,
)
from farm_platform.trial_design import (
    ALLOCATED_AREAS,
    ALLOCATED_BLOCKS,
    RANDOMISED_BLOCKS,
    RANDOMISED_ONLY,
    allocated,
    design_name,
    neighbour_order,
    randomised_blocks,
)
from farm_platform_dev.simulate import FarmConfig
from farm_platform_dev.simulate.farm import field_map, gradient_drift, two_area_map


def _grid(rows: int, columns: int) -> list[Position]:
    """Positions on a rows × columns grid 20 m apart, the west half treated."""
    return [
        Position(
            f"P{r * columns + c:03d}",
            "treated" if c < columns // 2 else "control",
            51.98 + r * 0.00018,
            5.66 + c * 0.00029,
            120.0 if c < columns // 2 else 0.0,
        )
        for r in range(rows)
        for c in range(columns)
    ]


def _distance(a: Position, b: Position) -> float:
    """Metres between two positions (equirectangular: a field is small)."""
    north = (a.latitude - b.latitude) * 111_320
    east = (a.longitude - b.longitude) * 111_320 * math.cos(math.radians(a.latitude))
    return math.hypot(north, east)


# --------------------------------------------------------------------------- the field map


def test_a_map_without_design_columns_reads_as_before_and_is_the_founding_design(tmp_path):
    path = write_field_map(_grid(2, 4), tmp_path / "positions.csv")
    assert path.read_text().splitlines()[0] == (
        "position_id,area,latitude,longitude,dose_ml_per_sqft"
    )
    positions = list(read_field_map(path).values())
    assert all(p.block is None and p.assignment is None for p in positions)
    assert design_name(positions) == ALLOCATED_AREAS
    assert design_name(allocated(positions)) == ALLOCATED_AREAS


def test_design_columns_round_trip_and_name_the_design(tmp_path):
    designed = randomised_blocks(_grid(2, 4), seed=7)
    path = write_field_map(designed, tmp_path / "positions.csv")
    assert path.read_text().splitlines()[0].endswith(",block,assignment")
    assert list(read_field_map(path).values()) == designed
    assert design_name(designed) == RANDOMISED_BLOCKS
    unblocked = [dataclasses.replace(p, block=None) for p in designed]
    assert design_name(unblocked) == RANDOMISED_ONLY
    by_hand = [dataclasses.replace(p, assignment="allocated") for p in designed]
    assert design_name(by_hand) == ALLOCATED_BLOCKS


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        ("block", "P000,control,1,1,0,", "block is empty"),
        ("assignment", "P000,control,1,1,0,random", "neither `allocated` nor `randomised:<seed>`"),
        ("assignment", "P000,control,1,1,0,randomised", "neither `allocated`"),
        ("assignment", "P000,control,1,1,0,randomised:x", "neither `allocated`"),
        ("plot", "P000,control,1,1,0,x", "optionally followed by block and/or assignment"),
    ],
)
def test_a_malformed_design_column_is_refused_with_what_to_write(tmp_path, header, row, message):
    path = tmp_path / "positions.csv"
    path.write_text(f"position_id,area,latitude,longitude,dose_ml_per_sqft,{header}\n{row}\n")
    with pytest.raises(FieldMapError, match=message):
        read_field_map(path)


def test_a_map_with_two_assignments_is_refused(tmp_path):
    path = tmp_path / "positions.csv"
    path.write_text(
        "position_id,area,latitude,longitude,dose_ml_per_sqft,assignment\n"
        "P000,control,1,1,0,randomised:1\nP001,treated,1,2,5,allocated\n"
    )
    with pytest.raises(FieldMapError, match="a trial has one"):
        read_field_map(path)


# --------------------------------------------------------------------------- trial design


def test_randomised_blocks_pair_neighbours_and_balance_the_arms():
    positions = _grid(4, 6)
    designed = randomised_blocks(positions, seed=3)
    assert [p.position_id for p in designed] == [p.position_id for p in positions]
    blocks: dict[str, list[Position]] = {}
    for position in designed:
        blocks.setdefault(position.block, []).append(position)
    assert len(blocks) == 12
    for members in blocks.values():
        assert sorted(p.area for p in members) == ["control", "treated"]
        # Neighbours: the two of a block are next to each other on the grid (≤ one step).
        assert _distance(*members) < 25, members
        for p in members:
            assert p.dose_ml_per_sqft == (120.0 if p.area == "treated" else 0.0)
    assert {p.assignment for p in designed} == {"randomised:3"}
    # The seed decides the draw: the same seed again, the same map; another, another one.
    assert randomised_blocks(positions, seed=3) == designed
    assert randomised_blocks(positions, seed=4) != designed


def test_odd_positions_and_larger_blocks():
    designed = randomised_blocks(_grid(1, 7), seed=1, block_size=3, dose=50.0)
    sizes = Counter(p.block for p in designed)
    assert sorted(sizes.values()) == [3, 4]  # a last run of one joins the block before it
    for block in sizes:
        arms = Counter(p.area for p in designed if p.block == block)
        assert abs(arms["treated"] - arms["control"]) <= 1
    assert {p.dose_ml_per_sqft for p in designed if p.area == "treated"} == {50.0}


def test_neighbour_order_walks_a_grid_one_step_at_a_time():
    ordered = neighbour_order(_grid(8, 8))
    steps = [_distance(a, b) for a, b in zip(ordered, ordered[1:], strict=False)]
    assert max(steps) < 25  # a Hilbert curve over a 2^k grid only ever moves one cell


def test_a_design_needs_blocks_of_two_and_one_treated_dose():
    with pytest.raises(FieldMapError, match="at least 2 positions"):
        randomised_blocks(_grid(2, 2), seed=1, block_size=1)
    mixed = [dataclasses.replace(p, dose_ml_per_sqft=1.0 + i) for i, p in enumerate(_grid(1, 4))]
    with pytest.raises(FieldMapError, match="--dose"):
        randomised_blocks(mixed, seed=1)


def test_the_trial_design_command_rewrites_the_map(tmp_path, capsys):
    source = write_field_map(_grid(2, 4), tmp_path / "positions.csv")
    output = tmp_path / "designed.csv"
    assert main(["trial", "design", "--field-map", str(source), "--output", str(output),
                 "--seed", "11"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "8 positions in 4 blocks" in printed and "seed 11" in printed
    assert list(read_field_map(output).values()) == randomised_blocks(_grid(2, 4), seed=11)
    # Without --seed a seed is drawn, and recorded in the map.
    assert main(["trial", "design", "--field-map", str(source)]) == 0
    (assignment,) = {p.assignment for p in read_field_map(source).values()}
    assert assignment.startswith("randomised:") and int(assignment.split(":")[1]) >= 0
    assert main(["trial", "design", "--field-map", str(source), "--block-size", "1"]) == 2
    assert "a block needs at least 2 positions" in capsys.readouterr().err


# --------------------------------------------------------------------------- the simulator


def test_the_three_layouts_use_the_same_locations():
    layouts = {
        layout: field_map(FarmConfig(positions=24, layout=layout, seed=5))
        for layout in ("two-areas", "randomised", "blocks")
    }
    where = {
        layout: [(p.position_id, p.latitude, p.longitude) for p in positions]
        for layout, positions in layouts.items()
    }
    assert where["two-areas"] == where["randomised"] == where["blocks"]
    assert layouts["two-areas"] == two_area_map(FarmConfig(positions=24))
    for positions in layouts.values():
        assert Counter(p.area for p in positions) == {"control": 12, "treated": 12}
    assert design_name(layouts["two-areas"]) == ALLOCATED_AREAS
    assert design_name(layouts["randomised"]) == RANDOMISED_ONLY
    assert design_name(layouts["blocks"]) == RANDOMISED_BLOCKS
    with pytest.raises(ValueError, match="layout 'checkerboard'"):
        FarmConfig(layout="checkerboard")


def test_the_gradient_runs_from_the_west_area_to_the_east():
    config = FarmConfig(positions=24, gradient=0.03)
    drift = np.array(gradient_drift(config))
    areas = np.array([p.area for p in two_area_map(config)])
    # The areas' centres differ by the gradient: west (control) progresses faster.
    assert drift[areas == "control"].mean() - drift[areas == "treated"].mean() == pytest.approx(
        0.03
    )
    assert gradient_drift(FarmConfig(positions=24)) == [0.0] * 24


def test_a_gradient_biases_two_areas_and_not_randomised_blocks():
    # No medicine, a strong gradient: two areas look like healing, blocks do not.
    from farm_platform.report.effect_frame import treatment_effect_frame
    from farm_platform_dev.simulate import true_position_day

    def mean_effect(layout: str) -> float:
        frames = [
            treatment_effect_frame(
                true_position_day(
                    FarmConfig(
                        positions=16, days=3, seed=s, effect=0.0, layout=layout, gradient=0.12
                    )
                )
            )
            for s in range(3)
        ]
        last = pl.concat(frames).filter(pl.col("days_since_start") == 2)
        return float(last["effect"].mean())

    two_areas, blocks = mean_effect("two-areas"), mean_effect("blocks")
    assert two_areas < -0.12, two_areas
    assert abs(blocks) < 0.03, blocks


def test_the_demo_defaults_to_a_blocked_trial_that_can_answer():
    # `make demo` is README's first command: its default farm is a randomised block design
    # large enough that the headline's rule calls a working medicine on the perfect-grade
    # fast path (8 positions called nothing); the two-area layout is one option away.
    from farm_platform.cli import build_parser
    from farm_platform.report.effect_frame import treatment_effect_frame
    from farm_platform.report.effect_stats import add_decisions
    from farm_platform_dev.commands import _farm_config
    from farm_platform_dev.simulate import true_position_day

    config = _farm_config(build_parser().parse_args(["demo"]))
    assert design_name(field_map(config)) == RANDOMISED_BLOCKS
    decided = add_decisions(treatment_effect_frame(true_position_day(config)), diseases=5)
    called = decided.filter(pl.col("sequential_significant") & (pl.col("effect") < 0))
    assert called["disease_type"].n_unique() >= 3, decided
    two_areas = _farm_config(build_parser().parse_args(["demo", "--layout", "two-areas"]))
    assert design_name(field_map(two_areas)) == ALLOCATED_AREAS


# --------------------------------------------------------------------------- dbt, both warehouses


@pytest.mark.parametrize("db", ["duckdb", "postgres"])
def test_a_blocked_trial_through_dbt_is_estimated_within_blocks(db, tmp_path, request, monkeypatch):
    # The field map with block and assignment columns as the seed; a missed photo leaves
    # its block partner outside any block with both arms that day. Treatment begins on the
    # last day (FARM_TREATMENT_START): the first two form the pre-period, and the same build
    # makes trend_adjusted_effect (placebo looks, the trend-adjusted look).
    from datetime import date

    from dbt_farm import dbt_build, load_warehouse
    from polars.testing import assert_frame_equal
    from test_dbt_layouts import simulated_truth_farm

    from farm_platform.admin.configured import configured_registry
    from farm_platform.report.data import load_report_data
    from farm_platform.report.effect_frame import treatment_effect_frame
    from farm_platform.report.effect_trend import trend_adjusted_frame
    from farm_platform.report.headline import summary_lines
    from farm_platform.report.pre_period import pre_period_line
    from farm_platform.resources.warehouse import WarehouseResource
    from farm_platform_dev.farm import dbt_workdir
    from farm_platform_dev.postgres import fresh_database
    from farm_platform_dev.simulate import true_position_day

    config = FarmConfig(positions=8, days=3, seed=21, effect=0.15, layout="blocks", gradient=0.05)
    skipped = {("P002", date(2026, 6, 3))}
    farm = simulated_truth_farm(config, skipped)
    project = dbt_workdir(farm.positions, tmp_path / "project")
    if db == "duckdb":
        url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    else:
        url = fresh_database(request.getfixturevalue("postgres_url"), "farm_blocked_design")
    load_warehouse(url, farm)
    monkeypatch.setenv("FARM_TREATMENT_START", "2026-06-03")
    built = dbt_build(project, url)
    assert built.success, f"failed nodes: {sorted(built.failed())}"

    design = built.query("SELECT * FROM trial_design").row(0, named=True)
    assert design["design"] == RANDOMISED_BLOCKS
    assert (design["assignment"], design["randomisation_seed"], design["blocks"]) == (
        "randomised",
        21,
        4,
    )
    blocks = built.query("SELECT DISTINCT position_id, block FROM position_trajectories")
    assert dict(blocks.iter_rows()) == {p.position_id: p.block for p in field_map(config)}

    from_dbt = built.query("SELECT * FROM treatment_effect ORDER BY disease_type, date")
    assert set(from_dbt["estimator"]) == {"within blocks"}
    assert set(from_dbt["design"]) == {RANDOMISED_BLOCKS}
    last = from_dbt.filter(pl.col("date") == date(2026, 6, 3))
    assert set(last["n_blocks"]) == {3} and set(last["n_outside_blocks"]) == {1}
    position_day = true_position_day(config).filter(
        ~((pl.col("position_id") == "P002") & (pl.col("date") == date(2026, 6, 3)))
    )
    fast = treatment_effect_frame(position_day)
    same = {"check_dtypes": False, "check_exact": False, "rel_tol": 0, "abs_tol": 1e-5}
    assert_frame_equal(fast, from_dbt.select(fast.columns), **same)

    trend = built.query("SELECT * FROM trend_adjusted_effect ORDER BY disease_type, date")
    assert trend.select("period", "date", "days_since_start").unique().sort("date").rows() == [
        ("pre", date(2026, 6, 2), 1),
        ("treatment", date(2026, 6, 3), 1),
    ]
    fast_trend = trend_adjusted_frame(position_day, date(2026, 6, 3))
    assert_frame_equal(fast_trend, trend.select(fast_trend.columns), **same)

    # The report decides on the trend-adjusted look, numbered from treatment's first day,
    # and says so; each disease's line carries its pre-trend test.
    data = load_report_data(
        WarehouseResource(url=url), date(2026, 6, 3), configured_registry(), disease_names={}
    )
    assert data.effect["days_since_start"].to_list() == [1] * 5
    assert "The effect is net of each position's pre-treatment trend" in pre_period_line(data)
    lines = summary_lines(data)
    assert len(lines) == 5 and all("Pre-trend test over the pre-period" in x for x in lines)
