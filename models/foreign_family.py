"""Models of families this project did not write, brought as a team would (issue 42, part 6).

    python models/foreign_family.py --out DIR [--photos 100] [--seed 0]

writes three version folders for `farm-platform models add`:

- `DIR/leaf_detector/f1/` (ONNX) and `DIR/leaf_detector/f2/` (TorchScript): a single-stage,
  anchor-free detector of a few convolutions (`CellDetector`) whose output is raw per-cell
  predictions, (N, cells, 5) = box centre x, y, width, height in input pixels and a leaf
  logit, at 128 x 128 px with its own normalisation; the platform applies the threshold and
  NMS (card: "form": "raw", "box_format": "cxcywh", "scores": "logits").
- `DIR/disease_0_grader/f1/` (ONNX): a small grader (`CropGrader`) trained with its classes
  in another order (`LABEL_MAP`: class i is grade LABEL_MAP[i]), fed NHWC BGR pixels, giving
  probabilities; the card's label map turns its classes into grades.

Both train for seconds on the project's training renderer (`--photos` photos, the training
seeds of models/train.py): a worked example of the export path, not a better model.
The files are small (13 to 55 KB). `models/examples/foreign_family/` holds them as this
script wrote them (`--out models/examples/foreign_family`, the defaults); the ONNX files
come out byte for byte the same on a re-run, the TorchScript archive's bytes differ (its
weights do not).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import train_data  # models/train_data.py
import train_nets  # models/train_nets.py
from torch import nn

from farm_platform.ml.inference import cut_crop, resize_crop, scale_for_detector
from farm_platform.ml.registry import sha256_file
from farm_platform_dev.model_export import export_model

DETECTOR_SIZE = 128
STRIDE = 4
SIZE_SCALE = 16.0  # widths and heights in units of 16 input pixels
GRADER_SIZE = 32
DISEASE = "disease_0"
LABEL_MAP = [2, 0, 3, 1]  # the grader's class i is grade LABEL_MAP[i]
DETECTOR_INPUT = {"resize": "stretch", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3}
DETECTOR_OUTPUT = {
    "form": "raw",
    "box_format": "cxcywh",
    "scores": "logits",
    "score_threshold": 0.3,
    "iou_threshold": 0.4,
    "max_detections": 20,
}
GRADER_INPUT = {"layout": "NHWC", "channel_order": "BGR", "scale": 1 / 255}
GRADER_OUTPUT = {"form": "probabilities", "label_map": LABEL_MAP}


def _convs(*widths: int, strides: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for (w_in, w_out), stride in zip(zip(widths, widths[1:], strict=False), strides, strict=True):
        layers += [nn.Conv2d(w_in, w_out, 3, stride, 1), nn.BatchNorm2d(w_out), nn.ReLU()]
    return nn.Sequential(*layers)


class CellDetector(nn.Module):
    """Each cell of a stride-4 grid predicts a leaf logit, its centre's offset in the cell
    and the box's size; `forward` decodes them to raw per-cell boxes (no NMS)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = _convs(3, width, width, width, strides=(2, 2, 1))
        self.head = nn.Conv2d(width, 5, 1)
        cells = DETECTOR_SIZE // STRIDE
        y, x = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        self.register_buffer("grid", torch.stack([x, y]).float().reshape(1, 2, -1), False)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.head(self.body(x))
        return out[:, :1], out[:, 1:3], out[:, 3:]  # leaf logit, size, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit, size, offset = self.heads(x)
        n = x.shape[0]
        centre = (self.grid + offset.reshape(n, 2, -1)) * STRIDE
        wh = size.reshape(n, 2, -1).clamp(min=0) * SIZE_SCALE
        return torch.cat([centre, wh, logit.reshape(n, 1, -1)], dim=1).transpose(1, 2)


class CropGrader(nn.Module):
    """Takes NHWC BGR pixels 0..255 (as its card declares after scaling by 1/255) and gives
    probabilities over its 4 classes."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = _convs(3, width, width, strides=(2, 2))
        self.head = nn.Linear(width, len(LABEL_MAP))

    def logits(self, rgb: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) RGB in [0, 1]
        return self.head(self.body(rgb).mean(dim=(2, 3)))

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(bgr.permute(0, 3, 1, 2).flip(1)), dim=1)


def _fit(model: nn.Module, batches: Any, epochs: int, steps: int, lr: float = 5e-3) -> float:
    """AdamW with a one-cycle schedule over `batches(epoch)` -> loss; the last epoch's loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps)
    model.train()
    total = 0.0
    for epoch in range(epochs):
        total = 0.0
        for loss in batches(epoch):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
    model.eval()
    return total / steps


def train_detector(photos: np.ndarray, boxes: list[np.ndarray], seed: int, epochs: int):
    torch.manual_seed(seed)
    model = CellDetector()
    scaled = scale_for_detector(list(photos), DETECTOR_SIZE)
    factor = DETECTOR_SIZE / photos.shape[1]
    boxes = [b * factor for b in boxes]
    gen = torch.Generator().manual_seed(seed)
    batch, cells = 16, DETECTOR_SIZE // STRIDE

    def batches(epoch: int):
        for idx in torch.randperm(len(scaled), generator=gen).split(batch):
            flips = [bool(b) for b in torch.randint(0, 2, (3,), generator=gen).tolist()]
            x = torch.from_numpy(scaled[idx.numpy()]).permute(0, 3, 1, 2).float()
            x = (train_data._dihedral_images(x, *flips) / 255.0 - 0.5) / 0.25
            bxs = [
                train_data._dihedral_boxes(boxes[i], *flips, DETECTOR_SIZE) for i in idx.tolist()
            ]
            heat_t, size_t, off_t, mask_t = train_nets.detector_targets(
                bxs, cells, STRIDE, SIZE_SCALE
            )
            heat, size, off = model.heads(x)
            npos = mask_t.sum().clamp(min=1)
            l1 = F.l1_loss(size, size_t, reduction="none") + F.l1_loss(off, off_t, reduction="none")
            yield train_nets.focal_loss(heat, heat_t) + (l1 * mask_t).sum() / npos

    loss = _fit(model, batches, epochs, math.ceil(len(scaled) / batch))
    return model, {"epochs": epochs, "photos": len(scaled), "final_loss": round(loss, 4)}


def grader_crops(photos, boxes, grades) -> tuple[np.ndarray, np.ndarray]:
    """True-box crops of DISEASE's leaves at GRADER_SIZE and each one's class (not grade)."""
    k = int(DISEASE[-1])
    crops, classes = [], []
    for photo, bxs, gs in zip(photos, boxes, grades, strict=True):
        for box, g in zip(bxs, gs, strict=True):
            crops.append(resize_crop(cut_crop(photo, box), (GRADER_SIZE, GRADER_SIZE)))
            classes.append(LABEL_MAP.index(int(g[k])))
    return np.stack(crops), np.array(classes, np.int64)


def train_grader(crops: np.ndarray, classes: np.ndarray, seed: int, epochs: int):
    torch.manual_seed(seed)
    model = CropGrader()
    x_all = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    y_all = torch.from_numpy(classes)
    gen = torch.Generator().manual_seed(seed)
    batch = 64

    def batches(epoch: int):
        for idx in torch.randperm(len(y_all), generator=gen).split(batch):
            flips = [bool(b) for b in torch.randint(0, 2, (3,), generator=gen).tolist()]
            x = train_data._dihedral_images(x_all[idx], *flips)
            yield F.cross_entropy(model.logits(x), y_all[idx])

    loss = _fit(model, batches, epochs, math.ceil(len(y_all) / batch))
    return model, {"epochs": epochs, "crops": len(y_all), "final_loss": round(loss, 4)}


def write_version(out: Path, model_id: str, version: str, weights: Path, **card: Any) -> Path:
    """`out/<model_id>/<version>/` with the exported file and its card."""
    folder = out / model_id / version
    folder.mkdir(parents=True)
    weights.rename(folder / weights.name)
    card = {
        "id": model_id,
        "version": version,
        "weights": weights.name,
        "sha256": sha256_file(folder / weights.name),
        "metrics": {},
        "created_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        **card,
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder


def make_models(out: Path, photos: int = 100, seed: int = 0) -> dict[str, Path]:
    """Train both models on `photos` training-renderer photos and write the three folders."""
    torch.set_num_threads(1)
    images, boxes, grades = train_data.render_training_set(train_data.TRAIN_SEED, photos)
    data = {"renderer": "farm_platform_dev.simulate.render_training_images", "photos": photos}
    detector, info = train_detector(images, boxes, seed, epochs=30)
    grader, grader_info = train_grader(*grader_crops(images, boxes, grades), seed, epochs=20)
    out.mkdir(parents=True, exist_ok=True)
    common = {"task": "leaf_detector", "disease_type": None, "grades": None}
    detector_card = {
        **common,
        "input_size": [DETECTOR_SIZE] * 2,
        "input": DETECTOR_INPUT,
        "output": DETECTOR_OUTPUT,
        "training": {**data, **info, "family": "CellDetector (models/foreign_family.py)"},
    }
    example = torch.rand(2, 3, DETECTOR_SIZE, DETECTOR_SIZE)
    folders = {}
    for version, name, fmt in (
        ("f1", "detector.onnx", "onnx"),
        ("f2", "detector.pt", "torchscript"),
    ):
        weights = export_model(detector, example, out / name, fmt)
        folders[f"leaf_detector {version}"] = write_version(
            out, "leaf_detector", version, weights, format=fmt, **detector_card
        )
    example = torch.rand(2, GRADER_SIZE, GRADER_SIZE, 3) * 255
    weights = export_model(grader, example, out / "grader.onnx", "onnx")
    folders["disease_0_grader f1"] = write_version(
        out,
        "disease_0_grader",
        "f1",
        weights,
        task="disease_grader",
        disease_type=DISEASE,
        grades=[0, 1, 2, 3],
        input_size=[GRADER_SIZE] * 2,
        format="onnx",
        input=GRADER_INPUT,
        output=GRADER_OUTPUT,
        training={**data, **grader_info, "family": "CropGrader (models/foreign_family.py)"},
    )
    return folders


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder")
    parser.add_argument("--photos", type=int, default=100, help="training-renderer photos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, folder in make_models(args.out, args.photos, args.seed).items():
        print(f"{name}: {folder}  (farm-platform models add {folder})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
