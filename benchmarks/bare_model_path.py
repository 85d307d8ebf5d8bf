"""Throughput of the bare model path: decode PNG -> detect -> crop -> 5 graders.

    python benchmarks/bare_model_path.py [--count 256] [--seed 2000] [--batch-sizes 1 8 32]

No Dagster, no bucket, no warehouse: this is the ceiling the pipeline can reach on this
machine. Images are held-out simulator photos; the first batch is a warm-up and is not
timed. Peak RSS is the process high-water mark (resource.getrusage).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

from farm_platform.layout import ImageKey
from farm_platform.ml.inference import (
    crop_leaves,
    decode_png,
    grade_crops,
    load_detector,
    load_grader,
    prepare_crops,
)
from farm_platform.ml.registry import DISEASE_TYPES, ModelRegistry


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _run(pngs: Sequence[bytes], batch_size: int, models: dict[str, Any]) -> int:
    """One pass over `pngs` in batches; returns the number of leaves graded."""
    detector_card, detector = models["detector"]
    leaves = 0
    for start in range(0, len(pngs), batch_size):
        chunk = pngs[start : start + batch_size]
        images = [
            (ImageKey("BENCH", dt.date(2024, 1, 1) + dt.timedelta(days=start + i)), decode_png(png))
            for i, png in enumerate(chunk)
        ]
        frame, crops = crop_leaves(
            images, detector, detector_card, "memory://bench", batch_size=batch_size
        )
        prepared: dict[tuple[int, int], Any] = {}
        for card, grader in models["graders"]:
            size = (card.input_size[0], card.input_size[1])
            if size not in prepared:  # resize once, grade five times
                prepared[size] = prepare_crops(crops, size)
            grade_crops(prepared[size], frame, grader, card)
        leaves += frame.height
    return leaves


def measure_bare_path(
    pngs: list[bytes], batch_size: int, registry: ModelRegistry | None = None, repeats: int = 1
) -> dict[str, Any]:
    """Images/s, ms/image and peak RSS of decode -> detect -> crop -> 5 graders.

    With `repeats` > 1 the median pass is reported: the CPU is often shared, and one
    unlucky pass should not be the figure."""
    registry = registry or ModelRegistry()
    detector_card = registry.detector()
    models = {
        "detector": (detector_card, load_detector(detector_card, registry)),
        "graders": [
            (card, load_grader(card, registry))
            for card in (registry.grader_for(d) for d in DISEASE_TYPES)
        ],
    }
    _run(pngs[:batch_size], batch_size, models)  # warm-up: allocator, oneDNN kernels
    passes = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        leaves = _run(pngs, batch_size, models)
        passes.append(time.perf_counter() - started)
    seconds = sorted(passes)[len(passes) // 2]
    return {
        "batch_size": batch_size,
        "images": len(pngs),
        "leaves": leaves,
        "seconds": round(seconds, 3),
        "passes_seconds": [round(p, 3) for p in passes],
        "images_per_s": round(len(pngs) / seconds, 2),
        "ms_per_image": round(1000 * seconds / len(pngs), 2),
        "leaves_per_s": round(leaves / seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": __import__("torch").get_num_threads(),
        "cpus": os.cpu_count(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=256, help="held-out images to time")
    parser.add_argument("--seed", type=int, default=2000, help="simulator seed (held-out)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; median reported")
    args = parser.parse_args(argv)

    from farm_platform.dev.simulate import render_training_images

    pngs = [sim.png for sim in render_training_images(args.seed, args.count)]
    print(
        f"{len(pngs)} held-out simulator PNGs (seed {args.seed}), warm-up batch excluded, "
        f"median of {args.repeats} passes"
    )
    print(f"{'batch':>6}{'images/s':>11}{'ms/image':>11}{'leaves/s':>11}{'peak RSS MB':>13}")
    for batch_size in args.batch_sizes:
        r = measure_bare_path(pngs, batch_size, repeats=args.repeats)
        print(
            f"{r['batch_size']:>6}{r['images_per_s']:>11.2f}{r['ms_per_image']:>11.2f}"
            f"{r['leaves_per_s']:>11.1f}{r['peak_rss_mb']:>13.1f}"
        )
    print(f"torch threads {r['threads']}, cpus {r['cpus']}, leaves graded per pass {r['leaves']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
