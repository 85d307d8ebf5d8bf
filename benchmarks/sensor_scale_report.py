"""What `benchmarks/sensor_at_scale.py` prints of a drain, and its docs/benchmarks.md rows."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from sensor_scale_log import CLAIM_SELECT, RECORD_SELECT, Tick, percentile

from farm_platform import config_values
from farm_platform.ingest.tick import IngestSettings
from farm_platform.resources.ingest_policy import IngestPolicyResource


def report(result: dict[str, Any]) -> None:
    settings = IngestSettings.from_policy(IngestPolicyResource.from_environment())
    print_drain(result, settings)
    print_tick_table(result["ticks"])
    print_a_full_tick(result, settings)
    print_statements_and_events(result)


def print_drain(result: dict[str, Any], settings: IngestSettings) -> None:
    photos: int = result["photos"]
    ticks: list[Tick] = result["ticks"]
    runs: int = result["runs"]
    seconds = [t.seconds for t in ticks]
    busy = sum(seconds)
    wall = ticks[-1].end - ticks[0].start
    interval = config_values.sensor_interval_seconds()
    print(
        f"\n{photos} photos of one day announced at once; the sensor every {interval} s, at "
        f"most {settings.max_messages_per_tick} messages a tick, runs of "
        f"{result['run_max_photos']} photos"
    )
    print(
        f"ticks to drain them: {len(ticks)}, the last one confirming the last claims "
        f"({wall:.0f} s from the first tick's start to its end, {busy:.0f} s of it in ticks)"
    )
    print(
        f"per tick: {statistics.median(seconds):.1f} s median, "
        f"{percentile(seconds, 0.95):.1f} s p95, {max(seconds):.1f} s max; on average "
        f"{photos / len(ticks):.0f} photos and {runs / len(ticks):.1f} runs created a tick"
    )
    print(
        f"sensor: {busy / photos * 1000:.2f} s of ticks per 1,000 photos "
        f"({wall / photos * 1000:.2f} s of wall time: a tick starts {interval} s after the "
        f"last one did, or when it ends if later)"
    )


def print_tick_table(ticks: Sequence[Tick]) -> None:
    print(
        "\n tick      s  pulled  photos  runs  evaluation  ingest  warehouse  claim  record"
        "  creating runs  connections  event rows"
    )
    for number, t in enumerate(ticks, 1):
        ingest = f"{t.ingest_seconds:6.1f}" if t.ingest_seconds is not None else "     -"
        print(
            f" {number:4d} {t.seconds:6.1f} {t.pulled:7d} {t.photos:7d} {t.runs:5d} "
            f"{t.evaluation:11.1f}  {ingest}  {t.warehouse_seconds():9.2f}  "
            f"{t.warehouse_seconds(CLAIM_SELECT):5.3f}  {t.warehouse_seconds(RECORD_SELECT):6.3f}"
            f"  {t.creating_runs:13.1f}  {t.dagster_connections:11d}  {t.event_inserts:10d}"
        )
    print(
        "(seconds; evaluation: to the daemon storing its result; ingest: ingest_tick, by the "
        "sensor's log; warehouse, claim, record: PostgreSQL's time in the warehouse's "
        "statements, the claim's and the record's SELECT; creating runs: from then to the "
        "tick's end, with the Dagster database's connections and event-log INSERTs in it)"
    )


def print_a_full_tick(result: dict[str, Any], settings: IngestSettings) -> None:
    """Where a full tick's time goes (the mean of the full ticks, or of all)."""
    ticks: list[Tick] = result["ticks"]
    runs: int = result["runs"]
    full = [t for t in ticks if t.pulled >= settings.max_messages_per_tick]
    sample = full or ticks
    n = len(sample)

    def mean(value: Callable[[Tick], float]) -> float:
        return sum(value(t) for t in sample) / n

    tick_s, creating = mean(lambda t: t.seconds), mean(lambda t: t.creating_runs)
    evaluation, ingest = mean(lambda t: t.evaluation), mean(lambda t: t.ingest_seconds or 0.0)
    made = mean(lambda t: t.runs)
    per_run = creating / made if made else 0.0
    connections = mean(lambda t: t.dagster_connections) / made if made else 0.0
    authenticating = mean(lambda t: t.dagster_connecting) / made if made else 0.0
    statements = mean(lambda t: t.dagster_seconds) / made if made else 0.0
    opening = result["connection_seconds"]
    events: dict[str, int] = result["run_events"]
    kinds = ", ".join(f"{count / runs:.0f} {kind}" for kind, count in events.items())
    if full:
        full_tick = f"{settings.max_messages_per_tick} messages"
        print(f"\na full tick ({full_tick}; mean of {n}): {tick_s:.1f} s")
    else:
        print(f"\na tick (none was full; mean of all {n}): {tick_s:.1f} s")
    print(
        f"  Dagster creating its {made:.1f} runs: {creating:.2f} s ({creating / tick_s:.0%}), "
        f"{per_run:.2f} s a run. A run is {sum(events.values()) / runs:.0f} event-log rows "
        f"({kinds}) and its run row; dagster-postgres opens a connection per write (no "
        f"pool): {connections:.0f} connections a run, {connections * opening:.2f} s at "
        f"{opening * 1000:.1f} ms to open one (probe; {authenticating:.2f} s of it "
        f"PostgreSQL's password exchange), {statements:.2f} s in its statements; the rest is "
        f"the daemon's Python and the execution plan from the code server"
    )
    warehouse = mean(lambda t: t.warehouse_seconds())
    warehouse_connections = mean(lambda t: t.warehouse_connections)
    print(
        f"  the sensor's evaluation: {evaluation:.2f} s ({evaluation / tick_s:.0%}); "
        f"ingest_tick {ingest:.2f} s of it (its warehouse statements {warehouse:.2f} s on "
        f"{warehouse_connections:.0f} connections); outside ingest_tick {evaluation - ingest:.2f}"
        f" s (the field map's read, the run requests, gRPC, the daemon storing the tick)"
    )
    probe = result["tick_probe"]
    rest = probe["ingest"] - probe["pull"] - probe["ack"] - probe["lookups"] - probe["warehouse"]
    print(
        f"  probe, one full tick's ingest_tick in this process ({probe['pulled']:.0f} pulled, "
        f"{probe['runs']:.0f} runs): {probe['ingest']:.2f} s = Pub/Sub pulls "
        f"{probe['pull']:.2f} s + acknowledge and deadline calls {probe['ack']:.2f} s + bucket "
        f"lookups {probe['lookups']:.2f} s + warehouse calls {probe['warehouse']:.2f} s + "
        f"parsing and the rest {rest:.2f} s; besides: the field map's read "
        f"{probe['field_map']:.2f} s, building the run requests {probe['run_requests']:.2f} s"
    )


def print_statements_and_events(result: dict[str, Any]) -> None:
    photos: int = result["photos"]
    ticks: list[Tick] = result["ticks"]
    runs: int = result["runs"]
    events: dict[str, int] = result["run_events"]
    shapes: dict[str, float] = defaultdict(float)
    for t in ticks:
        for shape, spent in t.warehouse.items():
            shapes[shape] += spent
    print("warehouse statements over the drain, by shape (PostgreSQL's seconds):")
    for shape, total in sorted(shapes.items(), key=lambda item: -item[1])[:6]:
        print(f"  {total:6.2f} s  {shape}")
    claim = result["claim_probe"]
    claim_in_ticks = max(t.warehouse_seconds(CLAIM_SELECT) for t in ticks)
    print(
        f"claim query: at most {claim_in_ticks * 1000:.0f} ms in a tick of the drain; with "
        f"all {photos} photos waiting (probe, from this process): its SELECT "
        f"{claim['select']:.2f} s, the UPDATE of its {claim['claims']:.0f} claims "
        f"{claim['update']:.2f} s"
    )
    run_events = sum(events.values())
    print(
        f"\nDagster event-log rows: {result['events']} written during the drain, "
        f"{result['events'] / photos:.4f} per photo ({run_events} of them the sensor's runs'); "
        f"runs: {runs}, {runs / photos:.5f} per photo ({photos / runs:.0f} photos a run). "
        f"The runs' own events when they execute: benchmarks/scale_out.py's figure"
    )
    print(f"photos still pending in the arrival queue: {result['pending_after']}")


def docs_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The drain's headline figures, for docs/benchmarks.md."""
    photos, ticks = result["photos"], result["ticks"]
    seconds = [t.seconds for t in ticks]
    return [
        ("photos of one day announced at once", f"{photos:,}"),
        ("ticks to drain them", str(len(ticks))),
        (
            "seconds per tick: median / p95 / max",
            f"{statistics.median(seconds):.1f} / "
            f"{percentile(seconds, 0.95):.1f} / {max(seconds):.1f}",
        ),
        ("seconds of sensor per 1,000 photos", f"{sum(seconds) / photos * 1000:.2f}"),
        ("Dagster event-log rows per photo", f"{result['events'] / photos:.4f}"),
        ("runs per photo", f"{result['runs'] / photos:.5f}"),
        ("photos still pending after the drain", str(result["pending_after"])),
    ]
