"""The training photos of `models/train.py`: rendered by the simulator in two processes
(at 256 px, or at other sizes and scaled as inference scales them, optionally through
models/randomize.py), their dihedral augmentation, and the graders' jittered leaf crops."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import randomize  # models/randomize.py
import torch
from eval_photos import HELDOUT_SEED, render, render_photo, simulator_fingerprint

from farm_platform.ml.inference import cut_crop, decode_png, resize_crop
from farm_platform.ml.registry import DETECTOR_MODEL_ID

TRAIN_SEED = 1000  # simulator seeds TRAIN_SEED .. TRAIN_SEED + chunks - 1
TRAIN_IMAGES = 1600
HELDOUT_IMAGES = 300
CHUNK = 100  # images per simulator seed, so two processes can render in parallel
IMAGE_SIZE = 256
ROBUST_SEED = 4000  # simulator seeds of the detector's extra photos (never held out)
ROBUST_IMAGES = 800
ROBUST_SIZES = (128, 192, 256, 384, 512, 640)  # photo sizes, scaled to IMAGE_SIZE
# Issue 25: photos of the training renderer at every size of the evaluation strata, through
# models/randomize.py (shadows, residue, lighting, blur, noise, JPEG), for the detector and
# the graders alike. Their own seeds: never a held-out, strata or evaluation-family seed.
RANDOMIZED_SEED = 9000
RANDOMIZED_SIZES = (96, 128, 160, 192, 256, 384, 512, 640)
GRADER_SIZE = 48
BOX_JITTER = 0.06  # std of each box edge shift, as a fraction of the box side


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _render_chunk(args: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    from farm_platform_dev.simulate import render_training_images

    seed, count = args
    out = []
    for sim in render_training_images(seed, count, image_size=IMAGE_SIZE):
        boxes = np.array([[lf.x0, lf.y0, lf.x1, lf.y1] for lf in sim.leaves], np.float32)
        grades = np.array([lf.grades for lf in sim.leaves], np.int64)
        out.append((decode_png(sim.png), boxes.reshape(-1, 4), grades.reshape(-1, 5)))
    return out


# Photos drawn at other sizes (`render_sized_set`): random stream tag, sizes, share of photos
# with every leaf at one severity, and whether they go through models/randomize.py.
SIZED_SETS = {
    "robust": (0x5CA1E, ROBUST_SIZES, 0.5, False),
    "randomized": (0xD0A1, RANDOMIZED_SIZES, 0.3, True),
}


def _render_sized_chunk(
    args: tuple[str, int, int, int],
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    from farm_platform.ml.inference import scale_for_detector
    from farm_platform_dev.simulate import MAX_GRADE, MAX_LEAVES

    kind, seed, start, count = args
    tag, sizes, one_severity, randomized = SIZED_SETS[kind]
    out = []
    for i in range(start, start + count):
        rng = np.random.default_rng((seed, tag, i))
        size = int(rng.choice(sizes))
        severity = int(rng.integers(0, MAX_GRADE + 1)) if rng.random() < one_severity else None
        pixels, boxes, grades = render_photo(
            rng, int(rng.integers(0, MAX_LEAVES + 1)), size, severity
        )
        if randomized:
            if rng.random() < 0.4:
                pixels, boxes, kept = randomize.zoom(rng, pixels, boxes)
                grades = grades[kept]
            pixels = randomize.randomize_photo(rng, pixels)
        side = pixels.shape[0]
        scaled = scale_for_detector([pixels], IMAGE_SIZE)[0]
        out.append((scaled, (boxes * (IMAGE_SIZE / side)).astype(np.float32), grades))
    return out


def render_sized_set(kind: str, seed: int, count: int) -> tuple[np.ndarray, list, list]:
    """Photos rendered at other sizes and scaled to IMAGE_SIZE (boxes too) as inference
    does. "robust" (v2's detector): ROBUST_SIZES, half with every leaf at one severity grade
    0..3 (`eval_photos.render_photo`). "randomized" (issue 25): RANDOMIZED_SIZES, each photo
    through models/randomize.py at its own size, for the detector and the graders."""
    jobs = [(kind, seed, s, min(CHUNK, count - s)) for s in range(0, count, CHUNK)]
    return _render_in_two_processes(_render_sized_chunk, jobs)


def render_training_set(seed: int, count: int) -> tuple[np.ndarray, list, list]:
    jobs = [(seed + i, min(CHUNK, count - i * CHUNK)) for i in range(math.ceil(count / CHUNK))]
    return _render_in_two_processes(_render_chunk, jobs)


def _render_in_two_processes(
    render_chunk: Callable[[Any], list[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    jobs: Sequence[Any],
) -> tuple[np.ndarray, list, list]:
    images, boxes, grades = [], [], []
    with ProcessPoolExecutor(max_workers=2) as pool:
        for chunk in pool.map(render_chunk, jobs):
            for image, b, g in chunk:
                images.append(image)
                boxes.append(b)
                grades.append(g)
    return np.stack(images), boxes, grades


def _dihedral_boxes(
    boxes: np.ndarray, flip_x: bool, flip_y: bool, transpose: bool, size: int
) -> np.ndarray:
    b = boxes.copy()
    if transpose:
        b = b[:, [1, 0, 3, 2]]
    if flip_x:
        b[:, [0, 2]] = size - b[:, [2, 0]]
    if flip_y:
        b[:, [1, 3]] = size - b[:, [3, 1]]
    return b


def _dihedral_images(x: torch.Tensor, flip_x: bool, flip_y: bool, transpose: bool) -> torch.Tensor:
    # Same order as _dihedral_boxes: transpose first, then the flips.
    if transpose:
        x = x.transpose(2, 3)
    if flip_x:
        x = x.flip(3)
    if flip_y:
        x = x.flip(2)
    return x


def grader_crops(
    images: np.ndarray,
    boxes: list[np.ndarray],
    grades: list[np.ndarray],
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One crop per leaf, resized; with `rng`, box edges are jittered (so graders tolerate
    detector boxes) except for a third of the leaves which keep their true box."""
    crops, labels = [], []
    for image, bxs, gs in zip(images, boxes, grades, strict=True):
        for box, g in zip(bxs, gs, strict=True):
            b = box
            if rng is not None and rng.random() > 1 / 3:
                w, h = box[2] - box[0], box[3] - box[1]
                shift = np.clip(rng.normal(0, BOX_JITTER, 4), -2.5 * BOX_JITTER, 2.5 * BOX_JITTER)
                b = box + shift * np.array([w, h, w, h])
            crops.append(resize_crop(cut_crop(image, b), (GRADER_SIZE, GRADER_SIZE)))
            labels.append(g)
    return np.stack(crops), np.stack(labels)


@dataclass
class TrainingPhotos:
    """The photos of one training run: the graders' (and the detector's, plus its extra
    ones), the held-out set, and how they were drawn (every card's `training`)."""

    images: np.ndarray
    boxes: list
    grades: list
    detector_images: np.ndarray
    detector_boxes: list
    heldout: Any
    description: dict[str, Any]
    render_seconds: float


def training_photos(
    args: argparse.Namespace, targets: Sequence[str], side_by_side: bool
) -> TrainingPhotos:
    t0 = time.perf_counter()
    log(
        f"rendering {args.train_images} training images (seeds {TRAIN_SEED}..) "
        f"and {args.heldout_images} held-out images (seed {HELDOUT_SEED})"
    )
    images, boxes, grades = render_training_set(TRAIN_SEED, args.train_images)
    detector_images, detector_boxes = images, boxes
    if DETECTOR_MODEL_ID in targets and args.robust_images > 0:
        extra_images, extra_boxes, _ = render_sized_set("robust", ROBUST_SEED, args.robust_images)
        detector_images = np.concatenate([images, extra_images])
        detector_boxes = boxes + extra_boxes
    if args.randomized_images > 0:
        extra_images, extra_boxes, extra_grades = render_sized_set(
            "randomized", RANDOMIZED_SEED, args.randomized_images
        )
        images = np.concatenate([images, extra_images])
        boxes, grades = boxes + extra_boxes, grades + extra_grades
        detector_images = np.concatenate([detector_images, extra_images])
        detector_boxes = detector_boxes + extra_boxes
    heldout = render(HELDOUT_SEED, args.heldout_images)
    render_seconds = time.perf_counter() - t0
    description = training_description(args, len(images), boxes, side_by_side)
    log(f"data ready: {description['train_leaves']} training leaves ({render_seconds:.0f} s)")
    return TrainingPhotos(
        images,
        boxes,
        grades,
        detector_images,
        detector_boxes,
        heldout,
        description,
        render_seconds,
    )


def training_description(
    args: argparse.Namespace, photos: int, boxes: list, side_by_side: bool
) -> dict[str, Any]:
    """How the photos were drawn, for every new card's `training`."""
    n_chunks = math.ceil(args.train_images / CHUNK)
    data = {
        "simulator": "farm_platform_dev.simulate.render_training_images",
        "simulator_source_sha256": simulator_fingerprint(),
        "train_seeds": list(range(TRAIN_SEED, TRAIN_SEED + n_chunks)),
        "images_per_seed": CHUNK,
        "train_images": int(photos),
        "train_leaves": int(sum(len(b) for b in boxes)),
        "heldout_seed": HELDOUT_SEED,
        "heldout_images": args.heldout_images,
        "image_size": IMAGE_SIZE,
        "torch_seed": args.seed,
        "device": f"cpu, {args.threads} threads"
        + (" (detector and graders side by side, 1 each)" if side_by_side else ""),
    }
    if args.randomized_images > 0:
        data["randomized_images"] = {
            "count": args.randomized_images,
            "seed": RANDOMIZED_SEED,
            "sizes": list(RANDOMIZED_SIZES),
            "severity": "30 % with every leaf at one grade 0..3, the rest at random",
            "factors": randomize.FACTORS,
            "how": "randomized at the photo's size, then scaled to image_size as inference "
            "does; detector and graders (crops of the scaled photo)",
        }
    return data
