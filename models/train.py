"""Train the leaf detector and the five disease graders on simulator images (CPU only).

    python models/train.py [--only leaf_detector|disease_3_grader|graders|all] [--seed N]
                           [--version v1] [--threads 2] [--no-activate] [--out DIR]
                           [--robust-images 800 | --plain-detector]
                           [--randomized-images 1600] [--detector-epochs N]
    python models/train.py --coco ANNOTATIONS.json --grades GRADES.csv|GRADE_FOLDERS
                           --out DIR [--version t1] [--detector-epochs N] [--grader-epochs N]

With --coco / --grades the architectures train on a team's labelled data instead of the
simulator (models/train_labelled.py says how).

Writes `models/<model_id>/<version>/{weights.pt,card.json}` (card with sha256, training
description and held-out metrics) and makes the new versions active in `registry.json`.
With `--out DIR` the folders go to `DIR/<model_id>/<version>/` instead, to be registered
with `farm-platform models add DIR/<model_id>/<version>`.
Training and held-out images come from different simulator seeds.

The detector (from v2) also trains on `--robust-images` photos rendered at other sizes
(128 to 640 px, scaled to its input as inference does, so lesions and spots are larger or
smaller relative to the leaf) and half of them with every leaf at one severity grade, and
every training photo gets sensor noise of a random strength, for 14 epochs.
`--plain-detector` is v1's recipe (the 1,600 photos at 256 px, flips and transposition
only, 10 epochs).
`--randomized-images 1600 --detector-epochs 12` is issue 25's robust recipe (the detector
v3): as many more
photos drawn at 96 to 640 px and passed through `models/randomize.py` (shadows, residue,
lighting, blur, noise, JPEG, zoom), for the detector and the graders.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import evaluate  # models/evaluate.py, beside this script (its folder is on sys.path)
import numpy as np
import randomize  # models/randomize.py
import torch
import torch.nn.functional as F

from farm_platform.config import REPO_MODELS_DIR as MODELS_DIR
from farm_platform.ml.architectures import DiseaseGrader, LeafDetector
from farm_platform.ml.inference import cut_crop, decode_png, resize_crop
from farm_platform.ml.registry import (
    DETECTOR_MODEL_ID,
    DISEASE_TYPES,
    ModelCard,
    ModelRegistry,
    grader_model_id,
    sha256_file,
    write_json_atomic,
)

# Readable names the report shows beside disease_k: what the simulator draws for each
# (farm_platform_dev/simulate/render.py).
DISEASE_NAMES = {
    "disease_0": "brown spot",
    "disease_1": "yellow blotch",
    "disease_2": "powdery mildew",
    "disease_3": "vein streak",
    "disease_4": "tip blight",
}

TRAIN_SEED = 1000  # simulator seeds TRAIN_SEED .. TRAIN_SEED + chunks - 1
TRAIN_IMAGES = 1600
CHUNK = 100  # images per simulator seed, so two processes can render in parallel
HELDOUT_SEED = evaluate.HELDOUT_SEED
HELDOUT_IMAGES = 300
IMAGE_SIZE = 256

DETECTOR_KWARGS = {
    "width": 24,
    "input_size": IMAGE_SIZE,
    "max_detections": 20,
    "score_threshold": 0.3,
    "size_scale": 64.0,
}
DETECTOR_EPOCHS = 14  # v2; v1 (--plain-detector) had 10
PLAIN_DETECTOR_EPOCHS = 10
DETECTOR_BATCH = 16
DETECTOR_LR = 3e-3
ROBUST_SEED = 4000  # simulator seeds of the detector's extra photos (never held out)
ROBUST_IMAGES = 800
ROBUST_SIZES = (128, 192, 256, 384, 512, 640)  # photo sizes, scaled to IMAGE_SIZE
NOISE_MAX = 8.0  # sensor noise std per training photo ~ U(0, NOISE_MAX) grey levels
GAIN_STD = 0.08  # per-photo, per-channel gain ~ N(1, GAIN_STD)

# Issue 25: photos of the training renderer at every size of the evaluation strata, through
# models/randomize.py (shadows, residue, lighting, blur, noise, JPEG), for the detector and
# the graders alike. Their own seeds: never a held-out, strata or evaluation-family seed.
RANDOMIZED_SEED = 9000
RANDOMIZED_SIZES = (96, 128, 160, 192, 256, 384, 512, 640)

GRADER_SIZE = 48
GRADER_KWARGS = {"input_size": GRADER_SIZE, "num_grades": 4, "width": 16}
GRADER_EPOCHS = 16
GRADER_BATCH = 128
GRADER_LR = 3e-3
BOX_JITTER = 0.06  # std of each box edge shift, as a fraction of the box side


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------
# Data


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
        pixels, boxes, grades = evaluate.render_photo(
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
    0..3 (`evaluate.render_photo`). "randomized" (issue 25): RANDOMIZED_SIZES, each photo
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


# ---------------------------------------------------------------------------------------
# Detector


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


def detector_targets(
    boxes_per_image: Sequence[np.ndarray], out: int, stride: int, size_scale: float
) -> tuple[torch.Tensor, ...]:
    n = len(boxes_per_image)
    heat = np.zeros((n, 1, out, out), np.float32)
    size = np.zeros((n, 2, out, out), np.float32)
    offset = np.zeros((n, 2, out, out), np.float32)
    mask = np.zeros((n, 1, out, out), np.float32)
    grid = np.arange(out, dtype=np.float32)
    for i, boxes in enumerate(boxes_per_image):
        for x0, y0, x1, y1 in boxes:
            cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
            ix, iy = min(int(cx), out - 1), min(int(cy), out - 1)
            w, h = (x1 - x0) / stride, (y1 - y0) / stride
            # Gaussian as wide as a fraction of the box: a shifted peak still overlaps well.
            sx, sy = max(0.6, w / 6), max(0.6, h / 6)
            g = np.exp(
                -((grid[None, :] - ix) ** 2) / (2 * sx * sx)
                - ((grid[:, None] - iy) ** 2) / (2 * sy * sy)
            )
            np.maximum(heat[i, 0], g, out=heat[i, 0])
            heat[i, 0, iy, ix] = 1.0
            size[i, :, iy, ix] = ((x1 - x0) / size_scale, (y1 - y0) / size_scale)
            offset[i, :, iy, ix] = (cx - ix, cy - iy)
            mask[i, 0, iy, ix] = 1.0
    return tuple(torch.from_numpy(a) for a in (heat, size, offset, mask))


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * neg
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def train_detector(
    images: np.ndarray,
    boxes: list[np.ndarray],
    seed: int,
    noise: bool = True,
    epochs: int = DETECTOR_EPOCHS,
) -> tuple[LeafDetector, dict]:
    torch.manual_seed(seed)
    model = LeafDetector(**DETECTOR_KWARGS).to(memory_format=torch.channels_last)
    model.train()
    n = len(images)
    steps = epochs * math.ceil(n / DETECTOR_BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=DETECTOR_LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, DETECTOR_LR, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    out = IMAGE_SIZE // model.stride
    started = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        total = 0.0
        for start in range(0, n, DETECTOR_BATCH):
            idx = order[start : start + DETECTOR_BATCH]
            fx, fy, tr = (bool(b) for b in torch.randint(0, 2, (3,), generator=gen).tolist())
            x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float().div_(255.0)
            x = _dihedral_images(x, fx, fy, tr)
            if noise:
                gain = 1 + GAIN_STD * torch.randn(len(idx), 3, 1, 1, generator=gen)
                std = torch.rand(len(idx), 1, 1, 1, generator=gen) * (NOISE_MAX / 255.0)
                grain = torch.randn(x.shape, generator=gen) * std
                x = (x * gain + grain).clamp_(0, 1)
            x = x.contiguous(memory_format=torch.channels_last)
            bxs = [_dihedral_boxes(boxes[i], fx, fy, tr, IMAGE_SIZE) for i in idx]
            heat_t, size_t, off_t, mask_t = detector_targets(
                bxs, out, model.stride, model.size_scale
            )
            heat, size, off = model(x)
            npos = mask_t.sum().clamp(min=1)
            loss = (
                focal_loss(heat, heat_t)
                + 2.0 * (F.l1_loss(size, size_t, reduction="none") * mask_t).sum() / npos
                + (F.l1_loss(off, off_t, reduction="none") * mask_t).sum() / npos
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log(
            f"detector epoch {epoch + 1}/{epochs} loss {total / n:.4f} "
            f"({time.perf_counter() - started:.0f} s)"
        )
    model.eval()
    return model, {
        "epochs": epochs,
        "batch_size": DETECTOR_BATCH,
        "lr": DETECTOR_LR,
        "seconds": round(time.perf_counter() - started, 1),
        "augmentation": "random flips and transposition (8 symmetries)"
        + (
            f"; per photo gain ~ N(1, {GAIN_STD}) per channel and sensor noise of std "
            f"~ U(0, {NOISE_MAX}) grey levels"
            if noise
            else ""
        ),
    }


def _train_detector_job(
    images: np.ndarray, boxes: list[np.ndarray], seed: int, noise: bool, epochs: int
) -> tuple[dict[str, torch.Tensor], dict]:
    # Runs in a child process beside the grader training (see main).
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model, info = train_detector(images, boxes, seed, noise, epochs)
    return {k: v.contiguous() for k, v in model.state_dict().items()}, info


# ---------------------------------------------------------------------------------------
# Graders


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


def train_graders(
    images: np.ndarray,
    boxes: list[np.ndarray],
    grades: list[np.ndarray],
    diseases: Sequence[str],
    seed: int,
) -> tuple[dict[str, DiseaseGrader], dict]:
    # The five graders see the same batches in one loop: the crops are prepared once.
    models, opts, scheds = {}, {}, {}
    n = int(sum(len(b) for b in boxes))
    steps = GRADER_EPOCHS * math.ceil(n / GRADER_BATCH)
    for disease in diseases:
        torch.manual_seed(seed + DISEASE_TYPES.index(disease))
        model = DiseaseGrader(**GRADER_KWARGS).to(memory_format=torch.channels_last)
        model.train()
        models[disease] = model
        opts[disease] = torch.optim.AdamW(model.parameters(), lr=GRADER_LR, weight_decay=1e-4)
        scheds[disease] = torch.optim.lr_scheduler.OneCycleLR(
            opts[disease], GRADER_LR, total_steps=steps, pct_start=0.15
        )
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for epoch in range(GRADER_EPOCHS):
        # Fresh box jitter every epoch: more variety than a fixed set of jittered crops.
        crops, labels = grader_crops(images, boxes, grades, rng)
        x_all = torch.from_numpy(crops).permute(0, 3, 1, 2)
        y_all = torch.from_numpy(labels)
        order = torch.randperm(n, generator=gen)
        totals = dict.fromkeys(diseases, 0.0)
        correct = dict.fromkeys(diseases, 0)
        for start in range(0, n, GRADER_BATCH):
            idx = order[start : start + GRADER_BATCH]
            fx, fy, tr = (bool(b) for b in torch.randint(0, 2, (3,), generator=gen).tolist())
            x = _dihedral_images(x_all[idx].float().div_(255.0), fx, fy, tr)
            # Mild per-sample brightness / colour changes on top of the simulator's lighting.
            gain = 1 + 0.08 * torch.randn(len(idx), 3, 1, 1, generator=gen)
            x = (x * gain).clamp_(0, 1).contiguous(memory_format=torch.channels_last)
            y = y_all[idx]
            for disease in diseases:
                k = DISEASE_TYPES.index(disease)
                logits = models[disease](x)
                loss = F.cross_entropy(logits, y[:, k])
                opts[disease].zero_grad(set_to_none=True)
                loss.backward()
                opts[disease].step()
                scheds[disease].step()
                totals[disease] += loss.item() * len(idx)
                correct[disease] += int((logits.argmax(1) == y[:, k]).sum())
        summary = " ".join(f"{d[-1]}:{totals[d] / n:.3f}/{correct[d] / n:.3f}" for d in diseases)
        log(
            f"graders epoch {epoch + 1}/{GRADER_EPOCHS} loss/acc {summary} "
            f"({time.perf_counter() - started:.0f} s)"
        )
    for model in models.values():
        model.eval()
    info = {
        "epochs": GRADER_EPOCHS,
        "batch_size": GRADER_BATCH,
        "lr": GRADER_LR,
        "seconds_all_graders": round(time.perf_counter() - started, 1),
        "crops": int(n),
        "box_jitter_std": BOX_JITTER,
        "jitter": "2/3 of the crops per epoch, each box edge ~ N(0, std * side), fresh each epoch",
        "augmentation": "flips and transposition, per-channel gain ~ N(1, 0.08)",
    }
    return models, info


# ---------------------------------------------------------------------------------------
# Writing


def write_model(
    model: torch.nn.Module, card: dict[str, Any], version: str, models_dir: Path = MODELS_DIR
) -> ModelCard:
    folder = models_dir / card["id"] / version
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / card["weights"]
    # Plain state_dict, loaded with weights_only=True.
    torch.save({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, weights)
    card["sha256"] = sha256_file(weights)
    card_path = folder / "card.json"
    write_json_atomic(card_path, card)
    return ModelCard.from_file(card_path)


def base_card(
    model_id: str,
    version: str,
    task: str,
    disease: str | None,
    architecture: str,
    kwargs: dict,
    input_size: list[int],
) -> dict[str, Any]:
    return {
        "id": model_id,
        "version": version,
        "task": task,
        "disease_type": disease,
        **({"disease_name": DISEASE_NAMES[disease]} if disease else {}),
        "grades": [0, 1, 2, 3] if task == "disease_grader" else None,
        "input_size": input_size,
        "architecture": architecture,
        "architecture_kwargs": kwargs,
        "weights": "weights.pt",
        "sha256": "0" * 64,
        "training": {},
        "metrics": {},
        "created_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="all", help="all | leaf_detector | graders | disease_<k>_grader"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the training run")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES)
    parser.add_argument("--heldout-images", type=int, default=HELDOUT_IMAGES)
    parser.add_argument(
        "--threads",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="CPU threads (with 2+ and all models, detector and graders train side by side)",
    )
    parser.add_argument(
        "--no-activate",
        action="store_true",
        help="write the model files without switching registry.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write <model_id>/<version>/ here (not activated), for `farm-platform models add`",
    )
    parser.add_argument(
        "--robust-images",
        type=int,
        default=ROBUST_IMAGES,
        help="the detector's extra photos at other sizes and severities (seed 4000)",
    )
    parser.add_argument(
        "--randomized-images",
        type=int,
        default=0,
        help=f"photos through models/randomize.py (seed {RANDOMIZED_SEED}, sizes "
        f"{RANDOMIZED_SIZES[0]}-{RANDOMIZED_SIZES[-1]} px) for the detector and the graders "
        "(issue 25's robust recipe: 1600)",
    )
    parser.add_argument(
        "--plain-detector",
        action="store_true",
        help="v1's detector recipe: no extra photos, no noise or gain",
    )
    parser.add_argument(
        "--detector-epochs",
        type=int,
        default=None,
        help=f"default {DETECTOR_EPOCHS} ({PLAIN_DETECTOR_EPOCHS} with --plain-detector)",
    )
    import train_labelled  # models/train_labelled.py; it imports this module

    train_labelled.add_arguments(parser)
    args = parser.parse_args(argv)
    if train_labelled.labelled(args):
        args.detector_epochs = args.detector_epochs or DETECTOR_EPOCHS
        return train_labelled.train_from_datasets(args)
    if args.plain_detector:
        args.robust_images = 0
    if args.detector_epochs is None:
        args.detector_epochs = PLAIN_DETECTOR_EPOCHS if args.plain_detector else DETECTOR_EPOCHS
    grader_ids = [grader_model_id(d) for d in DISEASE_TYPES]
    if args.only == "all":
        targets = [DETECTOR_MODEL_ID, *grader_ids]
    elif args.only == "graders":
        targets = grader_ids
    elif args.only in (DETECTOR_MODEL_ID, *grader_ids):
        targets = [args.only]
    else:
        parser.error(
            f"--only {args.only!r}: expected all, graders, leaf_detector or disease_<k>_grader"
        )

    # On 2 shared cores one process with 2 intra-op threads trains ~3x slower than 1 thread
    # (threads wait for each other whenever another process holds a core), so with 2 cores
    # the detector trains in a child process while this one trains the graders, 1 thread each.
    side_by_side = args.threads >= 2 and DETECTOR_MODEL_ID in targets and len(targets) > 1
    torch.set_num_threads(1 if side_by_side else args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
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
    heldout = evaluate.render(HELDOUT_SEED, args.heldout_images)
    render_seconds = time.perf_counter() - t0
    n_chunks = math.ceil(args.train_images / CHUNK)
    data = {
        "simulator": "farm_platform_dev.simulate.render_training_images",
        "simulator_source_sha256": evaluate.simulator_fingerprint(),
        "train_seeds": list(range(TRAIN_SEED, TRAIN_SEED + n_chunks)),
        "images_per_seed": CHUNK,
        "train_images": int(len(images)),
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
    log(f"data ready: {data['train_leaves']} training leaves ({render_seconds:.0f} s)")

    registry = ModelRegistry(MODELS_DIR)
    written: dict[str, tuple[torch.nn.Module, dict]] = {}
    detector_job = None
    detector_result: tuple[LeafDetector, dict] | None = None
    pool = ProcessPoolExecutor(max_workers=1) if side_by_side else None
    if pool is not None:
        detector_job = pool.submit(
            _train_detector_job,
            detector_images,
            detector_boxes,
            args.seed,
            not args.plain_detector,
            args.detector_epochs,
        )
    elif DETECTOR_MODEL_ID in targets:
        detector_result = train_detector(
            detector_images,
            detector_boxes,
            args.seed,
            not args.plain_detector,
            args.detector_epochs,
        )
    diseases = [d for d in DISEASE_TYPES if grader_model_id(d) in targets]
    if diseases:
        t = time.perf_counter()
        _, labels = grader_crops(images, boxes, grades, None)
        log(
            f"{len(labels)} leaves for the graders ({time.perf_counter() - t:.0f} s); grade counts "
            + " ".join(
                f"{d[-1]}:{np.bincount(labels[:, k], minlength=4).tolist()}"
                for k, d in enumerate(DISEASE_TYPES)
            )
        )
        graders, info = train_graders(images, boxes, grades, diseases, args.seed)
        for disease, model in graders.items():
            card = base_card(
                grader_model_id(disease),
                args.version,
                "disease_grader",
                disease,
                "farm_platform.ml.architectures:DiseaseGrader",
                GRADER_KWARGS,
                [GRADER_SIZE, GRADER_SIZE],
            )
            card["training"] = {**data, **info}
            written[grader_model_id(disease)] = (model, card)

    if detector_job is not None and pool is not None:
        state, info = detector_job.result()
        pool.shutdown()
        model = LeafDetector(**DETECTOR_KWARGS)
        model.load_state_dict(state)
        detector_result = (model.eval(), info)
    if DETECTOR_MODEL_ID in targets:
        card = base_card(
            DETECTOR_MODEL_ID,
            args.version,
            "leaf_detector",
            None,
            "farm_platform.ml.architectures:LeafDetector",
            DETECTOR_KWARGS,
            [IMAGE_SIZE, IMAGE_SIZE],
        )
        assert detector_result is not None
        card["training"] = {**data, **detector_result[1]}
        if args.robust_images > 0:
            card["training"]["robust_images"] = {
                "count": args.robust_images,
                "seed": ROBUST_SEED,
                "sizes": list(ROBUST_SIZES),
                "severity": "half with every leaf at one grade 0..3, half graded at random",
                "how": "rendered at the size, scaled to image_size as inference does",
            }
        written[DETECTOR_MODEL_ID] = (detector_result[0], card)

    # Held-out metrics of the new models (with the active detector for graders trained alone).
    from farm_platform.ml.inference import detect_leaves

    if DETECTOR_MODEL_ID in written:
        detector = written[DETECTOR_MODEL_ID][0]
    else:
        from farm_platform.ml.inference import load_detector

        detector = load_detector(registry.detector())
    detections = detect_leaves(heldout.images, detector)
    det_metrics, matches = evaluate.detector_metrics(detections, heldout)
    grader_models = {
        d: (
            written[grader_model_id(d)][0],
            ModelCard.from_json({**written[grader_model_id(d)][1], "sha256": "0" * 64}),
        )
        for d in diseases
    }
    g_metrics = evaluate.grader_metrics(grader_models, heldout, detections, matches)
    if DETECTOR_MODEL_ID in written:
        written[DETECTOR_MODEL_ID][1]["metrics"] = {"heldout": det_metrics}
    for disease in diseases:
        written[grader_model_id(disease)][1]["metrics"] = {"heldout": g_metrics[disease]}
    evaluate.print_report({"detector": det_metrics, "graders": g_metrics})

    total = round(time.perf_counter() - t0, 1)
    out_dir = args.out or MODELS_DIR
    for model_id, (model, card) in written.items():
        card["training"]["total_run_seconds"] = total
        card["training"]["render_seconds"] = round(render_seconds, 1)
        written_card = write_model(model, card, args.version, out_dir)
        size = (out_dir / model_id / args.version / written_card.weights).stat().st_size
        log(f"wrote {model_id} {args.version}: {size / 1024:.0f} KiB, sha256 {written_card.sha256}")
        if args.out is None and not args.no_activate:
            if not registry.registry_path.exists():
                write_json_atomic(registry.registry_path, {"active": {}})
            registry.set_active(model_id, args.version)
    log(f"done in {total:.0f} s; registry: {json.dumps(registry.active_versions())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
