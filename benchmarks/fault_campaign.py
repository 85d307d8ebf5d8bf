"""The fault campaign: break the running platform on purpose and count what survives.

    python benchmarks/fault_campaign.py [--photos 8] [--only NAME ...]
    python benchmarks/fault_campaign.py --production [--photos 8] [--only NAME ...]

Each fault gets a fresh local stack, DAGSTER_HOME and DuckDB warehouse, the real
dagster-daemon, and a simulated day of `--photos` photos announced by their GCS
notifications (plus whatever the fault adds). After the fault, the platform recovers
without a human; then the table says, per fault: photos sent, photos graded (a
`drone_images` row with crops and grades of every disease), photos dead-lettered, photos
lost (neither), and photos doubled (a key with more than one row), plus bad messages sent
and dead-lettered.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from docs_table import add_write_docs_flag, write_docs

from farm_platform.layout import ImageKey
from farm_platform_dev.daemon import (
    wait_for_photos,
)
from farm_platform_dev.local_stack import LocalStack
from farm_platform_dev.postgres import PostgresServer
from farm_platform_dev.simulate.render import png_header_only

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_cases import (  # noqa: E402
    BOMB_POSITION,
    DAY,
    POSTGRES_FAULT,
    Campaign,
    fault_burst,
    fault_kill_daemon_mid_run,
    fault_kill_daemon_mid_tick,
    fault_kill_postgres,
    fault_kill_worker,
    fault_kill_worker_and_code_server,
    fault_lock_warehouse,
    fault_poison_messages,
    fault_restart_pubsub,
)
from production_faults import PRODUCTION_FAULTS, run_production_faults  # noqa: E402

BEFORE_UPLOAD, AFTER_UPLOAD, UPLOADS_ITSELF = "before upload", "after upload", "uploads itself"
FAULTS: dict[str, tuple[Callable[[Campaign, DagsterInstance], None], str]] = {
    # name: (inject, when)
    "kill -9 run worker": (fault_kill_worker, AFTER_UPLOAD),
    "kill -9 run worker + code server": (fault_kill_worker_and_code_server, AFTER_UPLOAD),
    "kill -9 daemon mid-run": (fault_kill_daemon_mid_run, AFTER_UPLOAD),
    "kill -9 daemon mid-tick": (fault_kill_daemon_mid_tick, UPLOADS_ITSELF),
    "Pub/Sub emulator restarted mid-stream": (fault_restart_pubsub, AFTER_UPLOAD),
    "warehouse locked past its timeout, through the failed run's requeue": (
        fault_lock_warehouse,
        AFTER_UPLOAD,
    ),
    POSTGRES_FAULT: (fault_kill_postgres, AFTER_UPLOAD),
    "poison and forged messages": (fault_poison_messages, BEFORE_UPLOAD),
    "decompression bomb among good photos": (lambda campaign, instance: None, BEFORE_UPLOAD),
    "10,000-message burst of duplicates and bad messages": (fault_burst, AFTER_UPLOAD),
}


def run_fault(name: str, photos: int, workdir: Path) -> dict[str, Any]:
    inject, when = FAULTS[name]
    local_stack = LocalStack()
    local_stack.start()
    postgres = PostgresServer(durable=True).start() if name == POSTGRES_FAULT else None
    try:
        campaign = Campaign(local_stack, workdir, photos, postgres=postgres)
        bomb = name.startswith("decompression")
        extra = (
            {ImageKey(BOMB_POSITION, DAY).relative_path(): png_header_only(40_000, 40_000)}
            if bomb
            else None
        )
        campaign.start_daemon()
        with DagsterInstance.from_config(str(campaign.dagster_home)) as instance:
            try:
                if when == BEFORE_UPLOAD:
                    inject(campaign, instance)
                if when != UPLOADS_ITSELF:
                    campaign.upload(extra)
                if when in (AFTER_UPLOAD, UPLOADS_ITSELF):
                    inject(campaign, instance)
                wait_for_photos(
                    instance,
                    campaign.warehouse,
                    photos,
                    600,
                    campaign.daemon,
                    tolerate_failed_runs=True,
                )
                time.sleep(15)  # late redeliveries must not add work
                letters = campaign.dead_letters()
                failed_runs = len(
                    instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
                )
            finally:
                campaign.daemon.stop(kill=True)
        return tally(name, campaign, letters, failed_runs)
    finally:
        local_stack.stop()
        if postgres is not None:
            postgres.stop()


def tally(name: str, campaign: Campaign, letters: list[Any], failed_runs: int) -> dict[str, Any]:
    query = campaign.warehouse.query
    images = query("SELECT position_id, error FROM drone_images")
    graded = query(
        "SELECT position_id FROM disease_grades GROUP BY position_id"
        " HAVING count(DISTINCT disease_type) = 5"
    )["position_id"].to_list()
    no_leaves = query(
        "SELECT i.position_id FROM drone_images AS i WHERE i.error IS NULL AND NOT EXISTS"
        " (SELECT 1 FROM leaf_crops AS c WHERE c.position_id = i.position_id)"
    )["position_id"].to_list()
    unusable = images.filter(images["error"].is_not_null())["position_id"].to_list()
    grade_key = "position_id, date, leaf_crop_idx, disease_type, disease_model_version"
    doubled = query(
        f"SELECT count(*) AS n FROM (SELECT {grade_key} FROM disease_grades"
        f" GROUP BY {grade_key} HAVING count(*) > 1) AS doubled"
    )["n"][0]
    sent = campaign.photos
    accounted = set(graded) | set(no_leaves) | set(unusable)
    return {
        "fault": name,
        "photos sent": sent,
        "graded": len(set(graded) | set(no_leaves)),
        "unusable, dead-lettered": len(unusable),
        "lost": sent - len(accounted),
        "doubled rows": int(doubled),
        "bad messages sent": campaign.bad_sent,
        "dead letters": len(letters),
        "failed runs (recovered)": failed_runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument(
        "--only", nargs="*", choices=sorted([*FAULTS, *PRODUCTION_FAULTS]), help="default: all"
    )
    parser.add_argument(
        "--production",
        action="store_true",
        help="the rows of the production topology (benchmarks/production_faults.py) instead",
    )
    add_write_docs_flag(parser)
    args = parser.parse_args()
    rows = []
    if args.production:
        names = [name for name in args.only or PRODUCTION_FAULTS if name in PRODUCTION_FAULTS]
        rows = run_production_faults(names, args.photos)
    for name in [] if args.production else [n for n in args.only or FAULTS if n in FAULTS]:
        print(f"== {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix="farm-faults-") as workdir:
            rows.append(run_fault(name, args.photos, Path(workdir)))
        print("   " + ", ".join(f"{k}: {v}" for k, v in rows[-1].items() if k != "fault"))
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    if args.write_docs:  # the production topology's rows are a table of their own
        table = [[row[c] for c in columns] for row in rows]
        name = "fault_campaign-production" if args.production else "fault_campaign"
        write_docs(name, columns, table, note=f"{args.photos} photos of one day per fault.")
    return 0 if all(row["lost"] == 0 and row["doubled rows"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
