"""`farm-platform backfill`: a real Dagster asset backfill over a date range (and positions).

The backfill is the same object the UI's "Materialize selected → backfill" and the GraphQL
`launchPartitionBackfill` mutation create (`PartitionBackfill.from_asset_partitions` added
to the instance, which is exactly what dagster-graphql does after loading a workspace); the
daemon's backfill daemon then launches it, one run per day partition (the assets'
`BackfillPolicy`). Each run re-grades every photo of its day the platform has recorded, or,
with `--positions`, those positions' photos only (the run config's photo list). Building it
here, against the code location's asset graph loaded in-process, avoids starting gRPC code
servers for both code locations just to resolve the same graph.

Only days with an ingested photo (`drone_images` materialized) are targeted.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from farm_platform import config
from farm_platform.images.keys import DRONE_IMAGES

if TYPE_CHECKING:
    from dagster import AssetKey, DagsterInstance

BACKFILL_SOURCE_TAG = "farm_platform/admin/backfill"


class BackfillError(RuntimeError):
    """A backfill that cannot be launched, or that ended without success."""


@dataclass(frozen=True)
class LaunchedBackfill:
    backfill_id: str
    partitions: list[str]
    skipped_days_without_photo: int


def _dates(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise BackfillError(f"--to {end} is before --from {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def target_partitions(
    instance: DagsterInstance, start: dt.date, end: dt.date
) -> tuple[list[str], int]:
    """Day partition keys in the range that have an ingested photo, and how many have none."""
    ingested = instance.get_materialized_partitions(DRONE_IMAGES)
    days = [date.isoformat() for date in _dates(start, end)]
    keys = [day for day in days if day in ingested]
    return keys, len(days) - len(keys)


def _check_positions(positions: Sequence[str]) -> None:
    from farm_platform.config import field_map_path
    from farm_platform.resources.field_map import read_field_map

    unknown = sorted(set(positions) - set(read_field_map(field_map_path())))
    if unknown:
        raise BackfillError(
            f"unknown position(s) {', '.join(unknown)}: not in the field map {field_map_path()}"
        )


def launch_backfill(
    instance: DagsterInstance,
    asset_keys: Sequence[AssetKey],
    start: dt.date,
    end: dt.date,
    positions: Sequence[str] | None = None,
    asset_graph: Any = None,
    title: str | None = None,
) -> LaunchedBackfill:
    """Add an asset backfill of `asset_keys` over the range to the instance (the daemon runs it)."""
    from dagster._core.definitions.utils import check_valid_title
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from farm_platform.admin.configured import configured_day_partitions
    from farm_platform.images.graph import image_asset_graph
    from farm_platform.images.run_config import photo_run_config
    from farm_platform.images.run_tags import image_run_tags

    # Every run of this backfill is an image run (the image location's graph): the same
    # Kubernetes pod settings as the sensor's runs. Read first, so a bad value adds nothing.
    launcher_tags = image_run_tags(config.value(config.FARM_RUN_K8S_CONFIG))
    graph = asset_graph or image_asset_graph(configured_day_partitions())
    missing = [key.to_user_string() for key in asset_keys if not graph.has(key)]
    if missing:
        raise BackfillError(f"unknown asset(s) {', '.join(missing)}")
    if positions:
        _check_positions(positions)
    partitions, skipped = target_partitions(instance, start, end)
    if not partitions:
        raise BackfillError(
            f"no ingested photo between {start} and {end}"
            + (f" at {', '.join(positions)}" if positions else "")
            + ": nothing to backfill"
        )
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id,
        asset_graph=graph,
        partition_names=partitions,
        asset_selection=list(asset_keys),
        backfill_timestamp=time.time(),
        tags={BACKFILL_SOURCE_TAG: "cli", **launcher_tags},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=check_valid_title(title)
        or f"{'_'.join(k.to_user_string() for k in asset_keys)}_{start:%Y%m%d}_{end:%Y%m%d}",
        description=f"farm-platform backfill: {len(partitions)} day(s)"
        + (f", positions {', '.join(positions)}" if positions else ""),
        run_config=photo_run_config(positions) if positions else None,
    )
    instance.add_backfill(backfill)
    return LaunchedBackfill(backfill_id, partitions, skipped)


@dataclass(frozen=True)
class BackfillProgress:
    status: str
    runs: dict[str, int]
    done: bool
    succeeded: bool

    def describe(self) -> str:
        runs = ", ".join(f"{n} {status.lower()}" for status, n in sorted(self.runs.items()))
        return f"backfill {self.status}; runs: {runs or 'none yet'}"


def backfill_progress(instance: DagsterInstance, backfill_id: str) -> BackfillProgress:
    from dagster import RunsFilter
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus

    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        raise BackfillError(f"no backfill {backfill_id} on this instance")
    runs = Counter(
        record.dagster_run.status.value
        for record in instance.get_run_records(RunsFilter.for_backfill(backfill_id))
    )
    done = backfill.status in BULK_ACTION_TERMINAL_STATUSES
    succeeded = backfill.status in (BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED)
    return BackfillProgress(backfill.status.value, dict(runs), done, succeeded)


def wait_for_backfill(
    instance: DagsterInstance,
    backfill_id: str,
    timeout_seconds: float = 3600,
    poll_seconds: float = 2.0,
    progress: Callable[[BackfillProgress], None] | None = None,
) -> BackfillProgress:
    """Poll the backfill's status until it is terminal; raise unless it succeeded."""
    deadline = time.monotonic() + timeout_seconds
    last = None
    while True:
        state = backfill_progress(instance, backfill_id)
        if progress and state != last:
            progress(state)
        last = state
        if state.done:
            if not state.succeeded:
                raise BackfillError(f"backfill {backfill_id} ended {state.status}: {state.runs}")
            return state
        if time.monotonic() > deadline:
            raise BackfillError(
                f"backfill {backfill_id} not done after {timeout_seconds:.0f} s: "
                + state.describe()
            )
        time.sleep(poll_seconds)
