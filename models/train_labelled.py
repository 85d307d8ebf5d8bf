"""Train the project's architectures on a team's labelled data (issue 42, part 5).

    python models/train.py --coco leaves/annotations.json --grades grades/grades.csv \\
        --out incoming --version t1 [--detector-epochs 14] [--grader-epochs 16]

- `--coco`: a COCO detection JSON (farm_platform/ml/datasets.py reads it: the one category,
  or the one named `leaf`; crowd boxes are left out). Photos of any size are scaled to the
  detector's 256 px input as inference scales them, boxes with them; the LeafDetector
  trains on them with models/train.py's recipe.
- `--grades`: a grade CSV or grade folders `ROOT/<disease>/<grade>/`. Each disease named
  (`disease_k` or its readable name) gets a DiseaseGrader trained on its crops (a row with
  box columns is cut from its photo) with flips, transposition and per-channel gain.

The version folders go to `--out DIR/<model_id>/<version>/`; `farm-platform models add`
registers them (it checks the card and evaluates them on the registered datasets) and
`models activate` puts one live through the gate. Nothing is activated here.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import train  # models/train.py (this folder is on sys.path)
import train_data  # models/train_data.py
import train_nets  # models/train_nets.py

from farm_platform.ml.architectures import DiseaseGrader
from farm_platform.ml.datasets import (
    DatasetError,
    DetectionDataset,
    GradeDataset,
    dataset_sha256,
    open_dataset,
    read_coco,
)
from farm_platform.ml.evaluation import read_image
from farm_platform.ml.inference import cut_crop, resize_crop, scale_for_detector
from farm_platform.ml.registry import DETECTOR_MODEL_ID, DISEASE_TYPES, grader_model_id

GRADES = (0, 1, 2, 3)  # the DiseaseGrader's classes


def detector_set(dataset: DetectionDataset) -> tuple[np.ndarray, list[np.ndarray]]:
    """The photos scaled to the detector's input and their leaf boxes (x0, y0, x1, y1)."""
    size = train.IMAGE_SIZE
    boxes: dict[int, list[list[float]]] = {image["id"]: [] for image in dataset.coco["images"]}
    for annotation in dataset.coco["annotations"]:
        if annotation["category_id"] == dataset.category_id and not annotation.get("iscrowd"):
            x, y, w, h = annotation["bbox"]
            boxes[annotation["image_id"]].append([x, y, x + w, y + h])
    photos, scaled_boxes = [], []
    for image in dataset.coco["images"]:
        pixels = read_image(dataset.image_path(image))
        height, width = pixels.shape[:2]
        scale = np.array([size / width, size / height] * 2, np.float32)
        photos.append(scale_for_detector([pixels], size)[0])
        scaled_boxes.append(np.array(boxes[image["id"]], np.float32).reshape(-1, 4) * scale)
    return np.stack(photos), scaled_boxes


def _disease_of(name: str | None, dataset: GradeDataset) -> str:
    by_name = {readable: disease for disease, readable in train.DISEASE_NAMES.items()}
    if name in DISEASE_TYPES:
        return name
    if name in by_name:
        return by_name[name]
    if name is None:
        raise DatasetError(
            f"grades {dataset.path}: a grade folder without a disease level grades any "
            "grader; to train, put the crops in ROOT/<disease>/<grade>/"
        )
    raise DatasetError(
        f"grades {dataset.path}: disease {name!r} is none of {', '.join(DISEASE_TYPES)} "
        f"or their names ({', '.join(train.DISEASE_NAMES.values())})"
    )


def grader_sets(dataset: GradeDataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per disease: crops resized to the grader's input (N, S, S, 3) and their grades."""
    size = (train.GRADER_SIZE, train.GRADER_SIZE)
    crops: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[int]] = {}
    for row in dataset.rows:
        disease = _disease_of(row.disease, dataset)
        if row.grade not in GRADES:
            raise DatasetError(
                f"grades {dataset.path}: {row.path} has grade {row.grade}; the project's "
                f"graders grade {list(GRADES)}"
            )
        image = read_image(row.path)
        crop = np.ascontiguousarray(cut_crop(image, row.box)) if row.box else image
        crops.setdefault(disease, []).append(resize_crop(crop, size))
        labels.setdefault(disease, []).append(row.grade)
    return {d: (np.stack(crops[d]), np.array(labels[d], np.int64)) for d in sorted(crops)}


def train_grader(
    crops: np.ndarray, labels: np.ndarray, seed: int, epochs: int
) -> tuple[DiseaseGrader, dict]:
    """One DiseaseGrader on fixed crops, with models/train.py's batch size and schedule."""
    torch.manual_seed(seed)
    model = DiseaseGrader(**train.GRADER_KWARGS)
    model.train()
    n = len(labels)
    steps = epochs * math.ceil(n / train_nets.GRADER_BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=train_nets.GRADER_LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, train_nets.GRADER_LR, total_steps=steps, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(crops).permute(0, 3, 1, 2), torch.from_numpy(labels)
    started = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(train_nets.GRADER_BATCH):
            flips = (bool(b) for b in torch.randint(0, 2, (3,), generator=gen).tolist())
            x = train_data._dihedral_images(x_all[idx].float().div_(255.0), *flips)
            gain = 1 + 0.08 * torch.randn(len(idx), 3, 1, 1, generator=gen)
            loss = F.cross_entropy(model((x * gain).clamp_(0, 1)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    counts = np.bincount(labels, minlength=len(GRADES)).tolist()
    info = {"epochs": epochs, "crops": n, "grade_counts": counts, "lr": train_nets.GRADER_LR}
    return model, {**info, "seconds": round(time.perf_counter() - started, 1)}


def _dataset_record(dataset: DetectionDataset | GradeDataset) -> dict:
    return {"path": str(dataset.path), "sha256": dataset_sha256(dataset)}


def train_from_datasets(args: argparse.Namespace) -> int:
    """`train.py --coco/--grades`: the version folders under `args.out`; a dataset it
    cannot train on is one line on stderr, and nothing is written."""
    try:
        return _train(args)
    except DatasetError as exc:
        raise SystemExit(f"train.py: {exc}") from None


def _train(args: argparse.Namespace) -> int:
    if args.out is None:
        raise SystemExit(
            "train.py: --coco / --grades write version folders for `farm-platform models add`: "
            "give --out DIR"
        )
    torch.set_num_threads(args.threads)
    written = []
    if args.coco is not None:
        dataset = read_coco(args.coco)
        images, boxes = detector_set(dataset)
        train.log(f"detector: {len(images)} photos, {sum(map(len, boxes))} leaves")
        model, info = train.train_detector(images, boxes, args.seed, True, args.detector_epochs)
        written.append((model, DETECTOR_MODEL_ID, None, dataset, info))
    if args.grades is not None:
        dataset = open_dataset(args.grades)
        if not isinstance(dataset, GradeDataset):
            raise DatasetError(f"--grades {args.grades}: expected a grade .csv or grade folders")
        for disease, (crops, labels) in grader_sets(dataset).items():
            seed = args.seed + DISEASE_TYPES.index(disease)
            model, info = train_grader(crops, labels, seed, args.grader_epochs)
            train.log(f"{disease}: {info['crops']} crops, grades {info['grade_counts']}")
            written.append((model, grader_model_id(disease), disease, dataset, info))
    for model, model_id, disease, dataset, info in written:
        _write(model, model_id, disease, {**info, "dataset": _dataset_record(dataset)}, args)
    return 0


def _write(
    model: torch.nn.Module,
    model_id: str,
    disease: str | None,
    training: dict,
    args: argparse.Namespace,
) -> None:
    detector = disease is None
    card = train.base_card(
        model_id,
        args.version,
        "leaf_detector" if detector else "disease_grader",
        disease,
        "farm_platform.ml.architectures:" + ("LeafDetector" if detector else "DiseaseGrader"),
        train.DETECTOR_KWARGS if detector else train.GRADER_KWARGS,
        [train.IMAGE_SIZE] * 2 if detector else [train.GRADER_SIZE] * 2,
    )
    card["training"] = {**training, "torch_seed": args.seed, "recipe": "models/train.py --coco"}
    train.write_model(model, card, args.version, args.out)
    train.log(f"wrote {model_id} {args.version} to {args.out / model_id / args.version}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coco", type=Path, default=None, help="train the detector on this COCO detection JSON"
    )
    parser.add_argument(
        "--grades",
        type=Path,
        default=None,
        help="train the graders of the diseases in this grade CSV or ROOT/<disease>/<grade>/",
    )
    parser.add_argument(
        "--grader-epochs", type=int, default=train_nets.GRADER_EPOCHS, help="with --grades"
    )


def labelled(args: argparse.Namespace) -> bool:
    return args.coco is not None or args.grades is not None
