"""Data quality (issue 6): Great Expectations suites as per-partition asset checks, the
named corruption cases of `farm-platform check`, and the blocking path to dbt and reports.

One simulated farm is run through the real assets once per module (about 10 s); every
corruption is applied to a copy of what the assets wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from farm_platform.admin.configured import configured_registry
from farm_platform.quality import expectations as quality
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev import gate, gate_cases

SUITE_CASES = [case for case in gate_cases.CASES if not case.uses_dbt]
DBT_CASES = [case for case in gate_cases.CASES if case.uses_dbt]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> tuple[gate_cases.Snapshot, str, Path]:
    workdir = tmp_path_factory.mktemp("quality-farm")
    snapshot, url, _ = gate.simulate_farm(gate.GATE_FARM, workdir)
    return snapshot, url, workdir


@pytest.fixture(scope="module")
def clean_results(farm) -> list[quality.CheckResult]:
    return gate.run_suites(farm[0])


def test_the_simulated_farm_has_data_to_check(farm) -> None:
    snapshot, _, _ = farm
    positions, days = gate.GATE_FARM.positions, gate.GATE_FARM.days
    assert snapshot.images.height == positions * days
    assert snapshot.crops.height > 0
    assert snapshot.grades.height == 5 * snapshot.crops.height


def test_every_suite_passes_on_clean_data(clean_results) -> None:
    checks = {(r.asset, r.check_name) for r in clean_results}
    assert checks == {
        ("drone_images", "image_quality"),
        ("leaf_crops", "leaf_crops_valid"),
        ("leaf_crops", "leaves_vanished"),
        *{(f"disease_{k}_grades", "grades_valid") for k in range(5)},
        *{(f"disease_{k}_grades", "severity_jump") for k in range(5)},
    }
    n_partitions = gate.GATE_FARM.positions * gate.GATE_FARM.days
    for result in clean_results:
        assert len(result.outcomes) == n_partitions, (result.asset, result.check_name)
        assert result.passed, (result.asset, result.check_name, result.failed_partitions())


def test_the_assets_record_every_partitions_checks(farm) -> None:
    """The ops logged the checks and wrote them to partition_quality: all passed, per partition."""
    _, url, _ = farm
    rows = WarehouseResource(url=url).query("SELECT * FROM partition_quality")
    n_partitions = gate.GATE_FARM.positions * gate.GATE_FARM.days
    # image_quality + leaf_crops_valid + leaves_vanished + 5 × (grades_valid + severity_jump)
    assert rows.height == n_partitions * 13
    assert rows["passed"].all(), rows.filter(~pl.col("passed"))
    by_check = rows.group_by("asset", "check_name", "severity").len()
    assert set(by_check["len"]) == {n_partitions}
    severities = dict(zip(by_check["check_name"], by_check["severity"], strict=False))
    assert severities["grades_valid"] == "ERROR" and severities["severity_jump"] == "WARN"
    assert severities["leaves_vanished"] == "WARN"


@pytest.mark.parametrize("case", SUITE_CASES, ids=[case.name for case in SUITE_CASES])
def test_each_corruption_is_caught_by_its_named_check(farm, case: gate_cases.Case) -> None:
    snapshot, _, _ = farm
    results = gate.run_suites(case.corrupt(snapshot))
    asset, check_name, expectation = case.expected
    (result,) = [r for r in results if (r.asset, r.check_name) == (asset, check_name)]
    failed = result.failed_partitions()
    assert failed, f"{case.name} not caught by {asset}/{check_name}"
    assert all(expectation in result.outcomes[p].failed for p in failed)
    assert result.severity == (
        "WARN" if check_name in ("leaves_vanished", "severity_jump") else "ERROR"
    )
    if case.name != "null_key":  # a null key cannot be attributed: the batch fails
        # Only the corrupted partition fails; the others of the batch are not harmed.
        assert len(failed) < len(result.outcomes)
    # The gate's verdict on the same results (`make check` computes them in evaluate_case).
    assert gate.judge_case(case, results, failed_tests=[]).caught


@pytest.mark.parametrize("case", DBT_CASES, ids=[case.name for case in DBT_CASES])
def test_field_map_corruptions_are_caught_by_dbt_tests(
    farm, case: gate_cases.Case, tmp_path
) -> None:
    snapshot, url, _ = farm
    failed = gate.dbt_failures(tmp_path, url, case.corrupt(snapshot).positions, case.name)
    assert any(name.startswith(case.expected[1]) for name in failed), failed


def test_clean_farm_passes_dbt_build(farm, tmp_path) -> None:
    snapshot, url, _ = farm
    assert gate.dbt_failures(tmp_path, url, snapshot.positions, "clean") == []


@pytest.mark.slow
def test_a_failing_grade_partition_is_held_back_from_dbt_and_the_report(farm, tmp_path) -> None:
    from farm_platform.report.data import load_report_data
    from farm_platform.report.render import render_report

    snapshot, url, _ = farm
    case = next(c for c in gate_cases.CASES if c.name == "out_of_range_grade")
    results = gate.run_suites(case.corrupt(snapshot))
    (grades_check,) = [
        r for r in results if (r.asset, r.check_name) == ("disease_3_grades", "grades_valid")
    ]
    (bad,) = grades_check.failed_partitions()
    source = WarehouseResource(url=url).duckdb_path
    copy = tmp_path / "with_failure.duckdb"
    shutil.copyfile(source, copy)
    warehouse = WarehouseResource(url=f"duckdb:///{copy}")
    warehouse.replace_rows(
        "partition_quality", grades_check.quality_rows(dt.datetime.now(dt.UTC), "test-run")
    )
    assert gate.dbt_failures(tmp_path, warehouse.url, snapshot.positions, "blocking") == []
    built = WarehouseResource(url=f"duckdb:///{tmp_path / 'warehouse_blocking.duckdb'}")

    position, date = bad
    active = built.query(
        "SELECT disease_type, count(*) AS n FROM stg_active_disease_grades"
        " WHERE position_id = %s AND date = %s GROUP BY disease_type",
        [position, date],
    )
    counts = dict(zip(active["disease_type"], active["n"], strict=True))
    assert "disease_3" not in counts  # held back …
    assert set(counts) == {"disease_0", "disease_1", "disease_2", "disease_4"}  # … alone
    held = built.query("SELECT * FROM held_back_partitions").to_dicts()
    assert [(h["position_id"], h["date"], h["disease_type"]) for h in held] == [
        (position, date, "disease_3")
    ]
    assert held[0]["failed_checks"] == "disease_3_grades/grades_valid"
    # The marts follow: disease_3 has one position fewer on that date than disease_0.
    images = built.query(
        "SELECT disease_type, sum(images) AS images FROM daily_severity WHERE date = %s"
        " GROUP BY disease_type",
        [date],
    )
    per_disease = dict(zip(images["disease_type"], images["images"], strict=True))
    assert per_disease["disease_3"] == per_disease["disease_0"] - 1

    data = load_report_data(built, date, configured_registry())
    assert data.held_back.select("position_id", "disease_type").rows() == [(position, "disease_3")]
    page = render_report(data)
    assert "held back" in page and position in page and "disease_3_grades/grades_valid" in page
    details = json.loads(grades_check.details(bad))
    assert details["failed"] == ["grade_in_scale"] and details["observed"]["grade_in_scale"]


def test_check_specs_are_declared_per_day_partition_and_never_block_a_whole_day(
    location_env,
) -> None:
    from farm_platform.admin.configured import configured_day_partitions
    from farm_platform.images.definitions import defs

    graph = defs.resolve_asset_graph()
    specs = {
        (key.asset_key.to_user_string(), key.name): graph.get_check_spec(key)
        for key in graph.asset_check_keys
    }
    expected = {("drone_images", "image_quality"), ("leaf_crops", "leaf_crops_valid")}
    expected |= {("leaf_crops", "leaves_vanished"), ("leaf_crops", "detector_drift")}
    for k in range(5):
        expected |= {(f"disease_{k}_grades", "grades_valid")}
        expected |= {(f"disease_{k}_grades", "severity_jump")}
        expected |= {(f"disease_{k}_grades", "grader_drift")}  # issue 25
    assert set(specs) == expected
    for spec in specs.values():
        # One evaluation per day; a failing photo is held back by partition_quality, not by
        # failing the day's step (which Dagster does for a failed blocking check).
        assert spec.partitions_def == configured_day_partitions() and not spec.blocking


def test_compiled_checks_find_what_great_expectations_finds_in_every_gate_case(farm) -> None:
    """Issue 44: on the clean farm and every corruption case, each suite evaluation that
    `validate_photos` makes gives the same failures (names, unexpected rows with their
    photo and values, in order) compiled and by Great Expectations itself."""
    from farm_platform.quality import compiled
    from farm_platform_dev import ge_reference

    snapshot, _, _ = farm
    calls: dict[tuple, tuple[pl.DataFrame, str, dict]] = {}

    def recording(frame: pl.DataFrame, suite: str, parameters=None) -> list:
        key = (suite, repr(parameters), repr(frame.schema), tuple(frame.hash_rows(seed=0)))
        calls.setdefault(key, (frame, suite, dict(parameters or {})))
        return compiled.evaluate(frame, suite, parameters)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quality, "evaluate_suite", recording)
        for snapshot_case in [snapshot, *(case.corrupt(snapshot) for case in SUITE_CASES)]:
            gate.run_suites(snapshot_case)
    assert {suite for _, suite, _ in calls.values()} == set(compiled.compiled_suites())
    failing = 0
    for frame, suite, parameters in calls.values():
        ours = compiled.evaluate(frame, suite, parameters)
        reference = ge_reference.evaluate(frame, suite, parameters)
        assert ge_reference.comparable(ours) == ge_reference.comparable(reference), suite
        failing += bool(reference)
    assert failing >= len(SUITE_CASES) - 2  # the cases' failures were compared, not only passes


def test_loading_the_code_location_does_not_import_great_expectations(location_env) -> None:
    probe = (
        "import sys, farm_platform.images.definitions, farm_platform.analytics.report; "
        "print('great_expectations' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=location_env
    )
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_the_cli_has_the_check_command() -> None:
    from farm_platform.cli import build_parser

    args = build_parser().parse_args(["check", "--workdir", "/tmp/x"])
    assert args.handler.__name__ == "_check" and args.workdir == "/tmp/x"
