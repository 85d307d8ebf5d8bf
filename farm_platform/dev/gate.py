"""`farm-platform check`: the data-quality gate of CI.

1. Simulate a small farm in a temp dir and run the real assets on it in this process
   (file:// bucket, DuckDB warehouse), as `farm_platform.dev.farm` does.
2. Run every suite on the produced tables, all partitions, and `dbt build` (seeds, models,
   dbt tests) on a copy of the dbt project with the farm's field map: both must pass.
3. For each named corruption case, corrupt a copy of the data (tables read back from the
   warehouse, or the field map), re-run the suites (and `dbt build` for field-map cases) and
   require that the case is caught by the check it names.

Exit status 0 only when the clean farm passes and every corruption is caught.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from farm_platform.config import duckdb_path, max_severity_jump
from farm_platform.dev.simulate import FarmConfig
from farm_platform.layout import MISSING_OBJECT_ERROR
from farm_platform.ml.registry import DISEASE_TYPES
from farm_platform.quality import history
from farm_platform.quality.expectations import CheckResult
from farm_platform.quality.validate import GraderBatch, PhotoBatch, validate_photos

GATE_FARM = FarmConfig(positions=4, days=3, seed=7)


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


def run_suites(snapshot: Snapshot) -> list[CheckResult]:
    """Every check over every photo of the snapshot: the assets' own `validate_photos`."""
    readable = snapshot.images.filter(pl.col("error").is_null()).select("position_id", "date")

    def leaf_counts() -> pl.DataFrame:
        per_photo = snapshot.crops.group_by("position_id", "date").agg(leaves=pl.len())
        return readable.join(per_photo, on=["position_id", "date"], how="left").with_columns(
            pl.col("leaves").fill_null(0)
        )

    def grader_batch(disease: str, grader: tuple[str, str, tuple[int, ...]]) -> GraderBatch:
        grades = snapshot.grades.filter(pl.col("disease_type") == disease)
        means = grades.group_by("position_id", "date").agg(
            mean_grade=pl.col("predicted_grade").cast(pl.Float64).mean()
        )
        return GraderBatch(
            disease, grader[:2], grader[2], rows=lambda: grades, mean_grades=lambda: means
        )

    batch = PhotoBatch(
        photos=list(zip(readable["position_id"], readable["date"], strict=True)),
        images=snapshot.images,
        cropper=snapshot.cropper,
        crops=lambda: snapshot.crops,
        crop_exists=history.crop_exists_checker(snapshot.filesystem),
        leaf_counts=leaf_counts,
        graders=[grader_batch(d, g) for d, g in sorted(snapshot.graders.items())],
    )
    return validate_photos(batch, max_severity_jump(), print)


# --------------------------------------------------------------------------- corruptions


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
    from farm_platform.images.photos import decode_photo
    from farm_platform.ml import inference

    _, error = decode_photo(b"\x89PNG not really", inference)
    target = pl.int_range(pl.len()) == 0
    images = _set(s.images, target, "error", error)
    return replace(s, images=images)


def missing_image_object(s: Snapshot) -> Snapshot:
    target = pl.int_range(pl.len()) == 0
    images = _set(_set(s.images, target, "exists", False), target, "error", "object does not exist")
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


CASES = [
    Case("duplicate_rows", duplicate_rows, ("disease_3_grades", "grades_valid", "keys_unique")),
    Case(
        "out_of_range_grade",
        out_of_range_grade,
        ("disease_3_grades", "grades_valid", "grade_in_scale"),
    ),
    Case(
        "missing_model_version",
        missing_model_version,
        ("disease_3_grades", "grades_valid", "model_version_present"),
    ),
    Case(
        "inactive_model_version",
        inactive_model_version,
        ("disease_3_grades", "grades_valid", "model_version_active"),
    ),
    Case(
        "confidence_above_one",
        confidence_above_one,
        ("disease_3_grades", "grades_valid", "confidence_in_unit_interval"),
    ),
    Case("null_key", null_key, ("disease_3_grades", "grades_valid", "keys_not_null")),
    Case(
        "missing_grade_row",
        missing_grade_row,
        ("disease_3_grades", "grades_valid", "one_row_per_crop"),
    ),
    Case(
        "leaf_count_above_20",
        leaf_count_above_20,
        ("leaf_crops", "leaf_crops_valid", "leaf_count_0_to_20"),
    ),
    Case(
        "box_outside_image",
        box_outside_image,
        ("leaf_crops", "leaf_crops_valid", "box_inside_image"),
    ),
    Case(
        "score_out_of_range",
        score_out_of_range,
        ("leaf_crops", "leaf_crops_valid", "score_in_unit_interval"),
    ),
    Case(
        "crop_object_missing",
        crop_object_missing,
        ("leaf_crops", "leaf_crops_valid", "crop_object_exists"),
    ),
    Case(
        "missing_cropper_version",
        missing_cropper_version,
        ("leaf_crops", "leaf_crops_valid", "model_id_version_present"),
    ),
    Case(
        "undecodable_image",
        undecodable_image,
        ("drone_images", "image_quality", "decodes_as_image"),
    ),
    Case(
        "missing_image_object",
        missing_image_object,
        ("drone_images", "image_quality", "object_exists"),
    ),
    Case("tiny_image", tiny_image, ("drone_images", "image_quality", "width_in_bounds")),
    Case("leaves_vanished", leaves_vanished, ("leaf_crops", "leaves_vanished", "leaves_vanished")),
    Case(
        "severity_jump",
        severity_jump,
        ("disease_0_grades", "severity_jump", "severity_jump_within_bound"),
    ),
    Case(
        "wrong_area_in_field_map",
        wrong_area_in_field_map,
        ("dbt", "accepted_values_positions_area", ""),
    ),
    Case(
        "position_missing_from_field_map",
        position_missing_from_field_map,
        ("dbt", "relationships_stg_disease_grades_position_id", ""),
    ),
]


@dataclass(frozen=True)
class CaseOutcome:
    case: str
    caught: bool
    caught_by: list[str]  # "asset/check:expectation (severity)" or "dbt:test"


def caught_by(results: list[CheckResult]) -> list[str]:
    return sorted(
        f"{r.asset}/{r.check_name}:{name} ({r.severity})"
        for r in results
        for name in r.failed_expectations()
    )


def evaluate_case(
    case: Case, clean: Snapshot, dbt: Callable[[pl.DataFrame], list[str]]
) -> CaseOutcome:
    corrupted = case.corrupt(clean)
    found = caught_by(run_suites(corrupted))
    asset, check_name, expectation = case.expected
    if case.uses_dbt:
        failed_tests = dbt(corrupted.positions)
        found += [f"dbt:{name}" for name in failed_tests]
        caught = any(name.startswith(check_name) for name in failed_tests)
    else:
        caught = any(item.startswith(f"{asset}/{check_name}:{expectation} ") for item in found)
    return CaseOutcome(case.name, caught, found)


# --------------------------------------------------------------------------- the farm


def simulate_farm(config: FarmConfig, workdir: Path) -> tuple[Snapshot, str, Path]:
    """Run the real assets on a simulated farm; the snapshot, warehouse URL and field map."""
    from farm_platform.dev.farm import grade_simulated_farm
    from farm_platform.layout import bucket_filesystem
    from farm_platform.ml.registry import ModelRegistry

    farm = grade_simulated_farm(config, workdir)
    warehouse, field_map = farm.warehouse, farm.field_map
    registry = ModelRegistry()
    detector = registry.detector()
    cropper = (detector.id, detector.version)
    graders = {}
    for disease in DISEASE_TYPES:
        card = registry.grader_for(disease)
        graders[disease] = (card.id, card.version, tuple(card.grades or ()))
    images = warehouse.query("SELECT * FROM drone_images").with_columns(
        exists=pl.col("error").fill_null("") != MISSING_OBJECT_ERROR
    )
    crops = warehouse.query(
        "SELECT * FROM leaf_crops WHERE cropper_model_id = %s AND cropper_model_version = %s",
        list(cropper),
    )
    grades = warehouse.query(
        "SELECT * FROM disease_grades WHERE cropper_model_id = %s AND cropper_model_version = %s",
        list(cropper),
    )
    snapshot = Snapshot(
        images=images,
        crops=crops,
        grades=grades,
        positions=pl.read_csv(field_map),
        cropper=cropper,
        graders=graders,
        filesystem=bucket_filesystem(farm.bucket_url)[0],
    )
    return snapshot, warehouse.url, field_map


def dbt_failures(
    workdir: Path, warehouse_url: str, positions: pl.DataFrame, name: str
) -> list[str]:
    """`dbt build` on a copy of the project (and of the warehouse) with `positions` as the
    field map; the names of the dbt tests/models that failed or errored."""
    from farm_platform.analytics.dbt_env import dbt_project_copy
    from farm_platform.dev.farm import invoke_dbt_build

    project = dbt_project_copy(positions, workdir / f"dbt_{name}")
    copy = workdir / f"warehouse_{name}.duckdb"
    shutil.copyfile(duckdb_path(warehouse_url), copy)
    return invoke_dbt_build(project, f"duckdb:///{copy}").failed()


def run_gate(workdir: Path | None = None, config: FarmConfig = GATE_FARM, out: Any = print) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="farm-check-") as temporary:
        workdir = workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        out(f"simulating {config.positions} positions × {config.days} days in {workdir} …")
        clean, warehouse_url, _ = simulate_farm(config, workdir)
        out(
            f"  {clean.images.height} images, {clean.crops.height} leaves, "
            f"{clean.grades.height} grades ({time.monotonic() - started:.0f} s)"
        )
        clean_found = caught_by(run_suites(clean))
        clean_dbt = dbt_failures(workdir, warehouse_url, clean.positions, "clean")
        clean_ok = not clean_found and not clean_dbt
        out("clean farm: " + ("PASS (every suite and dbt test passed)" if clean_ok else "FAIL"))
        for item in clean_found + [f"dbt:{name}" for name in clean_dbt]:
            out(f"  unexpected failure on clean data: {item}")

        outcomes = []
        for index, case in enumerate(CASES):
            outcome = evaluate_case(
                case,
                clean,
                lambda positions, i=index: dbt_failures(workdir, warehouse_url, positions, f"c{i}"),
            )
            outcomes.append(outcome)
        width = max(len(case.name) for case in CASES)
        out(f"\n{'corruption case':<{width}}  result  expected check → caught by")
        for case, outcome in zip(CASES, outcomes, strict=True):
            asset, check_name, expectation = case.expected
            expected = (
                f"dbt:{check_name}" if case.uses_dbt else f"{asset}/{check_name}:{expectation}"
            )
            out(
                f"{case.name:<{width}}  {'CAUGHT' if outcome.caught else 'MISSED'}  {expected}"
                f" → {', '.join(outcome.caught_by) or 'nothing'}"
            )
        missed = [o.case for o in outcomes if not o.caught]
        out(
            f"\n{len(outcomes) - len(missed)}/{len(outcomes)} corruption cases caught; clean data "
            f"{'passed' if clean_ok else 'FAILED'} ({time.monotonic() - started:.0f} s)"
        )
        if missed:
            out(f"MISSED: {', '.join(missed)}")
        return 0 if clean_ok and not missed else 1
