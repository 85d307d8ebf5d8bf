"""`farm-platform check`: the data-quality gate of CI.

1. Simulate a small farm in a temp dir and run the real assets on it in this process
   (file:// bucket, DuckDB warehouse), as `farm_platform_dev.farm` does.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from farm_platform.admin.configured import configured_registry
from farm_platform.config import DEFAULT_MAX_SEVERITY_JUMP, FARM_MAX_SEVERITY_JUMP, duckdb_path
from farm_platform.config_values import env_number
from farm_platform.layout import MISSING_OBJECT_ERROR
from farm_platform.ml.registry import DISEASE_TYPES
from farm_platform.quality import history
from farm_platform.quality.expectations import CheckResult
from farm_platform.quality.validate import GraderBatch, PhotoBatch, validate_photos
from farm_platform_dev.gate_cases import CASES, Case, Snapshot
from farm_platform_dev.simulate import FarmConfig

GATE_FARM = FarmConfig(positions=4, days=3, seed=7)


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
    return validate_photos(
        batch, env_number(FARM_MAX_SEVERITY_JUMP, DEFAULT_MAX_SEVERITY_JUMP), print
    )


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
    failed_tests = dbt(corrupted.positions) if case.uses_dbt else []
    return judge_case(case, run_suites(corrupted), failed_tests)


def judge_case(case: Case, results: list[CheckResult], failed_tests: list[str]) -> CaseOutcome:
    """Whether the case's named check caught it, from the suites' results over the corrupted
    snapshot and the dbt tests that failed on it."""
    found = caught_by(results)
    asset, check_name, expectation = case.expected
    if case.uses_dbt:
        found += [f"dbt:{name}" for name in failed_tests]
        caught = any(name.startswith(check_name) for name in failed_tests)
    else:
        caught = any(item.startswith(f"{asset}/{check_name}:{expectation} ") for item in found)
    return CaseOutcome(case.name, caught, found)


# --------------------------------------------------------------------------- the farm


def simulate_farm(config: FarmConfig, workdir: Path) -> tuple[Snapshot, str, Path]:
    """Run the real assets on a simulated farm; the snapshot, warehouse URL and field map."""
    from farm_platform_dev.farm import grade_simulated_farm

    farm = grade_simulated_farm(config, workdir)
    snapshot = snapshot_of(farm.warehouse, farm.bucket_url, pl.read_csv(farm.field_map))
    return snapshot, farm.warehouse.url, farm.field_map


def snapshot_of(warehouse: Any, bucket_url: str, positions: pl.DataFrame) -> Snapshot:
    """What the checks see of a graded farm: its warehouse's rows of the active detector."""
    from farm_platform.layout import bucket_filesystem

    registry = configured_registry()
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
    return Snapshot(
        images=images,
        crops=crops,
        grades=grades,
        positions=positions,
        cropper=cropper,
        graders=graders,
        filesystem=bucket_filesystem(bucket_url)[0],
    )


def dbt_failures(
    workdir: Path, warehouse_url: str, positions: pl.DataFrame, name: str
) -> list[str]:
    """`dbt build` on a copy of the warehouse with `positions` as the field map; the names
    of the dbt tests/models that failed or errored."""
    from farm_platform_dev.farm import dbt_workdir, invoke_dbt_build

    project = dbt_workdir(positions, workdir / f"dbt_{name}")
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
