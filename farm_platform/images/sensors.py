"""The image location's sensors.

- `drone_image_sensor`: Pub/Sub messages → runs of day partitions with their photo lists.
  The protocol (held messages, the arrival queue, de-duplication) lives in
  `farm_platform.ingest.tick` and `farm_platform.ingest.arrivals`; here claims become run requests.
- `requeue_failed_photos`: the photos of a failed or canceled sensor run go back to the
  arrival queue (de-duplication never hides a photo whose rows are missing), each waiting
  longer after each failure (`farm_platform.ingest.retries`); after `FARM_MAX_PHOTO_ATTEMPTS`
  runs, or its retry budget, a photo is dead-lettered with the failed step's own error.
  Retried until the requeue commits (a warehouse outage only delays it).
- `model_registry_sensor`: a model asset is materialized when its active version changes,
  so Dagster marks every partition graded with the old version stale. It watches the
  registry's generation, so a registry in a bucket costs one metadata request a tick.
"""

import json
from collections.abc import Mapping
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    RunStatusChangeRecordsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from farm_platform.images.keys import IMAGE_PIPELINE, MODEL_ASSETS
from farm_platform.images.registered_models import MODEL_VERSIONS
from farm_platform.images.run_config import photo_run_config
from farm_platform.images.run_tags import DRONE_IMAGE_SENSOR, PHOTOS_TAG, image_run_tags
from farm_platform.images.sensor_evaluation import with_kept_resources
from farm_platform.ingest.arrivals import PHOTO_RUN_KEY_PREFIX, ArrivalQueue, Claim
from farm_platform.ingest.retries import RetryPolicy, requeue_run
from farm_platform.ingest.tick import IngestCursor, IngestSettings, ingest_tick
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.field_map import FieldMapResource
from farm_platform.resources.ingest_policy import IngestPolicyResource
from farm_platform.resources.model_registry import ModelRegistryResource
from farm_platform.resources.pubsub import PubSubResource
from farm_platform.resources.trial_calendar import TrialCalendarResource
from farm_platform.resources.warehouse import WarehouseResource

# What the tick that requested the run saw (pulled, new, duplicates, dead-lettered, ...).
TICK_TAG = "farm/tick"
MAX_RUNTIME_TAG = "dagster/max_runtime"
# requeue_failed_photos re-batches a failed sensor run's photos: no Dagster run retry too.
MAX_RETRIES_TAG = "dagster/max_retries"


def claim_run_request(
    claim: Claim,
    policy: IngestPolicyResource,
    tick_summary: str = "",
    launcher_tags: Mapping[str, str] | None = None,
) -> RunRequest:
    """One run of the claim's day partition over exactly its photos, bounded by the policy's
    run timeout; `launcher_tags` (default: from its `run_k8s_config`) give its pod on
    Kubernetes a GPU and cores."""
    if launcher_tags is None:
        launcher_tags = image_run_tags(policy.run_k8s_config)
    return RunRequest(
        run_key=claim.run_key,
        partition_key=claim.date.isoformat(),
        asset_selection=list(IMAGE_PIPELINE),
        tags={
            PHOTOS_TAG: str(len(claim.positions)),
            MAX_RUNTIME_TAG: str(policy.run_timeout(len(claim.positions))),
            MAX_RETRIES_TAG: "0",
            **({TICK_TAG: tick_summary} if tick_summary else {}),
            **launcher_tags,
        },
        run_config=photo_run_config(claim.positions, policy),
    )


def build_sensors(interval_seconds: int) -> list[SensorDefinition]:
    """The image location's sensors: the ingest and requeue sensors tick every
    `interval_seconds` (FARM_SENSOR_INTERVAL_SECONDS, read once when the definitions load),
    the model-registry sensor every three times that."""
    return [
        sensor(
            name=DRONE_IMAGE_SENSOR,
            asset_selection=list(IMAGE_PIPELINE),
            minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING,
            description="Pulls drone_image messages; new photos become runs of their day "
            "partition.",
        )(with_kept_resources(drone_image_tick)),
        sensor(
            name="requeue_failed_photos",
            default_status=DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=interval_seconds,
            description="Puts the photos of a failed or canceled image run back in the arrival "
            "queue, to wait longer after each failure (bounded attempts and time), then "
            "dead-letters them with the failed step's error. Its cursor moves only past "
            "requeues that committed.",
        )(with_kept_resources(requeue_failed_photos_tick)),
        sensor(
            name="model_registry_sensor",
            asset_selection=[*MODEL_ASSETS.values(), MODEL_VERSIONS],
            minimum_interval_seconds=3 * interval_seconds,
            default_status=DefaultSensorStatus.RUNNING,
            description="Records a model asset's new data version when registry.json "
            "activates one.",
        )(with_kept_resources(model_registry_tick)),
    ]


def drone_image_tick(
    context: SensorEvaluationContext,
    pubsub: PubSubResource,
    bucket: BucketResource,
    field_map: FieldMapResource,
    warehouse: WarehouseResource,
    ingest_policy: IngestPolicyResource,
    trial_calendar: TrialCalendarResource,
) -> SensorResult:
    # Read before claiming: a malformed FARM_RUN_K8S_CONFIG then fails the tick with its
    # name while every photo is still in the queue, instead of after its claim.
    launcher_tags = image_run_tags(ingest_policy.run_k8s_config)
    with warehouse.session():  # on PostgreSQL, the tick's statements share a connection
        outcome = ingest_tick(
            IngestCursor.from_json(context.cursor),
            pubsub,
            bucket,
            ArrivalQueue(warehouse),
            field_map.positions,
            IngestSettings.from_policy(ingest_policy, trial_calendar.calendar(), field_map.path),
        )
    stats = outcome.stats
    summary = stats.summary()
    # An idle tick (the usual case, every 10 s) writes nothing to the log; the tick list
    # shows every tick's summary as its skip reason, or on the runs it requested.
    if stats.pubsub_error:
        context.log.error(summary)
    elif stats.pulled or stats.acknowledged or outcome.claims:
        context.log.info(summary)
    return SensorResult(
        run_requests=[
            claim_run_request(claim, ingest_policy, stats.run_tag(), launcher_tags)
            for claim in outcome.claims
        ],
        cursor=outcome.cursor.to_json(),
        skip_reason=None if outcome.claims else summary,
    )


RUN_KEY_TAG = "dagster/run_key"
# Failed-run events handled per event type and tick: a burst of failures is worked off at
# this pace (Dagster's own run_failure_sensor handles 5 runs a tick).
REQUEUE_EVENTS_PER_TICK = 200
FAILED_RUN_EVENTS = (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED)


def requeue_failed_photos_tick(
    context: SensorEvaluationContext,
    warehouse: WarehouseResource,
    pubsub: PubSubResource,
    ingest_policy: IngestPolicyResource,
    instance: DagsterInstance | None = None,
) -> SensorResult:
    """Not a `run_failure_sensor`: Dagster moves that one's cursor past a run even when the
    evaluation raised, so a warehouse outage at that moment stranded the run's photos for
    good. Here the cursor (the last handled event's storage id, per event type) is stored
    only with a tick that succeeded; a tick that raises is evaluated again from the same
    place, and requeueing a run twice is harmless (`retries.requeue_run`). `instance`:
    the code server's kept one (`sensor_evaluation`), else the context's."""
    instance = instance or context.instance
    after = json.loads(context.cursor) if context.cursor else {}
    policy = RetryPolicy.from_policy(ingest_policy)
    queue = ArrivalQueue(warehouse)
    handled = {"runs": 0, "pending": 0, "dead_lettered": 0}
    for event_type in FAILED_RUN_EVENTS:
        records = instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(
                event_type=event_type, after_storage_id=after.get(event_type.value)
            ),
            limit=REQUEUE_EVENTS_PER_TICK,
            ascending=True,
        ).records
        runs = (
            {
                run.run_id: run
                for run in instance.get_runs(
                    RunsFilter(run_ids=[record.run_id for record in records])
                )
            }
            if records
            else {}
        )
        for record in records:
            run = runs.get(record.run_id)
            run_key = run.tags.get(RUN_KEY_TAG, "") if run else ""
            if run_key.startswith(PHOTO_RUN_KEY_PREFIX):
                reason = (
                    step_failure_cause(instance, record.run_id)
                    or ((record.event_log_entry.message or "run failed").splitlines()[0])
                )
                outcome = requeue_run(
                    queue, run_key, policy, pubsub, f"run {record.run_id}: {reason}"
                )
                handled["runs"] += 1
                handled["pending"] += outcome.pending
                handled["dead_lettered"] += outcome.dead_lettered
                if outcome.pending or outcome.dead_lettered:
                    context.log.info(
                        f"run {record.run_id} ({event_type.value}): {outcome.pending} photo(s)"
                        f" requeued (the next try waits), {outcome.dead_lettered}"
                        f" dead-lettered: {reason}"
                    )
            after[event_type.value] = record.storage_id
    summary = (
        f"{handled['runs']} failed image run(s): {handled['pending']} photo(s) requeued, "
        f"{handled['dead_lettered']} dead-lettered"
    )
    return SensorResult(cursor=json.dumps(after, sort_keys=True), skip_reason=summary)


def step_failure_cause(instance: Any, run_id: str) -> str | None:
    """The first failed step's own error, `Class: its first line` (what failed, e.g.
    OipUnavailable naming the model servers), not the run's "Steps failed: [...]"; None
    when no step failed (a canceled run, a worker that died)."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.step_failure_data if entry.dagster_event else None
        error = data.error if data else None
        # Dagster wraps the op's exception ("Error occurred while executing op ...").
        while (
            error is not None and error.cause is not None and error.cls_name.startswith("Dagster")
        ):
            error = error.cause
        if error is None:
            continue
        lines = error.message.strip().splitlines()
        # Python writes "module.Class: text"; the dead letter says "Class: text".
        head, colon, text = (lines[0] if lines else "").partition(": ")
        if not colon or head.rsplit(".", 1)[-1] != error.cls_name:
            text = head + colon + text
        return f"{error.cls_name}: {text}"
    return None


DATA_VERSION_TAG = "dagster/data_version"


def model_registry_tick(
    context: SensorEvaluationContext,
    models: ModelRegistryResource,
    ingest_policy: IngestPolicyResource,
    instance: DagsterInstance | None = None,
) -> RunRequest | SkipReason:
    """Watches registry.json's generation (a bucket object's, or a local file's stand-in):
    while it is the one whose active versions every model asset already records, a tick
    reads nothing more. Any other generation is read (pinned to that generation) and each
    model asset whose recorded version differs is materialized. `instance`: as for
    `requeue_failed_photos_tick`."""
    instance = instance or context.instance
    registry = models.registry()
    watched = json.loads(context.cursor) if context.cursor else {}
    generation = registry.generation()
    if generation is not None and watched.get("settled") == generation:
        return SkipReason(f"registry generation {generation} unchanged and recorded")
    active, generation = registry.active_versions_at()
    changed, transitions = [], []
    for model_id, asset_key in MODEL_ASSETS.items():
        latest = instance.fetch_materializations(asset_key, limit=1).records
        record = latest[0] if latest else None
        materialization = record.asset_materialization if record else None
        recorded = materialization.tags.get(DATA_VERSION_TAG) if materialization else None
        if recorded != active.get(model_id):
            changed.append(asset_key)
            # The record's storage id makes v1 -> v2 -> v1 -> v2 four distinct run keys.
            since = record.storage_id if record else 0
            transitions.append(f"{model_id}:{since}:{recorded}->{active.get(model_id)}")
    # Settled only once every asset records this generation's versions: until the run that
    # records them succeeds, each tick compares again (and a failed run is asked again).
    context.update_cursor(json.dumps({"settled": None if changed else generation}))
    if not changed:
        return SkipReason(f"every model asset records its active version (generation {generation})")
    # The warehouse's model_versions table follows the registry too.
    # A model run only records versions (seconds): bounded like a run of no photos, so that a
    # worker that died with the daemon does not hold the run queue (run monitoring fails it).
    return RunRequest(
        run_key=";".join(transitions),
        asset_selection=[*changed, MODEL_VERSIONS],
        tags={MAX_RUNTIME_TAG: str(ingest_policy.run_timeout(0))},
    )
