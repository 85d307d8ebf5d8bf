"""The data-quality gate's corruption cases: each breaks a copy of a graded farm in one
way and names the check that must catch it (`farm-platform check`, `dev/gate.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from farm_platform.layout import MISSING_OBJECT_ERROR


@dataclass(frozen=True)
class Snapshot:
    """The farm's data as the checks see it (a corruption returns a changed copy)."""

    images: pl.DataFrame  # drone_images rows + `exists`
    crops: pl.DataFrame  # leaf_crops rows of the active detector
    grades: pl.DataFrame  # disease_grades rows on the active detector's crops
    positions: pl.DataFrame  # the field map
    cropper: tuple[str, str]
    graders: dict[str, tuple[str, str, tuple[int, ...]]]  # disease -> (id, version, scale)
    filesystem: Any


def _first(frame: pl.DataFrame, **where: Any) -> pl.Expr:
    """A predicate selecting the rows of `frame`'s first partition (or the one given)."""
    row = frame.sort("date", "position_id").row(0, named=True)
    position, date = where.get("position_id", row["position_id"]), where.get("date", row["date"])
    return (pl.col("position_id") == position) & (pl.col("date") == date)


def _grades(snapshot: Snapshot, disease: str = "disease_3") -> pl.Expr:
    return pl.col("disease_type") == disease


def _one_grade(snapshot: Snapshot, disease: str = "disease_3") -> pl.Expr:
    """The first row of `disease` in snapshot.grades."""
    index = snapshot.grades.with_row_index().filter(pl.col("disease_type") == disease)["index"][0]
    return pl.int_range(pl.len()) == index


def duplicate_rows(s: Snapshot) -> Snapshot:
    return replace(s, grades=pl.concat([s.grades, s.grades.filter(_grades(s)).head(1)]))


def out_of_range_grade(s: Snapshot) -> Snapshot:
    target = _one_grade(s)
    return replace(
        s,
        grades=s.grades.with_columns(
            pl.when(target).then(7).otherwise(pl.col("predicted_grade")).alias("predicted_grade")
        ),
    )


def _set(frame: pl.DataFrame, target: pl.Expr, column: str, value: Any) -> pl.DataFrame:
    return frame.with_columns(
        pl.when(target).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    )


def missing_model_version(s: Snapshot) -> Snapshot:
    target = _one_grade(s)
    return replace(s, grades=_set(s.grades, target, "disease_model_version", None))


def inactive_model_version(s: Snapshot) -> Snapshot:
    target = _grades(s) & _first(s.grades)
    return replace(s, grades=_set(s.grades, target, "disease_model_version", "v0-retired"))


def confidence_above_one(s: Snapshot) -> Snapshot:
    target = _one_grade(s)
    return replace(s, grades=_set(s.grades, target, "confidence", 1.5))


def null_key(s: Snapshot) -> Snapshot:
    target = _one_grade(s)
    return replace(s, grades=_set(s.grades, target, "leaf_crop_idx", None))


def missing_grade_row(s: Snapshot) -> Snapshot:
    target = _one_grade(s)
    return replace(s, grades=s.grades.filter(~target))


def leaf_count_above_20(s: Snapshot) -> Snapshot:
    first = s.crops.sort("date", "position_id", "leaf_crop_idx").head(1)
    extra = pl.concat(
        [
            first.with_columns(
                pl.lit(100 + i).cast(first["leaf_crop_idx"].dtype).alias("leaf_crop_idx")
            )
            for i in range(21)
        ]
    )
    return replace(s, crops=pl.concat([s.crops, extra]))


def box_outside_image(s: Snapshot) -> Snapshot:
    target = pl.int_range(pl.len()) == 0
    return replace(s, crops=_set(s.crops, target, "x1", 10_000.0))


def score_out_of_range(s: Snapshot) -> Snapshot:
    target = pl.int_range(pl.len()) == 0
    return replace(s, crops=_set(s.crops, target, "score", -0.2))


def crop_object_missing(s: Snapshot) -> Snapshot:
    uri = s.crops["crop_uri"][0]
    return replace(s, crops=_set(s.crops, pl.col("crop_uri") == uri, "crop_uri", uri + ".gone"))


def missing_cropper_version(s: Snapshot) -> Snapshot:
    target = pl.int_range(pl.len()) == 0
    return replace(s, crops=_set(s.crops, target, "cropper_model_version", ""))


def undecodable_image(s: Snapshot) -> Snapshot:
    from farm_platform.grading.photos import decode_photo
    from farm_platform.ml import inference

    _, error = decode_photo(b"\x89PNG not really", inference)
    target = pl.int_range(pl.len()) == 0
    images = _set(s.images, target, "error", error)
    return replace(s, images=images)


def missing_image_object(s: Snapshot) -> Snapshot:
    target = pl.int_range(pl.len()) == 0
    images = _set(_set(s.images, target, "exists", False), target, "error", MISSING_OBJECT_ERROR)
    return replace(s, images=images)


def tiny_image(s: Snapshot) -> Snapshot:
    target = pl.int_range(pl.len()) == 0
    return replace(s, images=_set(s.images, target, "width", 8))


def leaves_vanished(s: Snapshot) -> Snapshot:
    # A position photographed with leaves on day 1 has none on day 2.
    days = sorted(s.crops["date"].unique())
    position = s.crops.filter(pl.col("date") == days[0])["position_id"][0]
    gone = (pl.col("position_id") == position) & (pl.col("date") == days[1])
    return replace(s, crops=s.crops.filter(~gone), grades=s.grades.filter(~gone))


def severity_jump(s: Snapshot) -> Snapshot:
    days = sorted(s.grades["date"].unique())
    position = s.grades["position_id"][0]
    grades = s.grades.with_columns(
        pl.when(
            (pl.col("disease_type") == "disease_0")
            & (pl.col("position_id") == position)
            & pl.col("date").is_in(days[:2])
        )
        .then(pl.when(pl.col("date") == days[0]).then(0).otherwise(3))
        .otherwise(pl.col("predicted_grade"))
        .alias("predicted_grade")
    )
    return replace(s, grades=grades)


def wrong_area_in_field_map(s: Snapshot) -> Snapshot:
    target = pl.int_range(pl.len()) == 0
    return replace(s, positions=_set(s.positions, target, "area", "sprayed"))


def position_missing_from_field_map(s: Snapshot) -> Snapshot:
    return replace(s, positions=s.positions.slice(1))


@dataclass(frozen=True)
class Case:
    name: str
    corrupt: Callable[[Snapshot], Snapshot]
    # (asset, check name, expectation name) for the suites; ("dbt", test name prefix, "").
    expected: tuple[str, str, str]

    @property
    def uses_dbt(self) -> bool:
        return self.expected[0] == "dbt"


# Each case is named after its corruption.
CASES = [
    Case(corrupt.__name__, corrupt, caught)
    for corrupt, caught in (
        (duplicate_rows, ("disease_3_grades", "grades_valid", "keys_unique")),
        (out_of_range_grade, ("disease_3_grades", "grades_valid", "grade_in_scale")),
        (missing_model_version, ("disease_3_grades", "grades_valid", "model_version_present")),
        (inactive_model_version, ("disease_3_grades", "grades_valid", "model_version_active")),
        (confidence_above_one, ("disease_3_grades", "grades_valid", "confidence_in_unit_interval")),
        (null_key, ("disease_3_grades", "grades_valid", "keys_not_null")),
        (missing_grade_row, ("disease_3_grades", "grades_valid", "one_row_per_crop")),
        (leaf_count_above_20, ("leaf_crops", "leaf_crops_valid", "leaf_count_0_to_20")),
        (box_outside_image, ("leaf_crops", "leaf_crops_valid", "box_inside_image")),
        (score_out_of_range, ("leaf_crops", "leaf_crops_valid", "score_in_unit_interval")),
        (crop_object_missing, ("leaf_crops", "leaf_crops_valid", "crop_object_exists")),
        (missing_cropper_version, ("leaf_crops", "leaf_crops_valid", "model_id_version_present")),
        (undecodable_image, ("drone_images", "image_quality", "decodes_as_image")),
        (missing_image_object, ("drone_images", "image_quality", "object_exists")),
        (tiny_image, ("drone_images", "image_quality", "width_in_bounds")),
        (leaves_vanished, ("leaf_crops", "leaves_vanished", "leaves_vanished")),
        (severity_jump, ("disease_0_grades", "severity_jump", "severity_jump_within_bound")),
        (wrong_area_in_field_map, ("dbt", "source_accepted_values_farm_positions_area", "")),
        (
            position_missing_from_field_map,
            ("dbt", "relationships_stg_disease_grades_position_id", ""),
        ),
    )
]
