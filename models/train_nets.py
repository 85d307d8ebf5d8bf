"""The two trainings of `models/train.py`: the leaf detector (its targets and focal loss,
sensor noise and gain on every photo) and the five disease graders side by side."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from train_data import (
    BOX_JITTER,
    GRADER_SIZE,
    IMAGE_SIZE,
    _dihedral_boxes,
    _dihedral_images,
    grader_crops,
    log,
)

from farm_platform.ml.architectures import DiseaseGrader, LeafDetector
from farm_platform.ml.registry import (
    DISEASE_TYPES,
)

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
NOISE_MAX = 8.0  # sensor noise std per training photo ~ U(0, NOISE_MAX) grey levels
GAIN_STD = 0.08  # per-photo, per-channel gain ~ N(1, GAIN_STD)
GRADER_KWARGS = {"input_size": GRADER_SIZE, "num_grades": 4, "width": 16}
GRADER_EPOCHS = 16
GRADER_BATCH = 128
GRADER_LR = 3e-3


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
