"""Throughput of the bare model path: decode PNG -> detect -> crop -> 5 graders.

    python benchmarks/bare_model_path.py [--count 256] [--seed 2000] [--batch-sizes 1 8 32]
        [--device auto|cpu|cuda|cuda:N] [--dtype float32|bfloat16] [--threads N]

No Dagster, no bucket, no warehouse: this is the ceiling the pipeline can reach on this
machine. Images are held-out simulator photos; the first batch is a warm-up and is not
timed. Peak RSS is the process high-water mark (resource.getrusage).

Batches flow as in a run: the next batch decodes on the `FARM_TORCH_THREADS` pool (in a
feeder thread) while this one goes through the models on the `FARM_TORCH_DEVICE`. Per
stage it prints photos per second of that stage's own time; decoding overlaps the models,
so the end-to-end rate is better than the stages' times added up. On CUDA it also prints
the GPU's busy share: the time the models' CUDA streams spent between their first and last
kernel of each stage (CUDA events), over the wall time; an upper bound of the busy time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from docs_table import add_write_docs_flag, write_docs

from farm_platform import config, config_values
from farm_platform.admin.configured import configured_registry
from farm_platform.layout import ImageKey
from farm_platform.ml.inference import (
    configured_placement,
    crop_leaves,
    decode_png,
    detect_leaves,
    grade_crops,
    load_detector,
    load_grader,
    model_placement,
    parallel_map,
    prepare_crops,
    use_threads,
)
from farm_platform.ml.registry import DISEASE_TYPES, ModelRegistry
from farm_platform.ml.settings import InferenceSettings
from farm_platform.resources.inference import InferenceResource

MODEL_STAGES = ("detect", "crop", "grade")
STAGES = ("decode", *MODEL_STAGES)


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class StageTimer:
    """Host seconds per stage and, on CUDA, the device time inside the model stages."""

    def __init__(self, cuda: bool) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.cuda = cuda
        self._events: list[tuple[Any, Any]] = []

    def run(self, stage: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        started = time.perf_counter()
        if self.cuda and stage in MODEL_STAGES:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            value = function(*args, **kwargs)
            end.record()
            self._events.append((begin, end))
        else:
            value = function(*args, **kwargs)
        self.seconds[stage] += time.perf_counter() - started
        return value

    def device_seconds(self) -> float:
        import torch

        torch.cuda.synchronize()
        return sum(begin.elapsed_time(end) for begin, end in self._events) / 1000.0


def _decode(pngs: Sequence[bytes]) -> list[Any]:
    return parallel_map(decode_png, pngs, purpose="decode")


def _crop(
    images: list[tuple[ImageKey, Any]], found: Any, models: dict[str, Any], device: Any, dtype: Any
) -> tuple[Any, dict[tuple[int, int], Any]]:
    detector_card, detector = models["detector"]
    frame, crops = crop_leaves(images, detector, detector_card, "memory://bench", detections=found)
    sizes = {(card.input_size[0], card.input_size[1]) for card, _ in models["graders"]}
    # Resize once per input size, onto the device: the five graders share it.
    return frame, {size: prepare_crops(crops, size, device, dtype) for size in sizes}


def _grade(frame: Any, prepared: dict[tuple[int, int], Any], models: dict[str, Any]) -> None:
    for card, grader in models["graders"]:
        grade_crops(prepared[(card.input_size[0], card.input_size[1])], frame, grader, card)


def _run(pngs: Sequence[bytes], batch_size: int, models: dict[str, Any], timer: StageTimer) -> int:
    """One pass over `pngs` in batches, decoding the next batch while this one is graded;
    returns the number of leaves graded."""
    detector = models["detector"][1]
    device, dtype = model_placement(detector)
    batches = [pngs[i : i + batch_size] for i in range(0, len(pngs), batch_size)]
    leaves = 0
    with ThreadPoolExecutor(1, thread_name_prefix="feeder") as feeder:
        following = feeder.submit(timer.run, "decode", _decode, batches[0])
        for index in range(len(batches)):
            arrays = following.result()
            if index + 1 < len(batches):
                following = feeder.submit(timer.run, "decode", _decode, batches[index + 1])
            found = timer.run("detect", detect_leaves, arrays, detector, batch_size)
            first = index * batch_size
            images = [
                (ImageKey("BENCH", dt.date(2024, 1, 1) + dt.timedelta(days=first + i)), array)
                for i, array in enumerate(arrays)
            ]
            frame, prepared = timer.run("crop", _crop, images, found, models, device, dtype)
            timer.run("grade", _grade, frame, prepared, models)
            leaves += frame.height
    return leaves


def measure_bare_path(
    pngs: list[bytes],
    batch_size: int,
    registry: ModelRegistry | None = None,
    repeats: int = 1,
    settings: InferenceSettings | None = None,
) -> dict[str, Any]:
    """Images/s, ms/image, photos/s per stage and peak RSS of decode -> detect -> crop ->
    5 graders, on the device and dtype of `settings` (the defaults without them).

    With `repeats` > 1 the median pass is reported: the CPU is often shared, and one
    unlucky pass should not be the figure."""
    import torch

    registry = registry or configured_registry()
    detector_card = registry.detector()
    models = {
        "detector": (detector_card, load_detector(detector_card, registry, settings=settings)),
        "graders": [
            (card, load_grader(card, registry, settings=settings))
            for card in (registry.grader_for(d) for d in DISEASE_TYPES)
        ],
    }
    device, dtype = model_placement(models["detector"][1])
    cuda = device.type == "cuda"
    _run(pngs[:batch_size], batch_size, models, StageTimer(cuda))  # warm-up: kernels, allocator
    passes = []
    for _ in range(max(1, repeats)):
        timer = StageTimer(cuda)
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        leaves = _run(pngs, batch_size, models, timer)
        if cuda:
            torch.cuda.synchronize()
        passes.append((time.perf_counter() - started, timer))
    seconds, timer = sorted(passes, key=lambda p: p[0])[len(passes) // 2]
    return {
        "batch_size": batch_size,
        "images": len(pngs),
        "leaves": leaves,
        "seconds": round(seconds, 3),
        "passes_seconds": [round(p[0], 3) for p in passes],
        "images_per_s": round(len(pngs) / seconds, 2),
        "ms_per_image": round(1000 * seconds / len(pngs), 2),
        "leaves_per_s": round(leaves / seconds, 1),
        "stage_images_per_s": {
            stage: round(len(pngs) / s, 1) if s > 0 else None for stage, s in timer.seconds.items()
        },
        "gpu_busy_share": round(timer.device_seconds() / seconds, 3) if cuda else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "cpus": config_values.available_cores(),
    }


def device_name(device: str) -> str:
    """The GPU's name on CUDA (what the figures depend on), else the device."""
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else device


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=256, help="held-out images to time")
    parser.add_argument("--seed", type=int, default=2000, help="simulator seed (held-out)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; median reported")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default $FARM_TORCH_DEVICE)")
    parser.add_argument("--dtype", help="float32 or bfloat16 (default $FARM_TORCH_DTYPE)")
    parser.add_argument("--threads", type=int, help="$FARM_TORCH_THREADS")
    add_write_docs_flag(parser)
    args = parser.parse_args(argv)
    # Through the environment, so that the platform's own reader resolves (and refuses) them.
    for name, value in (
        (config.FARM_TORCH_DEVICE, args.device),
        (config.FARM_TORCH_DTYPE, args.dtype),
        (config.FARM_TORCH_THREADS, args.threads),
    ):
        if value is not None:
            os.environ[name] = str(value)
    settings = InferenceResource.from_environment().settings()
    use_threads(settings.threads)
    placement = configured_placement(settings)

    from farm_platform_dev.simulate import render_training_images

    pngs = [sim.png for sim in render_training_images(args.seed, args.count)]
    print(
        f"{len(pngs)} held-out simulator PNGs (seed {args.seed}), warm-up batch excluded, "
        f"median of {args.repeats} passes; {placement.device} {placement.dtype}, "
        f"{settings.threads} CPU threads of {config_values.available_cores()} cores"
    )
    print(
        f"{'batch':>6}{'images/s':>10}{'ms/image':>10}{'leaves/s':>10}"
        + "".join(f"{stage + '/s':>10}" for stage in STAGES)
        + f"{'GPU busy':>10}{'peak RSS MB':>13}"
    )
    rows = []
    for batch_size in args.batch_sizes:
        r = measure_bare_path(pngs, batch_size, repeats=args.repeats, settings=settings)
        busy = "-" if r["gpu_busy_share"] is None else f"{r['gpu_busy_share']:.0%}"
        rows.append((batch_size, f"{r['images_per_s']:.1f}", f"{r['ms_per_image']:.2f}", busy))
        rows[-1] += (*(f"{r['stage_images_per_s'][s]:.0f}" for s in STAGES), r["peak_rss_mb"])
        print(
            f"{r['batch_size']:>6}{r['images_per_s']:>10.2f}{r['ms_per_image']:>10.2f}"
            f"{r['leaves_per_s']:>10.1f}"
            + "".join(f"{r['stage_images_per_s'][stage]:>10.1f}" for stage in STAGES)
            + f"{busy:>10}{r['peak_rss_mb']:>13.1f}"
        )
    print(f"torch threads {r['threads']}, cpus {r['cpus']}, leaves graded per pass {r['leaves']}")
    if args.write_docs:  # one table per kind of device: cpu, cuda
        columns = ["batch", "photos/s", "ms/photo", "GPU busy", *(f"{s}/s" for s in STAGES)]
        write_docs(
            f"bare_model_path-{placement.device.split(':')[0]}",
            [*columns, "peak RSS MB"],
            rows,
            note=f"{device_name(placement.device)}, {placement.dtype}, {len(pngs)} held-out "
            f"photos, median of {args.repeats} passes.",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
