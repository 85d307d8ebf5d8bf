"""The compiled suites (issue 44): `compiled_suites.json` is what `suites.py` compiles to, the
polars evaluator finds what Great Expectations finds on edge rows of every expectation type
used, and a run's check path does not import Great Expectations.

The parity over the quality gate's clean farm and corruption cases is in
`integration/test_quality.py`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
import textwrap
from unittest import mock

import polars as pl
import pytest

from farm_platform.quality import compile as compile_suites
from farm_platform.quality import compiled
from farm_platform.quality import expectations as checks
from farm_platform.quality.compiled import PARTITION_COLUMN
from farm_platform_dev import ge_reference

D1, D2 = dt.date(2024, 5, 1), dt.date(2024, 5, 2)


def test_the_compiled_file_is_what_the_suites_compile_to() -> None:
    expected = compile_suites.render(compile_suites.compile_suites())
    assert compiled.ARTIFACT.read_text() == expected, (
        f"compiled_suites.json is out of date: run `{compiled.COMPILE_COMMAND}`"
    )
    assert compile_suites.main(["--check"]) == 0


def _edge_suite(mostly: float | None = None):
    """Every expectation type the suites use, with the options that change its outcome."""
    import great_expectations as gx

    E = gx.expectations
    extra = {} if mostly is None else {"mostly": mostly}

    def named(expectation, name):
        expectation.meta = {"name": name}
        return expectation

    return gx.ExpectationSuite(
        name="edges",
        expectations=[
            named(E.ExpectColumnValuesToBeBetween(column="f", min_value=0, max_value=1), "f_01"),
            named(
                E.ExpectColumnValuesToBeBetween(
                    column="i", min_value=0, max_value={"$PARAMETER": "top"}, strict_max=True
                ),
                "i_below_top",
            ),
            named(E.ExpectColumnValuesToBeBetween(column="g", min_value=0.1, **extra), "g_min"),
            named(
                E.ExpectColumnValuesToBeBetween(column="i", min_value=0, strict_min=True), "i_pos"
            ),
            named(E.ExpectColumnValuesToBeInSet(column="b", value_set=[True]), "b_true"),
            named(
                E.ExpectColumnValuesToBeInSet(column="i", value_set={"$PARAMETER": "scale"}),
                "i_scale",
            ),
            named(E.ExpectColumnValuesToBeInSet(column="s", value_set=["x", "yy"]), "s_set"),
            named(E.ExpectColumnValuesToBeNull(column="s"), "s_null"),
            named(E.ExpectColumnValuesToNotBeNull(column="f", **extra), "f_present"),
            named(E.ExpectColumnValuesToNotBeNull(column="i"), "i_present"),
            named(E.ExpectColumnValuesToNotBeNull(column="d"), "d_present"),
            named(E.ExpectColumnValuesToNotBeNull(column="n"), "n_present"),
            named(E.ExpectColumnValuesToBeInSet(column="n", value_set=[True]), "n_true"),
            named(E.ExpectColumnValueLengthsToBeBetween(column="n", min_value=1), "n_len"),
            named(E.ExpectCompoundColumnsToBeUnique(column_list=["k", "s"]), "ks_unique"),
            named(E.ExpectCompoundColumnsToBeUnique(column_list=["k", "d"]), "kd_unique"),
            named(
                E.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A="i", column_B="j", or_equal=True
                ),
                "i_ge_j",
            ),
            named(E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="f", column_B="g"), "f_gt_g"),
            named(E.ExpectColumnPairValuesToBeEqual(column_A="i", column_B="j"), "i_eq_j"),
            named(E.ExpectColumnValueLengthsToBeBetween(column="s", min_value=1), "s_len"),
            named(
                E.ExpectColumnValueLengthsToBeBetween(column="s", min_value=1, max_value=1),
                "s_len_1",
            ),
        ],
    )


def _edge_frame(nulls: bool) -> pl.DataFrame:
    """Rows at every bound, with nulls, NaN (null to pandas) and duplicate keys; without
    `nulls`, integer columns have no null (pandas then keeps them integers)."""
    n = None
    frame = pl.DataFrame(
        {
            "position_id": ["a", "b", "c", "d", "e", "f", "g", "g", "h"],
            "date": [D1, D1, D1, n, D1, D1, D2, D2, D1],
            "f": [0.5, n, math.nan, 1.5, -1.0, 1.0, math.nan, n, 1.0],
            "g": [0.4, 0.1, 0.1, n, n, 1.0, n, 0.05, math.nan],
            "i": [1, 2, n, 3, 0, 1, 2, 2, 5],
            "j": [1, 3, 2, n, n, 0, 2, 2, n],
            "b": [True, False, n, True, True, False, True, True, True],
            "s": [n, "x", "", n, "x", "yy", "x", "x", n],
            "k": [1, 1, 2, 2, 1, n, 3, 3, n],
            "d": [D1, D1, n, D1, D1, D2, D1, D1, n],
            "n": [n] * 9,  # polars' Null type
        }
    )
    if not nulls:
        frame = frame.with_columns(pl.col("i", "j", "k").fill_null(4))
    return frame.with_columns(
        pl.concat_str(["position_id", pl.lit("|"), pl.col("date").cast(pl.String)]).alias(
            PARTITION_COLUMN
        )
    )


@pytest.mark.parametrize("nulls", [True, False], ids=["with-nulls", "without-nulls"])
@pytest.mark.parametrize("mostly", [None, 0.6], ids=["all", "mostly"])
def test_the_evaluator_finds_what_great_expectations_finds(nulls: bool, mostly: float) -> None:
    suite = _edge_suite(mostly)
    parameters = {"top": 5, "scale": [0, 1, 2]}
    frame = _edge_frame(nulls)
    expectations = [
        compiled.Expectation(e["type"], e["name"], e["kwargs"])
        for e in compile_suites.compile_suite("edges", suite)
    ]
    ours = compiled.evaluate_expectations(
        frame, compiled.validation_order(expectations), parameters
    )
    reference = ge_reference.validate_suite(frame, suite, parameters)
    assert ge_reference.comparable(ours) == ge_reference.comparable(reference)
    assert len(ours) >= 15  # the frame breaks (nearly) every expectation
    # … and so the same outcome per photo (values kept, duplicates dropped, at most 5).
    photos = list(zip(frame["position_id"], frame["date"], strict=True))
    outcomes = []
    for failures in (ours, reference):
        with mock.patch.object(checks, "evaluate_suite", lambda *_, f=failures: f):
            outcomes.append(checks.validate(frame, "edges", photos, parameters))
    assert json.dumps(str(outcomes[0])) == json.dumps(str(outcomes[1]))


def test_a_missing_column_fails_the_expectation_like_great_expectations() -> None:
    suite = _edge_suite()
    frame = _edge_frame(nulls=True).drop("g")
    expectations = [
        compiled.Expectation(e["type"], e["name"], e["kwargs"])
        for e in compile_suites.compile_suite("edges", suite)
    ]
    ours = compiled.evaluate_expectations(
        frame, compiled.validation_order(expectations), {"top": 5, "scale": [1]}
    )
    reference = ge_reference.validate_suite(frame, suite, {"top": 5, "scale": [1]})
    missing = [f for f in reference if f.name in ("g_min", "f_gt_g")]
    assert missing and all('"g"' in str(f.observed) for f in missing)
    assert ge_reference.comparable(ours) == ge_reference.comparable(reference)


def test_an_expectation_type_without_evaluator_fails_compilation() -> None:
    import great_expectations as gx

    expectation = gx.expectations.ExpectColumnMeanToBeBetween(column="x", min_value=0)
    expectation.meta = {"name": "mean_positive"}
    suite = gx.ExpectationSuite(name="means", expectations=[expectation])
    with pytest.raises(compile_suites.CompileError) as error:
        compile_suites.compile_suites({"means": lambda: suite})
    message = str(error.value)
    assert "expect_column_mean_to_be_between" in message and "mean_positive" in message
    assert "farm_platform/quality/compiled.py" in message  # … and what to do


def test_an_option_the_evaluator_ignores_fails_compilation() -> None:
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    expectation = gx.expectations.ExpectColumnValuesToNotBeNull(
        column="x", row_condition=Column("y") > 0
    )
    expectation.meta = {"name": "x_present"}
    suite = gx.ExpectationSuite(name="conditional", expectations=[expectation])
    with pytest.raises(compile_suites.CompileError, match="row_condition"):
        compile_suites.compile_suite("conditional", suite)


def test_a_missing_parameter_is_named() -> None:
    frame = _edge_frame(nulls=True)
    with pytest.raises(KeyError, match="max_jump"):
        compiled.evaluate(frame.with_columns(jump=pl.lit(0.5)), "severity_jump", {})


# A run's check path (what `day_checks.check_day` calls) on a small batch with one bad photo.
_RUN_PROBE = textwrap.dedent(
    """
    import datetime as dt, json, sys
    import polars as pl
    import farm_platform.images.definitions, farm_platform.images.day_checks
    from farm_platform.quality.validate import GraderBatch, PhotoBatch, validate_photos

    day = dt.date(2024, 5, 1)
    images = pl.DataFrame({
        "position_id": ["p1", "p2"], "date": [day, day], "exists": [True, True],
        "error": [None, None], "width": [256, 10], "height": [256, 256],
        "size_bytes": [1000, 1000]}, schema_overrides={"error": pl.String})
    crops = pl.DataFrame({
        "position_id": ["p1"], "date": [day], "cropper_model_id": ["det"],
        "cropper_model_version": ["1"], "leaf_crop_idx": [0], "x0": [1.0], "y0": [1.0],
        "x1": [9.0], "y1": [9.0], "score": [0.9], "crop_uri": ["file:///c.png"]})
    grades = pl.DataFrame({
        "position_id": ["p1"], "date": [day], "leaf_crop_idx": [0],
        "disease_type": ["disease_0"], "predicted_grade": [7], "confidence": [0.8],
        "disease_model_id": ["g0"], "disease_model_version": ["1"],
        "cropper_model_id": ["det"], "cropper_model_version": ["1"]})
    grader = GraderBatch(
        "disease_0", ("g0", "1"), (0, 1, 2, 3, 4), rows=lambda: grades,
        mean_grades=lambda: pl.DataFrame({"position_id": ["p1"], "date": [day],
                                          "mean_grade": [7.0]}))
    batch = PhotoBatch(
        photos=[("p1", day), ("p2", day)], cropper=("det", "1"), images=images,
        crops=lambda: crops,
        leaf_counts=lambda: pl.DataFrame({"position_id": ["p1", "p2"], "date": [day, day],
                                          "leaves": [1, 0]}),
        graders=[grader])
    results = validate_photos(batch, 1.5, print)
    failed = {f"{r.asset}/{r.check_name}": [p for p, _ in r.failed_partitions()]
              for r in results}
    print(json.dumps({"failed": failed, "ge": "great_expectations" in sys.modules}))
    """
)


def test_a_runs_check_path_does_not_import_great_expectations(location_env) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _RUN_PROBE], capture_output=True, text=True, env=location_env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ge"] is False
    # The checks ran: the narrow photo and the grade outside the scale were caught.
    assert report["failed"]["drone_images/image_quality"] == ["p2"]
    assert report["failed"]["disease_0_grades/grades_valid"] == ["p1"]
    assert report["failed"]["leaf_crops/leaf_crops_valid"] == []
