"""`image_pipeline`: drone_images, leaf_crops and disease_<k>_grades of one day partition.

One op computes all seven assets because they share the expensive part (reading and
decoding the photos, once per run); it is subsettable, so a single grade asset can be
re-materialized alone (a new grader version re-grades the stored crops without running
the detector). A run processes the photos its config lists (the sensor's batch) or, with
no list (UI "Materialize", a backfill), every photo of the day the platform has recorded.
torch is imported inside the op: loading the code location must not pay for it. The
data-quality checks evaluate compiled suites: a run does not import Great Expectations.
"""

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    multi_asset,
)

from farm_platform.grading.chunks import DayResult, GradingPlan, grade_day
from farm_platform.images import checks
from farm_platform.images.day_checks import add_drift_checks, check_day
from farm_platform.images.keys import (
    DETECTOR_MODEL_ID,
    DISEASE_BY_GRADES,
    DRONE_IMAGES,
    GRADES_BY_DISEASE,
    LEAF_CROPS,
    MODEL_ASSETS,
)
from farm_platform.images.run_config import OP_NAME, PhotoRunConfig, RunSettings
from farm_platform.images.run_tags import grades_claimed_photos
from farm_platform.ingest.arrivals import ArrivalQueue
from farm_platform.layout import parse_date
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.inference import InferenceResource
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform.resources.model_registry import ModelRegistryResource
from farm_platform.resources.pubsub import PubSubResource
from farm_platform.resources.warehouse import WarehouseResource

# One day per backfill run: a day of a real trial is thousands of photos, so a run's
# start-up is a small share, and each run's metadata and checks describe exactly one day.
DAY_BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=1)

# What a run logs when it waits for its day's grading lock, once it holds it and begins
# grading, and once every row it wrote is committed (the tests read these events' times).
LOCK_WAITING = "waiting for the day's grading lock"
GRADING_STARTED = "grading began"
GRADING_COMMITTED = "grading committed"

IMAGE_SPECS = [
    AssetSpec(
        DRONE_IMAGES,
        group_name="images",
        kinds={"gcs"},
        description="Drone photos of the day, one row per position: size, content hash, "
        "decodability, generation and announcing message (table drone_images).",
    ),
    AssetSpec(
        LEAF_CROPS,
        deps=[DRONE_IMAGES, MODEL_ASSETS[DETECTOR_MODEL_ID]],
        group_name="inference",
        kinds={"pytorch", "duckdb"},
        description="Leaves found by the detector: boxes, scores and crop PNGs in the bucket.",
    ),
    *[
        AssetSpec(
            grades_key,
            deps=[LEAF_CROPS, MODEL_ASSETS[f"{disease}_grader"]],
            group_name="inference",
            kinds={"pytorch", "duckdb"},
            description=f"Severity grade of {disease} for every leaf crop (disease_grades table).",
        )
        for disease, grades_key in GRADES_BY_DISEASE.items()
    ],
]


def image_check_specs(days: PartitionsDefinition) -> list[AssetCheckSpec]:
    """Every check of the image assets, one result per day partition of `days`."""
    return [
        checks.image_quality_spec(DRONE_IMAGES, days),
        *checks.leaf_crops_specs(LEAF_CROPS, days),
        *[spec for key in GRADES_BY_DISEASE.values() for spec in checks.grades_specs(key, days)],
        *checks.drift_specs(LEAF_CROPS, list(GRADES_BY_DISEASE.values()), days),
    ]


def _partly_committed(
    context: AssetExecutionContext, committed: int, photos: int
) -> Iterator[AssetObservation]:
    note = (
        f"run {context.run.run_id} failed after committing the rows of {committed} of its "
        f"{photos} photo(s): those rows stand and are replaced when the photos are graded "
        "again (a sensor run's photos are requeued; a UI or backfill run is retried)"
    )
    context.log.error(note)
    yield AssetObservation(
        asset_key=DRONE_IMAGES,
        partition=context.partition_key,
        description=note,
        metadata={"committed_photos": committed, "photos": photos, "outcome": "run failed"},
    )


def build_image_pipeline(days: PartitionsDefinition) -> AssetsDefinition:
    """The `image_pipeline` multi-asset over the day partitions `days` (the definitions
    build them once when they load, from their `trial_calendar`)."""

    return multi_asset(
        name=OP_NAME,
        specs=IMAGE_SPECS,
        check_specs=image_check_specs(days),
        partitions_def=days,
        backfill_policy=DAY_BACKFILL_POLICY,
        can_subset=True,
    )(image_pipeline)


def image_pipeline(
    context: AssetExecutionContext,
    config: PhotoRunConfig,
    bucket: BucketResource,
    warehouse: WarehouseResource,
    models: ModelRegistryResource,
    pubsub: PubSubResource,
    inference: InferenceResource,
    ingest_policy: IngestPolicyResource,
) -> Iterator[MaterializeResult | Any]:
    """The op of `build_image_pipeline`'s multi-asset: one run of one day partition."""
    op_started = time.perf_counter()
    # Checked before the day's lock is taken: a bad setting fails the run with its name.
    run = RunSettings(
        inference.settings(), config.chunk(ingest_policy), config.severity_jump(ingest_policy)
    )
    date = parse_date(context.partition_key)
    # The sensor's runs of a day share its grading lock (their claimed photos are disjoint);
    # any other run of the day (UI, backfill) holds it alone (docs/production.md,
    # "Several runs of one day"). The results are handed to Dagster once the rows are
    # committed and the lock let go: storing their events needs no lock.
    mode = "shared" if grades_claimed_photos(context.run.tags) else "exclusive"
    events: list[Any] = []
    failure: Exception | None = None
    # On PostgreSQL the run's statements share a connection per thread (warehouse.session).
    with (
        warehouse.session(),
        warehouse.day_grading_lock(
            date,
            exclusive=mode == "exclusive",
            waiting=lambda: context.log.info(f"{date}: {LOCK_WAITING}, {mode}"),
        ) as locked,
    ):
        lock = f"{mode} day lock" if locked else "no day lock"
        try:
            for event in _process_day(
                context, config, run, date, bucket, warehouse, models, pubsub, lock, op_started
            ):
                events.append(event)
        except Exception as exc:  # raised below, after the lock is let go
            failure = exc
    yield from events
    if failure is not None:
        raise failure


def _process_day(
    context: AssetExecutionContext,
    config: PhotoRunConfig,
    run: RunSettings,
    date: dt.date,
    bucket: BucketResource,
    warehouse: WarehouseResource,
    models: ModelRegistryResource,
    pubsub: PubSubResource,
    lock: str,
    op_started: float,
) -> Iterator[MaterializeResult | Any]:
    queue = ArrivalQueue(warehouse)
    registry = models.registry(run.inference.models_cache)
    plan = _grading_plan(context, config, run, date, queue, registry)
    positions = plan.positions
    # Says where the grades come from, so a run's log tells a server-backed run apart.
    context.log.info(
        f"{date}: {len(positions)} photo(s)"
        + ("" if config.positions else " (every recorded photo of the day)")
        + f"; models {run.inference.where()}, {run.chunk_photos} photos at a time"
    )
    announcements = queue.announcements(date, positions)
    day = DayResult()
    # Evidence for the tests and an operator: when this run's grading began and ended.
    context.log.info(f"{date}: {GRADING_STARTED} ({lock}): {', '.join(positions)}")
    try:
        grade_day(plan, bucket, warehouse, registry, announcements, day)
    except Exception:
        if day.committed_photos:
            # The run will show FAILURE while some of its photos' rows are in the
            # warehouse: say so on the day's asset, not only in this run's log.
            yield from _partly_committed(context, day.committed_photos, len(positions))
        raise
    _dead_letter_unusable(context, day, announcements, pubsub)

    results = check_day(context, day, plan, bucket, warehouse, run.max_severity_jump)
    add_drift_checks(context, results, plan, warehouse)
    context.log.info(f"{date}: {GRADING_COMMITTED} ({lock}): {len(positions)} photo(s)")
    day.clock.seconds["op_total"] = time.perf_counter() - op_started
    per_photo = {
        "photos": len(positions),
        "unreadable": len(day.unreadable),
        # Where the models ran, on every asset the run materializes.
        "inference": run.inference.mode,
        "models_ran": run.inference.where(),
    }
    yield from _materializations(plan, day, results, per_photo, queue)


def _grading_plan(
    context: AssetExecutionContext,
    config: PhotoRunConfig,
    run: RunSettings,
    date: dt.date,
    queue: ArrivalQueue,
    registry: Any,
) -> GradingPlan:
    """What this run grades: its photos (the run config's, or every recorded photo of the
    day), the selected assets and the active models."""
    selected = context.selected_asset_keys
    return GradingPlan(
        date=date,
        positions=tuple(sorted(set(config.positions))) or tuple(queue.recorded_positions(date)),
        record_images=DRONE_IMAGES in selected,
        detect=LEAF_CROPS in selected,
        detector_card=registry.detector(),
        grader_cards=tuple(
            registry.grader_for(DISEASE_BY_GRADES[key])
            for key in sorted(selected - {DRONE_IMAGES, LEAF_CROPS})
        ),
        run_id=context.run.run_id,
        chunk_photos=run.chunk_photos,
        inference=run.inference,
    )


def _materializations(
    plan: GradingPlan,
    day: DayResult,
    results: dict[AssetKey, list[AssetCheckResult]],
    per_photo: dict[str, Any],
    queue: ArrivalQueue,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """Each selected asset's materialization, with its metadata, then its checks."""
    if plan.record_images:
        yield MaterializeResult(
            asset_key=DRONE_IMAGES,
            metadata={
                **per_photo,
                "unreadable_examples": MetadataValue.json(
                    [f"{key.position_id}: {error}" for key, error in day.unreadable.items()][:20]
                ),
                "bytes": sum(photo.size_bytes for photo in day.photos),
                "photos_recorded_for_day": len(queue.recorded_positions(plan.date)),
                "stage_seconds": MetadataValue.json(
                    {stage: round(s, 3) for stage, s in day.clock.seconds.items()}
                ),
            },
        )
        yield from results[DRONE_IMAGES]
    if plan.detect:
        yield MaterializeResult(
            asset_key=LEAF_CROPS,
            metadata={
                **per_photo,
                "leaves": day.crop_rows().height,
                "cropper_model_id": plan.detector_card.id,
                "cropper_model_version": plan.detector_card.version,
            },
        )
        yield from results[LEAF_CROPS]
    for card in plan.grader_cards:
        grades = day.grade_rows(card.disease_type)
        key = GRADES_BY_DISEASE[card.disease_type]
        yield MaterializeResult(
            asset_key=key,
            metadata={
                **per_photo,
                "rows": grades.height,
                "mean_grade": float(grades["predicted_grade"].mean()) if grades.height else 0.0,
                "disease_model_id": card.id,
                "disease_model_version": card.version,
                "cropper_model_id": plan.detector_card.id,
                "cropper_model_version": plan.detector_card.version,
            },
        )
        yield from results[key]


def _dead_letter_unusable(
    context: AssetExecutionContext,
    day: DayResult,
    announcements: dict[str, Any],
    pubsub: PubSubResource,
) -> None:
    """The announcing message of every unusable photo goes to the dead-letter topic."""
    letters = []
    for key, error in day.unreadable.items():
        context.log.error(f"{key.position_id} {key.date_str}: {error}")
        announced = announcements.get(key.position_id)
        if announced is not None and (announced.data or announced.attributes):
            letters.append((announced.data, announced.attributes, error))
    if letters:
        pubsub.dead_letter(letters)
