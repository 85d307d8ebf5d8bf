"""Held-out evaluation of the active leaf detector and disease graders.

    python models/evaluate.py [--seed 2000] [--count 300] [--json out.json]

Images come from the simulator with a seed that training never uses. Prints detector
precision / recall / F1 at IoU 0.5, and per disease the exact-grade and within-one
accuracy of the grader on crops of DETECTED leaves matched to a true leaf (IoU >= 0.5)
and on crops cut with the TRUE boxes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from farm_platform.ml.inference import (  # noqa: E402
    Detection,
    cut_crop,
    decode_png,
    detect_leaves,
    load_detector,
    load_grader,
    prepare_crops,
)
from farm_platform.ml.registry import DISEASE_TYPES, ModelRegistry  # noqa: E402

HELDOUT_SEED = 2000
HELDOUT_COUNT = 300
IOU_THRESHOLD = 0.5


@dataclass
class Heldout:
    images: list[np.ndarray]
    boxes: list[np.ndarray]  # (n, 4) float per image
    grades: list[np.ndarray]  # (n, 5) int per image
    pngs: list[bytes]


def render(seed: int, count: int) -> Heldout:
    from farm_platform.simulate import render_training_images

    data = Heldout([], [], [], [])
    for sim in render_training_images(seed, count):
        data.pngs.append(sim.png)
        data.images.append(decode_png(sim.png))
        data.boxes.append(
            np.array([[lf.x0, lf.y0, lf.x1, lf.y1] for lf in sim.leaves], np.float64).reshape(-1, 4)
        )
        data.grades.append(np.array([lf.grades for lf in sim.leaves], np.int64).reshape(-1, 5))
    return data


def simulator_fingerprint() -> str:
    """sha256 over the simulator's source: the models are only as valid as the images."""
    import hashlib

    import farm_platform.simulate as simulate

    digest = hashlib.sha256()
    for path in sorted(Path(simulate.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match(pred: np.ndarray, truth: np.ndarray, threshold: float = IOU_THRESHOLD) -> list[int]:
    """Greedy matching, predictions in score order: for each prediction the truth index or -1."""
    ious = iou_matrix(pred, truth)
    taken: set[int] = set()
    result = []
    for i in range(len(pred)):
        best, best_iou = -1, threshold
        for j in range(len(truth)):
            if j not in taken and ious[i, j] >= best_iou:
                best, best_iou = j, ious[i, j]
        if best >= 0:
            taken.add(best)
        result.append(best)
    return result


def detector_metrics(
    detections: Sequence[Sequence[Detection]], data: Heldout
) -> tuple[dict[str, Any], list[list[int]]]:
    tp = fp = fn = 0
    ious: list[float] = []
    matches = []
    for found, truth in zip(detections, data.boxes, strict=True):
        pred = np.array([[d.x0, d.y0, d.x1, d.y1] for d in found], np.float64).reshape(-1, 4)
        m = match(pred, truth)
        matches.append(m)
        hit = [j for j in m if j >= 0]
        tp += len(hit)
        fp += len(m) - len(hit)
        fn += len(truth) - len(hit)
        full = iou_matrix(pred, truth)
        ious.extend(full[i, j] for i, j in enumerate(m) if j >= 0)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    metrics = {
        "iou_threshold": IOU_THRESHOLD,
        "images": len(data.images),
        "true_leaves": tp + fn,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "mean_iou_of_matches": round(float(np.mean(ious)) if ious else 0.0, 4),
    }
    return metrics, matches


def grade_metrics(predicted: np.ndarray, truth: np.ndarray, num_grades: int = 4) -> dict[str, Any]:
    confusion = np.zeros((num_grades, num_grades), np.int64)
    for t, p in zip(truth, predicted, strict=True):
        confusion[t, p] += 1
    n = len(truth)
    return {
        "n": int(n),
        "exact": round(float((predicted == truth).mean()) if n else 0.0, 4),
        "within_one": round(float((np.abs(predicted - truth) <= 1).mean()) if n else 0.0, 4),
        "confusion_true_by_predicted": confusion.tolist(),
    }


def predict_grades(grader: Any, inputs: Any, batch_size: int = 256) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], batch_size):
            out.append(grader(inputs[start : start + batch_size]).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def grader_metrics(
    graders: dict[str, tuple[Any, Any]],
    data: Heldout,
    detections: Sequence[Sequence[Detection]] | None,
    matches: Sequence[Sequence[int]] | None,
) -> dict[str, dict[str, Any]]:
    """Per disease: metrics on true-box crops and (if detections) on matched detected crops."""
    true_crops = [
        cut_crop(img, box) for img, bx in zip(data.images, data.boxes, strict=True) for box in bx
    ]
    true_grades = np.concatenate(data.grades) if data.grades else np.zeros((0, 5), np.int64)
    det_crops: list[np.ndarray] = []
    det_grades: list[np.ndarray] = []
    if detections is not None and matches is not None:
        for img, found, m, grades in zip(
            data.images, detections, matches, data.grades, strict=True
        ):
            for d, j in zip(found, m, strict=True):
                if j >= 0:
                    det_crops.append(cut_crop(img, (d.x0, d.y0, d.x1, d.y1)))
                    det_grades.append(grades[j])
    det_truth = np.array(det_grades, np.int64).reshape(-1, 5)
    results: dict[str, dict[str, Any]] = {}
    prepared: dict[tuple[int, int], tuple[Any, Any]] = {}
    for disease, (grader, card) in graders.items():
        k = DISEASE_TYPES.index(disease)
        size = (card.input_size[0], card.input_size[1])
        if size not in prepared:
            prepared[size] = (prepare_crops(true_crops, size), prepare_crops(det_crops, size))
        true_in, det_in = prepared[size]
        entry = {"true_boxes": grade_metrics(predict_grades(grader, true_in), true_grades[:, k])}
        if detections is not None:
            entry["detected_boxes"] = grade_metrics(predict_grades(grader, det_in), det_truth[:, k])
        results[disease] = entry
    return results


def evaluate(
    registry: ModelRegistry, data: Heldout, only: Sequence[str] | None = None
) -> dict[str, Any]:
    detector = load_detector(registry.detector())
    detections = detect_leaves(data.images, detector, batch_size=32)
    det, matches = detector_metrics(detections, data)
    graders = {}
    for disease in DISEASE_TYPES:
        if only is None or f"{disease}_grader" in only:
            card = registry.grader_for(disease)
            graders[disease] = (load_grader(card), card)
    return {"detector": det, "graders": grader_metrics(graders, data, detections, matches)}


def print_report(report: dict[str, Any]) -> None:
    det = report["detector"]
    print(
        f"leaf_detector  images={det['images']} leaves={det['true_leaves']}  "
        f"precision={det['precision']:.4f} recall={det['recall']:.4f} f1={det['f1']:.4f} "
        f"(IoU>={det['iou_threshold']}, mean IoU {det['mean_iou_of_matches']:.3f})"
    )
    print(
        f"{'grader':<18}{'crops':>8}{'exact(det)':>12}{'within1(det)':>14}"
        f"{'exact(true)':>13}{'within1(true)':>15}"
    )
    for disease, entry in report["graders"].items():
        t = entry["true_boxes"]
        d = entry.get("detected_boxes", {"n": 0, "exact": float("nan"), "within_one": float("nan")})
        print(
            f"{disease + '_grader':<18}{d['n']:>8}{d['exact']:>12.4f}{d['within_one']:>14.4f}"
            f"{t['exact']:>13.4f}{t['within_one']:>15.4f}"
        )
        for name, m in (("detected", d), ("true", t)):
            if "confusion_true_by_predicted" in m:
                print(
                    f"    confusion ({name} boxes, rows = true grade): "
                    f"{m['confusion_true_by_predicted']}"
                )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--count", type=int, default=HELDOUT_COUNT)
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="default: $FARM_MODELS_DIR if set, else the repository's models/ (as the platform)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = render(args.seed, args.count)
    registry = ModelRegistry(args.models_dir)
    report = evaluate(registry, data)
    current = simulator_fingerprint()
    for card in registry.active_cards().values():
        trained_on = card.training.get("simulator_source_sha256")
        if trained_on != current:
            print(
                f"WARNING: {card.id} {card.version} was trained on simulator source "
                f"{trained_on or 'unknown'}, the simulator is now {current}: retrain"
            )
    print(
        f"held-out: simulator seed {args.seed}, {args.count} images "
        f"({time.perf_counter() - started:.0f} s)"
    )
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
