"""The marts of a clean `dbt build` of the synthetic trial (dbt_farm.py), on DuckDB and
PostgreSQL: the effect it recovers, the model-version comparison, the report headline.
The arithmetic of daily_severity, coverage, position_trajectories and the blocked
treatment_effect on a few rows is the dbt unit tests' (dbt_project/models/marts/
_unit_tests.yml), which this build runs.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterator

import polars as pl
import pytest
from dbt_farm import (
    DAYS,
    KNOWN_EFFECT_PER_DAY,
    LAST_DAY,
    LEAVES_PER_PHOTO,
    TOLERANCE,
    Build,
    Farm,
    built_farm,
    dbt_build,
    farm_fixture,  # noqa: F401 (the fixture `farm`)
    position_changes,
)
from polars.testing import assert_frame_equal

from farm_platform.admin.configured import configured_registry
from farm_platform.report.data import effect_decisions, load_report_data
from farm_platform.report.headline import design_line, summary_lines
from farm_platform.resources.warehouse import WarehouseResource


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def build(
    request: pytest.FixtureRequest, farm: Farm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Build]:
    """A clean `dbt build` of the synthetic farm, once per database."""
    with built_farm(request, farm, tmp_path_factory, "farm_dbt_test") as built:
        yield built


# --------------------------------------------------------------------------- the clean build


def test_build_succeeds_with_every_test_passing(build: Build) -> None:
    assert build.success, f"failed nodes: {sorted(build.failed())}"
    tests = {node: s for node, s in build.statuses.items() if node.startswith("test.")}
    assert len(tests) > 40
    assert set(tests.values()) == {"pass"}, {n: s for n, s in tests.items() if s != "pass"}
    # The dbt unit tests (models/marts/_unit_tests.yml): a model whose arithmetic broke
    # fails its unit test, and the build skips the model and everything after it.
    units = {node: s for node, s in build.statuses.items() if node.startswith("unit_test.")}
    assert {node.split(".")[2] for node in units} >= {
        "daily_severity",
        "coverage",
        "position_trajectories",
        "treatment_effect",
    }
    assert set(units.values()) == {"pass"}, units
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
        changes = position_changes(farm, "disease_0")[DAYS[day_index]]
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
    changes = position_changes(farm, "disease_3", grader_version="v1")
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
    data = load_report_data(WarehouseResource(url=build.url), LAST_DAY, configured_registry())
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
