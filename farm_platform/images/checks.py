"""Dagster side of the data-quality checks: check specs and one result per day partition.

A run grades one day. Each check is evaluated once for the run's photos of that day and
reported as one `AssetCheckResult` of the day partition (linked by Dagster to the
materialization it checked); the failing positions are named in its metadata. The same
outcomes, per (position, date), go to the `partition_quality` table, which dbt reads to
hold back exactly the failing photos: a bad photo never holds back the rest of its day.
So the specs are not `blocking` in Dagster's sense (that would fail the whole day's step).
A check that fails, or that cannot run, never fails the run: it is reported, and a check
that could not run counts as failed so that nothing unchecked reaches the reports.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetSpec,
    DagsterLogManager,
    MetadataValue,
    PartitionsDefinition,
)

from farm_platform.images.keys import IMAGE_PIPELINE, PARTITION_QUALITY
from farm_platform.quality import drift
from farm_platform.quality.drift import DETECTOR_DRIFT, GRADER_DRIFT
from farm_platform.quality.expectations import (
    ERROR,
    GRADES_VALID,
    IMAGE_QUALITY,
    LEAF_CROPS_VALID,
    LEAVES_VANISHED,
    SEVERITY_JUMP,
    CheckResult,
)
from farm_platform.resources.warehouse import WarehouseResource

_SEVERITY = {"ERROR": AssetCheckSeverity.ERROR, "WARN": AssetCheckSeverity.WARN}


def _day_check(
    name: str, asset: AssetKey, days: PartitionsDefinition, description: str
) -> AssetCheckSpec:
    """A check of `asset`, evaluated per day partition like every check of this module (a
    run grades one day; see the module's docstring)."""
    return AssetCheckSpec(name, asset=asset, partitions_def=days, description=description)


# What each data-quality check's spec says in the UI, by check name.
_QUALITY_DESCRIPTIONS = {
    IMAGE_QUALITY: "Great Expectations suite `drone_images`: the object exists, decodes as an "
    "image, width/height/bytes within bounds.",
    LEAF_CROPS_VALID: "Great Expectations suites `leaf_crops` + `leaf_counts`: 0–20 leaves, "
    "boxes inside the image, scores in [0, 1], crop objects exist, model id/version "
    "present. A failing photo's grades are held back from dbt and reports.",
    LEAVES_VANISHED: "WARNING: the position had leaves yesterday and none today.",
    GRADES_VALID: "Great Expectations suites `disease_<k>_grades` + `grade_counts`: one "
    "row per crop, grade within the model card's scale, confidence in [0, 1], keys not "
    "null and unique, model versions = the registry's active ones. A failing photo is "
    "held back from dbt and reports (dbt model held_back_partitions).",
    SEVERITY_JUMP: "WARNING: the position's mean grade moved more than the bound "
    "(FARM_MAX_SEVERITY_JUMP) since yesterday.",
}


def _quality_checks(
    asset: AssetKey, days: PartitionsDefinition, *names: str
) -> list[AssetCheckSpec]:
    return [_day_check(name, asset, days, _QUALITY_DESCRIPTIONS[name]) for name in names]


def image_quality_spec(asset: AssetKey, days: PartitionsDefinition) -> AssetCheckSpec:
    return _day_check(IMAGE_QUALITY, asset, days, _QUALITY_DESCRIPTIONS[IMAGE_QUALITY])


def leaf_crops_specs(asset: AssetKey, days: PartitionsDefinition) -> list[AssetCheckSpec]:
    return _quality_checks(asset, days, LEAF_CROPS_VALID, LEAVES_VANISHED)


def grades_specs(asset: AssetKey, days: PartitionsDefinition) -> list[AssetCheckSpec]:
    return _quality_checks(asset, days, GRADES_VALID, SEVERITY_JUMP)


def day_result(result: CheckResult) -> AssetCheckResult:
    """The day's evaluation of one check; failing positions and what they broke as metadata."""
    failed = result.failed_partitions()
    return AssetCheckResult(
        asset_key=AssetKey(result.asset),
        check_name=result.check_name,
        passed=not failed,
        severity=_SEVERITY[result.severity],
        metadata={
            "photos_checked": len(result.outcomes),
            "photos_failed": len(failed),
            "failed_positions": MetadataValue.json(sorted({p for p, _ in failed})),
            "failed_expectations": MetadataValue.json(sorted(result.failed_expectations())),
            "examples": MetadataValue.json(
                {
                    f"{position} {date}": {
                        "failed": list(result.outcomes[(position, date)].failed),
                        "observed": result.outcomes[(position, date)].observed,
                    }
                    for position, date in failed[:5]
                }
            ),
        },
    )


def partition_quality_spec(days: PartitionsDefinition) -> AssetSpec:
    """The `partition_quality` table as an asset of this location: written by the checks
    of every image run (each run logs a materialization of its day), read by dbt."""
    return AssetSpec(
        PARTITION_QUALITY,
        deps=list(IMAGE_PIPELINE),
        group_name="images",
        kinds={"duckdb"},
        partitions_def=days,
        description="Outcome of every data-quality check per photo (position, date) and "
        "check: passed or failed, with what failed. Written by image_pipeline's checks; dbt's "
        "held_back_partitions keeps photos that failed an ERROR check out of the reports.",
    )


def record(
    log: DagsterLogManager,
    warehouse: WarehouseResource,
    results: Sequence[CheckResult],
    run_id: str,
) -> dict[AssetKey, list[AssetCheckResult]]:
    """Store the outcomes in `partition_quality` (one transaction for the run's checks of
    every asset), log failures; the day's check results by asset."""
    import polars as pl

    checked_at = dt.datetime.now(dt.UTC)
    for result in results:
        failed = result.failed_partitions()
        if failed:
            message = (
                f"{result.asset}/{result.check_name} ({result.severity}) failed on "
                f"{len(failed)} photo(s), e.g. "
                + ", ".join(
                    f"{p} {d}: {', '.join(result.outcomes[(p, d)].failed)}" for p, d in failed[:5]
                )
            )
            (log.error if result.severity == ERROR else log.warning)(message)
    frames = [result.quality_rows(checked_at, run_id) for result in results if result.outcomes]
    if frames:
        warehouse.replace_rows("partition_quality", pl.concat(frames))
    by_asset: dict[AssetKey, list[AssetCheckResult]] = {}
    for result in results:
        by_asset.setdefault(AssetKey(result.asset), []).append(day_result(result))
    return by_asset


def drift_specs(
    detector_asset: AssetKey, grade_assets: Sequence[AssetKey], days: PartitionsDefinition
) -> list[AssetCheckSpec]:
    """WARN checks: the day's model outputs against the card's evaluation-time reference."""
    rule = (
        f"population-stability index over the reference's decile bins above "
        f"{drift.PSI_THRESHOLD} + {drift.SAMPLING_ALLOWANCE:g} x (bins - 1) x (1/n + 1/n_ref) "
        f"(features with fewer than {drift.MIN_VALUES} values that day are not compared)"
    )
    return [
        _day_check(
            DETECTOR_DRIFT,
            detector_asset,
            days,
            "WARNING: the day's photos look unlike the detector's evaluation data: "
            "detection score, boxes per photo or box size relative to the photo drifted from "
            f"the reference on the model card; {rule}. Never holds photos back; the report "
            "names the day.",
        ),
        *[
            _day_check(
                GRADER_DRIFT,
                asset,
                days,
                "WARNING: the grader's confidence on the day's crops drifted from "
                f"the reference on its model card; {rule}.",
            )
            for asset in grade_assets
        ],
    ]


def _not_compared(asset: AssetKey, name: str, model: str) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=asset,
        check_name=name,
        passed=True,
        severity=AssetCheckSeverity.WARN,
        description=f"not compared: {model}'s card records no {drift.REFERENCE_KEY}",
        metadata={"compared": False},
    )


def _drift_result(
    asset: AssetKey, name: str, model: str, results: list, drifted: list[str]
) -> AssetCheckResult:
    """A drift check's outcome: a warning naming the drifted features, with every
    feature's statistic, threshold and means as metadata."""
    return AssetCheckResult(
        asset_key=asset,
        check_name=name,
        passed=not drifted,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"{model}: {', '.join(drifted)} unlike the evaluation data"
            if drifted
            else f"{model}: outputs like the evaluation data"
        ),
        metadata={
            "compared": True,
            "statistic": "psi",
            "drifted_features": MetadataValue.json(drifted),
            **{
                f"{r.feature}_psi": r.statistic if r.statistic is not None else -1.0
                for r in results
            },
            "features": MetadataValue.json(
                {
                    r.feature: {
                        "psi": r.statistic,
                        "threshold": r.threshold,
                        "n": r.n,
                        "day_mean": r.day_mean,
                        "reference": dict(r.reference),
                    }
                    for r in results
                }
            ),
        },
    )


def drift_checks(
    log: DagsterLogManager,
    warehouse: WarehouseResource,
    date: dt.date,
    detector_card: object,
    grader_cards: dict[AssetKey, object],
    detect: bool,
    run_id: str,
) -> dict[AssetKey, list[AssetCheckResult]]:
    """The day's drift checks (over every stored row of the day, so the day's last run
    judges the whole day), their outcomes stored in `model_drift`."""
    import polars as pl

    from farm_platform.images.keys import LEAF_CROPS

    checked_at = dt.datetime.now(dt.UTC)
    cropper = (detector_card.id, detector_card.version)  # type: ignore[attr-defined]
    jobs = []
    if detect:
        jobs.append(
            (
                LEAF_CROPS,
                DETECTOR_DRIFT,
                detector_card,
                lambda: drift.day_detector_features(warehouse, date, cropper),
            )
        )
    for asset, card in grader_cards.items():
        jobs.append(
            (
                asset,
                GRADER_DRIFT,
                card,
                lambda card=card: drift.day_grader_features(
                    warehouse, date, card.disease_type, cropper, (card.id, card.version)
                ),
            )
        )
    out: dict[AssetKey, list[AssetCheckResult]] = {}
    frames = []
    for asset, name, card, features in jobs:
        references = drift.card_reference(card)
        model = f"{card.id} {card.version}"  # type: ignore[attr-defined]
        if references is None:
            out[asset] = [_not_compared(asset, name, model)]
            continue
        results = drift.compare(references, features())
        drifted = [r.feature for r in results if r.drifted]
        frames.append(
            drift.drift_rows(date, (card.id, card.version), results, checked_at, run_id)  # type: ignore[attr-defined]
        )
        if drifted:
            log.warning(f"{date}: {model}'s outputs drifted from its evaluation data: {drifted}")
        out[asset] = [_drift_result(asset, name, model, results, drifted)]
    if frames:
        warehouse.replace_rows("model_drift", pl.concat(frames))
    return out
