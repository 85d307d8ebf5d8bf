"""End-to-end throughput of the queue-driven pipeline against the bare model path.

    python benchmarks/pipeline_throughput.py [--images 1000 5000] [--trickle-seconds 120]

For each N: render N simulated photos of one day (N positions), start the local emulators
and the real dagster-daemon on a fresh SQLite DAGSTER_HOME with the project's instance
settings, upload the photos (the GCS emulator notifies `drone_image`), and time from the
first upload until every photo's rows are committed in the DuckDB warehouse. On the same
photos, in the same process, it then times the bare model path (decode → detect → crop →
5 graders, batch 32). The ratio is bare seconds / end-to-end seconds.

Where the time goes, per photo: the wait until the first run is created (sensor tick and
batching), each run's queue and start-up (created → started), and inside the runs the
stages the op records in its `drone_images` materialization (read, decode, detect+crop,
grade, crop encode+write, warehouse write, checks; reading/decoding the next chunk and
writing the last one run in background threads, overlapping detect and grade), and what
is left of a run's wall time (process start, imports, model loading, Dagster's events).
It also counts the events Dagster stored for the image runs and samples each run worker's
peak RSS (the code server starts each run in a `multiprocessing` spawn child).

The trickle: one photo per second for `--trickle-seconds` at the default batching settings,
and p50/p95 of upload → rows in the warehouse.

`--inference local oip` runs each N twice, in this order: the models in the run's process,
then on a `farm-platform models serve` process (kserve, gRPC) beside the daemon, and prints
the oip/local ratio of end-to-end throughput and the per-request overhead at the batch
sizes the pipeline sends (32 photos to the detector, 256 crops to a grader).

`--bucket local` keeps photos and crops in a local folder bucket (`file://`) and announces
each photo with a drone-controller message instead of a GCS notification: the same
pipeline without the GCS emulator's cost per object (each crop is an object).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bare_model_path import measure_bare_path
from docs_table import add_write_docs_flag, write_docs
from pipeline_platform import (
    START,
    Platform,
    RunMemorySampler,
    image_runs,
    remove_tree,
    stage_seconds,
)

from farm_platform import config as farm_config
from farm_platform.layout import join
from farm_platform_dev.daemon import wait_for_photos
from farm_platform_dev.local_stack import LocalStack
from farm_platform_dev.model_server import ModelServerProcess
from farm_platform_dev.simulate import FarmConfig, simulate_images


def bench(
    n_images: int,
    stack: LocalStack,
    workdir: Path,
    local: bool,
    run_max_photos: int | None,
    server: ModelServerProcess | None = None,
    run_torch_threads: int | None = None,
) -> dict[str, Any]:
    config = FarmConfig(positions=n_images, days=1, start_date=START, seed=5)
    where = "a local folder bucket" if local else "the GCS emulator"
    how = f"models on the server {server.grpc_url}" if server else "models in the run"
    print(f"\n== N = {n_images} photos of one day on {where}, {how}: rendering", flush=True)
    photos = list(simulate_images(config))
    name = f"n{n_images}{'-local' if local else ''}{'-oip' if server else ''}"
    inference = server.environment() if server else None
    platform = Platform(
        stack, workdir, name, n_images, local, run_max_photos, inference, run_torch_threads
    )
    sampler = RunMemorySampler()
    with platform.running() as instance:
        sampler.start()
        print("   uploading", flush=True)
        started = time.perf_counter()
        platform.upload(photos)
        uploaded = time.perf_counter() - started
        wait_for_photos(
            instance, platform.warehouse, n_images, 3600, platform.daemon, poll_seconds=0.5
        )
        end_to_end = time.perf_counter() - started
        sampler.stopped.set()
        runs = image_runs(instance)
        first_created = min(record.create_timestamp.timestamp() for record in runs)
        wall_started = time.time() - (time.perf_counter() - started)
        stages: dict[str, float] = {}
        run_wall = queue_and_start = 0.0
        events = 0
        for record in runs:
            run = record.dagster_run
            queue_and_start += record.start_time - record.create_timestamp.timestamp()
            run_wall += record.end_time - record.start_time
            for stage, seconds in stage_seconds(instance, run.run_id).items():
                stages[stage] = stages.get(stage, 0.0) + seconds
            events += len(instance.all_logs(run.run_id))

    print("   bare model path on the same photos", flush=True)
    bare = measure_bare_path([photo.png for photo in photos], batch_size=32)
    op_total = stages.pop("op_total", 0.0)
    per_photo_ms = {
        "sensor wait (upload start → first run created)": first_created - wall_started,
        "run queue (created → started, all runs)": queue_and_start,
        **{f"in op: {stage}": seconds for stage, seconds in stages.items()},
        "in op: all of it (wall)": op_total,
        "in run, outside the op (process, imports, Dagster events)": run_wall - op_total,
    }
    figures = {
        "photos": n_images,
        "runs": len(runs),
        "upload_seconds": round(uploaded, 1),
        "end_to_end_seconds": round(end_to_end, 1),
        "end_to_end_photos_per_s": round(n_images / end_to_end, 1),
        "bare_photos_per_s": bare["images_per_s"],
        "ratio": round(bare["seconds"] / end_to_end, 3),
        "dagster_events_per_photo": round(events / n_images, 4),
        "peak_run_rss_mb": [round(mb) for mb in sampler.peak_mb.values()],
        "stage_ms_per_photo": {k: round(1000 * v / n_images, 2) for k, v in per_photo_ms.items()},
    }
    for name, value in figures.items():
        if isinstance(value, dict):
            print(f"  {name}:")
            for stage, ms in value.items():
                print(f"    {stage:62s} {ms:8.2f}")
        else:
            print(f"  {name:32s} {value}")
    sys.stdout.flush()
    return figures


def request_overhead(server: ModelServerProcess, repeats: int = 7) -> dict[str, float]:
    """Median ms of one request through the server minus the same forward pass in process."""
    from farm_platform.ml import inference, oip, oip_runners
    from farm_platform.ml.registry import ModelRegistry

    registry = ModelRegistry(server.models_dir)
    client = oip.OipClient(server.grpc_url)
    rng = np.random.default_rng(0)
    detector_card, grader_card = registry.detector(), registry.grader_for("disease_0")
    size = detector_card.input_size[0]
    photos = rng.integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    crops = inference.prepare_crops(
        list(rng.integers(0, 256, (256, *grader_card.input_size, 3), dtype=np.uint8)),
        grader_card.input_size,
    )
    cases = {
        "detector, 32 photos": (
            inference.detector_runner(inference.load_detector(detector_card, registry)).run,
            oip_runners.remote_detector(client, detector_card).run,
            photos,
        ),
        "grader, 256 crops": (
            inference.grader_runner(inference.load_grader(grader_card, registry)).run,
            oip_runners.remote_grader(client, grader_card).run,
            crops,
        ),
    }
    overhead = {}
    for name, (local_run, remote_run, batch) in cases.items():
        timings: dict[str, list[float]] = {"local": [], "server": []}
        for _ in range(repeats):
            for which, run in (("local", local_run), ("server", remote_run)):
                started = time.perf_counter()
                run(batch)
                timings[which].append(time.perf_counter() - started)
        local_ms = 1000 * statistics.median(timings["local"])
        server_ms = 1000 * statistics.median(timings["server"])
        overhead[name] = round(server_ms - local_ms, 1)
        print(
            f"  request overhead, {name:22s} {server_ms:7.1f} ms through the server, "
            f"{local_ms:7.1f} ms in process: {server_ms - local_ms:+.1f} ms",
            flush=True,
        )
    return overhead


def trickle(stack: LocalStack, workdir: Path, seconds: int) -> dict[str, float]:
    """One photo a second for `seconds`, default batching: upload → rows latency."""
    config = FarmConfig(positions=seconds, days=1, start_date=START, seed=9)
    photos = list(simulate_images(config))
    platform = Platform(stack, workdir, "trickle", seconds)
    latencies: list[float] = []
    with platform.running() as instance:
        print(f"\n== trickle: 1 photo/s for {seconds} s", flush=True)
        uploaded_at: dict[str, float] = {}
        for photo in photos:
            path = join(platform.root, photo.key.relative_path())
            platform.fs.pipe_file(path, photo.png)
            uploaded_at[photo.key.position_id] = time.time()
            time.sleep(max(0.0, 1.0 - (time.time() - uploaded_at[photo.key.position_id])))
            latencies.extend(_newly_graded(platform, uploaded_at))
        deadline = time.monotonic() + 300
        while len(latencies) < len(photos) and time.monotonic() < deadline:
            time.sleep(0.5)
            latencies.extend(_newly_graded(platform, uploaded_at))
        runs = len(image_runs(instance))
    ordered = sorted(latencies)
    result = {
        "photos": len(photos),
        "graded": len(latencies),
        "runs": runs,
        "p50_seconds": round(statistics.median(ordered), 1),
        "p95_seconds": round(ordered[int(0.95 * (len(ordered) - 1))], 1),
        "max_seconds": round(ordered[-1], 1),
    }
    for name, value in result.items():
        print(f"  {name:32s} {value}")
    sys.stdout.flush()
    return result


_seen: set[str] = set()


def _newly_graded(platform: Platform, uploaded_at: dict[str, float]) -> list[float]:
    """Latency of each photo whose rows appeared since the last look."""
    now = time.time()
    try:
        rows = platform.warehouse.query("SELECT position_id FROM drone_images")
    except Exception:  # noqa: BLE001 - the table appears with the first run
        return []
    fresh = [p for p in rows["position_id"].to_list() if p not in _seen]
    _seen.update(fresh)
    return [now - uploaded_at[p] for p in fresh]


DOCS_COLUMNS = ["bucket", "inference", "photos", "runs", "end_to_end_photos_per_s"]
DOCS_COLUMNS += ["bare_photos_per_s", "ratio", "dagster_events_per_photo", "peak_run_rss_mb"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--trickle-seconds", type=int, default=120, help="0: no trickle")
    parser.add_argument("--bucket", choices=["emulator", "local"], default="emulator")
    parser.add_argument(
        "--run-max-photos", type=int, help="FARM_RUN_MAX_PHOTOS (default: the platform's)"
    )
    parser.add_argument(
        "--run-torch-threads",
        type=int,
        help="FARM_TORCH_THREADS of the runs only (default: the platform's); the bare path "
        "keeps the machine's default",
    )
    parser.add_argument(
        "--inference",
        nargs="+",
        choices=["local", "oip"],
        default=["local"],
        help="where the models run; `local oip` measures both, one after the other",
    )
    add_write_docs_flag(parser)
    args = parser.parse_args()
    rows, note = [], ""
    # A fresh emulator per phase: fake-gcs-server's per-object costs grow with the number
    # of objects in its bucket (docs/benchmarks.md, "End-to-end throughput"), so phases
    # must not inherit crops.
    workdir = tempfile.mkdtemp(prefix="farm-throughput-")
    try:
        local = args.bucket == "local"
        for n_images in args.images:
            throughput = {}
            for mode in args.inference:
                with LocalStack() as stack:
                    if mode == "local":
                        figures = bench(
                            n_images,
                            stack,
                            Path(workdir),
                            local,
                            args.run_max_photos,
                            run_torch_threads=args.run_torch_threads,
                        )
                    else:
                        log = Path(workdir) / "model-server.log"
                        with ModelServerProcess(farm_config.models_dir(), log) as server:
                            figures = bench(
                                n_images, stack, Path(workdir), local, args.run_max_photos, server
                            )
                            request_overhead(server)
                throughput[mode] = figures["end_to_end_photos_per_s"]
                rows.append((args.bucket, mode, *(figures[c] for c in DOCS_COLUMNS[2:])))
            if len(throughput) == 2:
                ratio = throughput["oip"] / throughput["local"]
                print(f"  N = {n_images}: oip / local end-to-end throughput = {ratio:.2f}")
        if args.trickle_seconds:
            with LocalStack() as stack:
                late = trickle(stack, Path(workdir), args.trickle_seconds)
            note = f"Trickle (1 photo/s): upload → rows p50 {late['p50_seconds']} s, " + (
                f"p95 {late['p95_seconds']} s, max {late['max_seconds']} s."
            )
    finally:
        remove_tree(Path(workdir))
    if args.write_docs:
        write_docs("pipeline_throughput", DOCS_COLUMNS, rows, note=note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
