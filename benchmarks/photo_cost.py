"""What a photo costs: CPU seconds per photo over every process the platform starts.

    python benchmarks/photo_cost.py [--quick] [--scenarios burst flight production]

Scenarios (photos of one day, announced by drone messages, photos in a local folder bucket):
- burst: 2,000 photos uploaded at once, embedded default (`dagster-daemon` with the
  project's instance settings, DuckDB warehouse);
- flight: one photo every 2 s for 30 minutes, embedded default;
- production: the same flight on `stack up --production` (PostgreSQL, code servers, the
  daemon, Redis, the Celery run launcher's workers and two model-server replicas), every
  process reaching PostgreSQL through its PgBouncer; production-no-pooler: the same without
  it. Run together (`--scenarios production-no-pooler production`), they have a table of
  their own: PostgreSQL's sessions and CPU per photo before and after the pooler.
`--quick`: 64 photos in the burst, 40 photos (80 s) of flight: burst and flight together in
about 5 minutes on 2 cores (the production topology's start adds a few more).

Per scenario it prints the CPU seconds per photo of the platform's processes, summed and per
process group (the emulators, which stand in for Cloud Storage and Pub/Sub, apart; the
whole machine's busy CPU beside, since others share it), the per-run fixed cost (the
platform's CPU beyond the bare model path's, per run, by group, and the run's wall time
outside its op; a run worker's fixed parts measured in a fresh process:
`photo_cost_breakdown.py`), Dagster events and warehouse connections (PostgreSQL
sessions) per photo, upload → graded latency p50 and p95, and the bare model path's CPU
per photo (decode → detect → crop → 5 graders, batch 32, in this process) on the same
photos, measured after.
CPU seconds depend little on the machine's other load; wall times and latency do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from docs_table import add_write_docs_flag, write_docs
from photo_cost_breakdown import print_fixed_cost
from photo_cost_run import SCENARIOS, Scenario, bare_cpu_per_photo, measure

DOCS_COLUMNS = [
    "scenario",
    "photos",
    "runs",
    "platform CPU s/photo",
    "bare CPU s/photo",
    "× bare",
    "CPU s/photo by process group",
    "idle CPU s/photo",
    "CPU s/run beyond the bare path",
    "events/photo",
    "DB connections/photo",
    "latency p50 / p95 s",
]


def report(name: str, figures: dict[str, Any]) -> tuple[Any, ...]:
    """Print one scenario's figures; its row of the docs table."""
    photos = figures["photos"]
    per_photo = figures["platform_cpu_s"] / photos
    bare = figures["bare_cpu_s_per_photo"]
    groups = {g: s / photos for g, s in figures["cpu_s_by_group"].items()}
    by_group = sorted(groups.items(), key=lambda item: -item[1])
    print(f"\n== {name}: {photos} photos in {figures['runs']} runs, {figures['seconds']:.0f} s")
    print(
        f"   platform CPU s/photo {per_photo:.3f} (bare path {bare:.3f}: {per_photo / bare:.1f}×)"
    )
    for group, seconds in by_group:
        print(f"     {group:28s} {seconds:.3f}")
    print(f"   emulators CPU s/photo {figures['emulator_cpu_s'] / photos:.3f} (apart)")
    print(f"   machine busy CPU s/photo {figures['machine_cpu_s'] / photos:.3f} (all users)")
    idle_rate = sum(figures["idle_cpu_s_per_s"].values())
    idle = idle_rate * figures["seconds"]
    # Idle cost included: the idle window is short, so it is an estimate shown beside.
    fixed = (figures["platform_cpu_s"] - bare * photos) / max(1, figures["runs"])
    print(f"   idle platform: {idle_rate:.3f} CPU s per s, {idle / photos:.3f} CPU s/photo here:")
    for group, rate in figures["idle_cpu_s_per_s"].items():
        print(f"     {group:28s} {rate:.3f} CPU s per s")
    print(f"   per run: CPU beyond the bare path {fixed:.2f} s (idle cost included); by group:")
    for group, seconds in figures["cpu_s_per_run_by_group"].items():
        print(f"     {group:28s} {seconds:.2f}")
    for part, seconds in figures["run_wall_s"].items():
        print(f"     wall: {part:40s} {seconds:.2f}")
    runs = max(1, figures["runs"])
    # On the production topology the models run on the replicas (FARM_INFERENCE=oip): the
    # bare path's work is theirs, not the run workers'.
    op_cpu = sum(figures["cpu_s_by_group"].get(g, 0.0) for g in ("run workers", "replicas"))
    print_fixed_cost(figures["fixed_cost_parts"], op_cpu / runs, bare * photos / runs)
    connections = figures["db_connections"]
    print(
        f"   Dagster events/photo {figures['events'] / photos:.3f}; DB connections/photo ", end=""
    )
    print("—" if connections is None else f"{connections / photos:.2f}")
    p50, p95 = figures["latency_p50_p95"]
    print(f"   upload → graded p50 {p50:.1f} s, p95 {p95:.1f} s", flush=True)
    return (
        name,
        photos,
        figures["runs"],
        f"{per_photo:.3f}",
        f"{bare:.3f}",
        f"{per_photo / bare:.1f}",
        ", ".join(
            f"{g} {s:.3f}" for g, s in sorted(groups.items(), key=lambda i: -i[1]) if s > 0.002
        ),
        f"{idle / photos:.3f}",
        f"{fixed:.2f}",
        f"{figures['events'] / photos:.2f}",
        "—" if connections is None else f"{connections / photos:.2f}",
        f"{p50:.0f} / {p95:.0f}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 64-photo burst, 40-photo flights")
    parser.add_argument(
        "--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["burst", "flight"]
    )
    parser.add_argument("--photos", type=int, help="photos per scenario (default: its own)")
    add_write_docs_flag(parser)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="farm-photo-cost-") as workdir:
        Path(workdir).chmod(0o755)  # PostgreSQL runs as another user
        for name in args.scenarios:
            scenario: Scenario = SCENARIOS[name].sized(args.quick, args.photos)
            started = time.monotonic()
            figures = measure(scenario, Path(workdir) / name)
            figures["bare_cpu_s_per_photo"] = bare_cpu_per_photo(figures.pop("pngs"))
            rows.append(report(scenario.label, figures))
            print(f"   ({time.monotonic() - started:.0f} s with the bare path)", flush=True)
    if args.write_docs:
        # The production scenarios alone (with and without the pooler) have a table of their own.
        alone = all(SCENARIOS[name].production for name in args.scenarios)
        write_docs(
            "photo_cost" + ("-quick" if args.quick else "") + ("-production" if alone else ""),
            DOCS_COLUMNS,
            rows,
            note="CPU seconds of the platform's processes (emulators apart) per photo, and the "
            "bare model path's on the same photos; idle: what the platform spends while "
            "nothing arrives (sensor ticks, the daemon's loops; metered for a short window "
            "before the upload, an estimate) over the scenario's duration; CPU s/run beyond "
            "the bare path: the platform's CPU less the bare path's, per run, idle included.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
