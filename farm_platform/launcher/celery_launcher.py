"""Dagster's `CeleryRunLauncher`, which also notices a run whose Celery worker died.

dagster-celery's launcher reports a run's health from its task's state in the result
backend: SUCCESS, FAILURE, or STARTED (running). When only the pool process that executes a
run dies, Celery itself marks the task FAILURE (WorkerLostError) and run monitoring fails
the run at its next poll. When the whole worker dies (kill -9 of the worker and its pool, its
machine lost), nobody updates the task: it stays STARTED, and run monitoring would only fail
the run at its `dagster/max_runtime`. Here a STARTED task is also looked for among the tasks
its worker (by the hostname Celery stored when the task started) says it is running
(`inspect().active()`, a broadcast the worker's main process answers while a run executes).
A task its worker has not been running for `lost_worker_grace_seconds` on end (no answer, or
a restarted worker of the same name that does not run it) is reported FAILED; run
monitoring then fails the run, and `requeue_failed_photos` hands its photos to a new run.

The grace period keeps a slow answer from failing a run that still executes (which would
then be graded twice, though its rows stay single).

Run monitoring asks the launcher about STARTED runs only; a run whose task a worker took and
lost before the run began stays STARTING until the start timeout. The topology's watchdog
(farm_platform_dev.liveness) calls `fail_runs_lost_before_start` for those (issue 40).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from dagster import Field
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

DEFAULT_LOST_WORKER_GRACE_SECONDS = 60.0
# How long one look at the workers waits for their answer.
INSPECT_TIMEOUT_SECONDS = 2.0


class FarmCeleryRunLauncher(CeleryRunLauncher):
    """`CeleryRunLauncher` whose health check also fails a run whose worker is gone."""

    def __init__(
        self, lost_worker_grace_seconds: float = DEFAULT_LOST_WORKER_GRACE_SECONDS, **kwargs: Any
    ) -> None:
        self.lost_worker_grace_seconds = float(lost_worker_grace_seconds)
        # Run id -> when its worker was first seen not running it (this process's clock).
        self._missing_since: dict[str, float] = {}
        super().__init__(**kwargs)

    @classmethod
    def config_type(cls) -> Any:
        return {
            **CeleryRunLauncher.config_type(),
            "lost_worker_grace_seconds": Field(
                float,
                is_required=False,
                default_value=DEFAULT_LOST_WORKER_GRACE_SECONDS,
                description="How long a STARTED run's Celery worker may not run its task "
                "before run monitoring fails the run (its worker died).",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Mapping[str, Any]) -> Any:
        return cls(inst_data=inst_data, **config_value)

    def check_run_worker_health(self, run: Any) -> CheckRunHealthResult:
        health = super().check_run_worker_health(run)
        if health.status != WorkerStatus.RUNNING:
            self._missing_since.pop(run.run_id, None)
            return health
        task_id = run.tags[DAGSTER_CELERY_TASK_ID_TAG]
        started = self.celery.AsyncResult(task_id).info
        hostname = started.get("hostname") if isinstance(started, dict) else None
        if not hostname:
            return health
        try:
            active = self.celery.control.inspect(
                destination=[hostname], timeout=INSPECT_TIMEOUT_SECONDS
            ).active()
        except Exception:  # the broker is down: no verdict on the worker
            return health
        running = any(task.get("id") == task_id for task in (active or {}).get(hostname, []))
        return self._after_grace(
            run.run_id,
            health,
            lost=not running,
            why=f"Celery worker {hostname} has not been running task {task_id} for "
            f"{self.lost_worker_grace_seconds:.0f} s: the worker died",
        )

    def check_taken_task(self, run: Any) -> CheckRunHealthResult:
        """A STARTING run's worker health: as `check_run_worker_health`, and a task still
        PENDING that a worker took from the queue (Redis keeps it among the unacknowledged
        messages, which only its visibility timeout, an hour by default, hands back) while no
        live worker reserves or runs it is FAILED after the grace too."""
        health = self.check_run_worker_health(run)
        if health.status != WorkerStatus.UNKNOWN:  # PENDING is UNKNOWN
            return health
        task_id = run.tags[DAGSTER_CELERY_TASK_ID_TAG]
        try:
            lost = self._taken_by_no_live_worker(task_id)
        except Exception:  # the broker is down: no verdict
            return health
        return self._after_grace(
            run.run_id,
            health,
            lost=lost,
            why=f"Celery task {task_id} was taken from the queue and no live worker has held "
            f"it for {self.lost_worker_grace_seconds:.0f} s: the worker died",
        )

    def _taken_by_no_live_worker(self, task_id: str) -> bool:
        import json

        with self.celery.connection_for_read() as connection:
            channel = connection.default_channel
            key = getattr(channel, "unacked_key", None)
            if key is None:  # not Redis: no unacknowledged set to look in
                return False
            taken = any(
                json.loads(raw)[0].get("headers", {}).get("id") == task_id
                for raw in channel.client.hvals(key)
            )
        if not taken:
            return False
        inspect = self.celery.control.inspect(timeout=INSPECT_TIMEOUT_SECONDS)
        held = [*(inspect.reserved() or {}).values(), *(inspect.active() or {}).values()]
        return not any(task.get("id") == task_id for tasks in held for task in tasks)

    def _after_grace(
        self, run_id: str, health: CheckRunHealthResult, lost: bool, why: str
    ) -> CheckRunHealthResult:
        """`health`, or FAILED with `why` once the run's task has been `lost` for the grace."""
        if not lost:
            self._missing_since.pop(run_id, None)
            return health
        now = time.monotonic()
        since = self._missing_since.setdefault(run_id, now)
        if now - since < self.lost_worker_grace_seconds:
            return health
        self._missing_since.pop(run_id, None)
        return CheckRunHealthResult(WorkerStatus.FAILED, why)


def fail_runs_lost_before_start(instance: Any) -> dict[str, str]:
    """Fail each STARTING run whose Celery task a worker took and then lost (the worker, or
    the worker and Redis, died before the run began): run monitoring asks the launcher about
    STARTED runs only, and would time a STARTING one out at its start timeout instead of the
    lost-worker grace. Returns {run id: why} of the runs failed; `requeue_failed_photos`
    hands their photos to new runs. A task still waiting in the queue gets no verdict."""
    from dagster import DagsterRunStatus, RunsFilter
    from dagster._core.events import JobFailureData, RunFailureReason

    launcher = instance.run_launcher
    if not isinstance(launcher, FarmCeleryRunLauncher):
        return {}
    failed = {}
    for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTING])):
        run = record.dagster_run
        if DAGSTER_CELERY_TASK_ID_TAG not in run.tags:  # not yet sent to the broker
            continue
        health = launcher.check_taken_task(run)
        if health.status != WorkerStatus.FAILED:
            continue
        failed[run.run_id] = f"{health.msg}, before the run began"
        instance.report_run_failed(
            run,
            failed[run.run_id],
            JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
        )
    return failed
