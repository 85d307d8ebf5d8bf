"""The Great Expectations suites, defined in code (one function per suite).

Every expectation carries `meta={"name": ...}`: that name is what check results, the
`partition_quality` table and `farm-platform check` report. Each suite describes one frame
that `farm_platform.quality.expectations` builds; the frame's columns are listed in the docstring.
great_expectations is imported inside the functions: the code location must not load it.

A value known only at run time (the model card's scale, the registry's active versions, the
configured jump bound) is a Great Expectations suite parameter, `{"$PARAMETER": name}`; the
`*_parameters` functions below give their values. Runs do not import Great Expectations:
`python -m farm_platform.quality.compile --write` compiles these suites into
`compiled_suites.json`, which `farm_platform.quality.compiled` evaluates with polars.

To add an expectation: append it to the suite's list with a new `meta` name, recompile, then
add a corruption case that it catches in `farm_platform_dev/gate_cases.py`
(docs/data-quality.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# Bounds of a drone photo: the simulator renders 256 px squares, the drones shoot ≤ 8K.
MIN_IMAGE_SIDE = 64
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_LEAVES_PER_IMAGE = 20
# Default bound of the day-to-day change of a position's mean grade (WARN above it).
DEFAULT_MAX_SEVERITY_JUMP = 1.5


def _parameter(name: str) -> dict[str, str]:
    """A suite parameter: its value is given when the suite is validated."""
    return {"$PARAMETER": name}


def _named(expectation: Any, name: str) -> Any:
    expectation.meta = {**(expectation.meta or {}), "name": name}
    return expectation


def _suite(name: str, expectations: Sequence[Any]) -> Any:
    import great_expectations as gx

    return gx.ExpectationSuite(name=name, expectations=list(expectations))


def drone_images_suite() -> Any:
    """One row per partition: `exists` (bool), `error`, `width`, `height`, `size_bytes`."""
    import great_expectations as gx

    E = gx.expectations
    return _suite(
        "drone_images",
        [
            _named(
                E.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]), "object_exists"
            ),
            _named(E.ExpectColumnValuesToBeNull(column="error"), "decodes_as_image"),
            _named(
                E.ExpectColumnValuesToBeBetween(
                    column="width", min_value=MIN_IMAGE_SIDE, max_value=MAX_IMAGE_SIDE
                ),
                "width_in_bounds",
            ),
            _named(
                E.ExpectColumnValuesToBeBetween(
                    column="height", min_value=MIN_IMAGE_SIDE, max_value=MAX_IMAGE_SIDE
                ),
                "height_in_bounds",
            ),
            _named(
                E.ExpectColumnValuesToBeBetween(
                    column="size_bytes", min_value=1, max_value=MAX_IMAGE_BYTES
                ),
                "size_bytes_in_bounds",
            ),
        ],
    )


def leaf_crops_suite() -> Any:
    """One row per leaf crop, joined with its photo's `width`/`height` and `crop_exists`."""
    import great_expectations as gx

    E = gx.expectations
    key = ["position_id", "date", "cropper_model_id", "cropper_model_version", "leaf_crop_idx"]
    return _suite(
        "leaf_crops",
        [
            *[
                _named(E.ExpectColumnValuesToNotBeNull(column=column), "keys_not_null")
                for column in ("position_id", "date", "leaf_crop_idx")
            ],
            _named(E.ExpectCompoundColumnsToBeUnique(column_list=key), "keys_unique"),
            _named(E.ExpectColumnValuesToBeBetween(column="x0", min_value=0), "box_inside_image"),
            _named(E.ExpectColumnValuesToBeBetween(column="y0", min_value=0), "box_inside_image"),
            _named(
                E.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A="width", column_B="x1", or_equal=True
                ),
                "box_inside_image",
            ),
            _named(
                E.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A="height", column_B="y1", or_equal=True
                ),
                "box_inside_image",
            ),
            _named(
                E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="x1", column_B="x0"),
                "box_not_empty",
            ),
            _named(
                E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="y1", column_B="y0"),
                "box_not_empty",
            ),
            _named(E.ExpectColumnValuesToNotBeNull(column="score"), "score_in_unit_interval"),
            _named(
                E.ExpectColumnValuesToBeBetween(column="score", min_value=0, max_value=1),
                "score_in_unit_interval",
            ),
            _named(
                E.ExpectColumnValuesToBeInSet(column="crop_exists", value_set=[True]),
                "crop_object_exists",
            ),
            *[
                _named(E.ExpectColumnValuesToNotBeNull(column=column), "model_id_version_present")
                for column in ("cropper_model_id", "cropper_model_version")
            ],
            *[
                _named(
                    E.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1),
                    "model_id_version_present",
                )
                for column in ("cropper_model_id", "cropper_model_version")
            ],
        ],
    )


def _at_most_suite(suite_name: str, column: str, max_value: Any, name: str) -> Any:
    """A suite of the one expectation `0 <= column <= max_value`, named `name`: the
    per-photo leaf count and the day-to-day severity change are bounded alike."""
    import great_expectations as gx

    return _suite(
        suite_name,
        [
            _named(
                gx.expectations.ExpectColumnValuesToBeBetween(
                    column=column, min_value=0, max_value=max_value
                ),
                name,
            )
        ],
    )


def leaf_counts_suite() -> Any:
    """One row per partition: `leaves` (crops of the active detector on the photo)."""
    return _at_most_suite("leaf_counts", "leaves", MAX_LEAVES_PER_IMAGE, "leaf_count_0_to_20")


# Value sets of the grades suite known only at run time: each parameter is a list.
_ACTIVE_VERSIONS = (
    "disease_model_id",
    "disease_model_version",
    "cropper_model_id",
    "cropper_model_version",
)


def disease_grades_suite() -> Any:
    """One row per grade written for one disease (the disease_grades columns).

    Parameters (`disease_grades_parameters`): `disease_type`, `grades` (the model card's
    scale) and the (id, version) columns of the grader and detector the registry names active.
    """
    import great_expectations as gx

    E = gx.expectations
    keys = ["position_id", "date", "leaf_crop_idx", "disease_type"]
    return _suite(
        "disease_grades",
        [
            *[
                _named(E.ExpectColumnValuesToNotBeNull(column=column), "keys_not_null")
                for column in keys
            ],
            _named(E.ExpectCompoundColumnsToBeUnique(column_list=keys), "keys_unique"),
            _named(
                E.ExpectColumnValuesToBeInSet(
                    column="disease_type", value_set=_parameter("disease_type")
                ),
                "disease_type_matches",
            ),
            _named(E.ExpectColumnValuesToNotBeNull(column="predicted_grade"), "grade_in_scale"),
            _named(
                E.ExpectColumnValuesToBeInSet(
                    column="predicted_grade", value_set=_parameter("grades")
                ),
                "grade_in_scale",
            ),
            _named(
                E.ExpectColumnValuesToNotBeNull(column="confidence"),
                "confidence_in_unit_interval",
            ),
            _named(
                E.ExpectColumnValuesToBeBetween(column="confidence", min_value=0, max_value=1),
                "confidence_in_unit_interval",
            ),
            *[
                _named(E.ExpectColumnValuesToNotBeNull(column=column), "model_version_present")
                for column in _ACTIVE_VERSIONS
            ],
            *[
                _named(
                    E.ExpectColumnValuesToBeInSet(column=column, value_set=_parameter(column)),
                    "model_version_active",
                )
                for column in _ACTIVE_VERSIONS
            ],
        ],
    )


def disease_grades_parameters(
    disease_type: str,
    grades: Sequence[int],
    grader: tuple[str, str],
    cropper: tuple[str, str],
) -> dict[str, list[Any]]:
    """The grades suite's parameters: `grades` is the model card's scale, `grader` and
    `cropper` the (id, version) the model registry names active."""
    active = dict(zip(_ACTIVE_VERSIONS, [*grader, *cropper], strict=True))
    return {
        "disease_type": [disease_type],
        "grades": list(grades),
        **{column: [value] for column, value in active.items()},
    }


def grade_counts_suite() -> Any:
    """One row per partition: `crops` (active detector) and `grade_rows` for the disease."""
    import great_expectations as gx

    return _suite(
        "grade_counts",
        [
            _named(
                gx.expectations.ExpectColumnPairValuesToBeEqual(
                    column_A="grade_rows", column_B="crops"
                ),
                "one_row_per_crop",
            )
        ],
    )


def leaves_vanished_suite() -> Any:
    """One row per partition: `leaves_yesterday` (null: no photo) and `leaves`. WARN only."""
    import great_expectations as gx

    return _suite(
        "leaves_vanished",
        [
            _named(
                gx.expectations.ExpectColumnValuesToBeInSet(column="vanished", value_set=[False]),
                "leaves_vanished",
            )
        ],
    )


def severity_jump_suite() -> Any:
    """One row per partition: `jump` = |mean grade today − yesterday| (null: no yesterday).
    Parameter `max_jump` (`severity_jump_parameters`)."""
    return _at_most_suite(
        "severity_jump", "jump", _parameter("max_jump"), "severity_jump_within_bound"
    )


def severity_jump_parameters(max_jump: float = DEFAULT_MAX_SEVERITY_JUMP) -> dict[str, float]:
    return {"max_jump": max_jump}


# Every suite by name: what `farm_platform.quality.compile` compiles and runs validate.
SUITES: dict[str, Callable[[], Any]] = {
    "drone_images": drone_images_suite,
    "leaf_crops": leaf_crops_suite,
    "leaf_counts": leaf_counts_suite,
    "disease_grades": disease_grades_suite,
    "grade_counts": grade_counts_suite,
    "leaves_vanished": leaves_vanished_suite,
    "severity_jump": severity_jump_suite,
}
