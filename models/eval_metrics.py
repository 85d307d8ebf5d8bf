"""The evaluation's figures: detector precision / recall / F1 at IoU 0.5, the graders'
exact and within-one accuracy, the per-stratum table against issue 15's targets, and how
`models/evaluate.py` prints them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from eval_photos import Heldout, count_bin

from farm_platform.ml.inference import (
    Detection,
    cut_crop,
    model_placement,
    prepare_crops,
)
from farm_platform.ml.registry import (
    DISEASE_TYPES,
)

IOU_THRESHOLD = 0.5
# Targets of issue 15, checked in every stratum.
TARGET_F1 = 0.95
TARGET_ABS_COUNT_ERROR = 0.5
TARGET_OVERCOUNT = 0.3


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


def detection_scores(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts of true and false detections and missed leaves."""
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-9)


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
    precision, recall, f1 = detection_scores(tp, fp, fn)
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

    device, dtype = model_placement(grader)
    out = []
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start : start + batch_size].to(device=device, dtype=dtype)
            out.append(grader(batch).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def grader_metrics(
    graders: dict[str, tuple[Any, Any]],
    data: Heldout,
    detections: Sequence[Sequence[Detection]] | None,
    matches: Sequence[Sequence[int]] | None,
) -> dict[str, dict[str, Any]]:
    """Per disease: metrics on true-box crops and (if detections) on the detected crops:
    `detected_boxes` on those matched to a true leaf, `all_detections` on every detected
    crop, where a false detection (matched to no true leaf) counts as graded wrongly."""
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
                det_crops.append(cut_crop(img, (d.x0, d.y0, d.x1, d.y1)))
                det_grades.append(grades[j] if j >= 0 else np.full(5, -1, np.int64))
    det_truth = np.array(det_grades, np.int64).reshape(-1, 5)
    matched = det_truth[:, 0] >= 0
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
            predicted = predict_grades(grader, det_in)
            entry["detected_boxes"] = grade_metrics(predicted[matched], det_truth[matched, k])
            entry["all_detections"] = all_detections_metrics(predicted, det_truth[:, k])
        results[disease] = entry
    return results


def all_detections_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Exact and within-one accuracy over every detected crop; `truth` -1 marks a false
    detection, which is never right (it is graded although there is no leaf)."""
    n = len(truth)
    real = truth >= 0
    exact = (predicted == truth) & real
    within = (np.abs(predicted - truth) <= 1) & real
    return {
        "n": int(n),
        "false_detections": int(n - real.sum()),
        "exact": round(float(exact.mean()) if n else 0.0, 4),
        "within_one": round(float(within.mean()) if n else 0.0, 4),
    }


def stratum_table(
    detections: Sequence[Sequence[Detection]], data: Heldout, strata: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """F1 (IoU 0.5, pooled over the stratum's leaves) and leaf-count error (detections minus
    true leaves, per photo: mean signed and mean absolute) for each value of each stratum
    and for each photo size x severity cell; `meets_targets` per row."""
    per_photo = []
    for found, truth in zip(detections, data.boxes, strict=True):
        pred = np.array([[d.x0, d.y0, d.x1, d.y1] for d in found], np.float64).reshape(-1, 4)
        tp = sum(j >= 0 for j in match(pred, truth))
        per_photo.append((tp, len(pred) - tp, len(truth) - tp, len(pred) - len(truth)))
    keys: list[tuple[str, Any]] = []
    groups: dict[tuple[str, Any], list[int]] = {}
    for i, stratum in enumerate(strata):
        for key in (
            ("size", stratum["size"]),
            ("severity", stratum["severity"]),
            ("leaves", count_bin(stratum["leaves"])),
            ("size x severity", f"{stratum['size']} px, grade {stratum['severity']}"),
            ("size x leaves", f"{stratum['size']} px, {count_bin(stratum['leaves'])} leaves"),
        ):
            if key not in groups:
                keys.append(key)
                groups[key] = []
            groups[key].append(i)
    order = ["size", "severity", "leaves", "size x severity", "size x leaves"]
    rows = []
    for dimension, value in sorted(keys, key=lambda k: order.index(k[0])):
        idx = groups[(dimension, value)]
        tp, fp, fn = (sum(per_photo[i][k] for i in idx) for k in range(3))
        errors = np.array([per_photo[i][3] for i in idx], np.float64)
        f1 = detection_scores(tp, fp, fn)[2] if tp + fp + fn else 1.0
        row = {
            "stratum": dimension,
            "value": value,
            "photos": len(idx),
            "true_leaves": tp + fn,
            "f1": round(f1, 4),
            "count_error": round(float(errors.mean()), 3),
            "abs_count_error": round(float(np.abs(errors).mean()), 3),
        }
        row["meets_targets"] = bool(
            row["f1"] >= TARGET_F1
            and row["abs_count_error"] <= TARGET_ABS_COUNT_ERROR
            and row["count_error"] <= TARGET_OVERCOUNT
        )
        rows.append(row)
    return rows


def print_strata(rows: Sequence[dict[str, Any]], label: str = "") -> None:
    print(
        f"per stratum{' (' + label + ')' if label else ''}: F1 at IoU {IOU_THRESHOLD}, leaf-count "
        f"error = detections - true leaves per photo; targets F1 >= {TARGET_F1}, "
        f"mean |error| <= {TARGET_ABS_COUNT_ERROR}, mean error <= +{TARGET_OVERCOUNT}"
    )
    print(
        f"{'stratum':<17}{'value':<20}{'photos':>7}{'leaves':>7}{'F1':>8}{'error':>8}{'|error|':>9}"
    )
    for r in rows:
        print(
            f"{r['stratum']:<17}{r['value']!s:<20}{r['photos']:>7}{r['true_leaves']:>7}"
            f"{r['f1']:>8.4f}{r['count_error']:>+8.3f}{r['abs_count_error']:>9.3f}"
            f"  {'ok' if r['meets_targets'] else 'MISSES TARGET'}"
        )


def print_report(report: dict[str, Any]) -> None:
    det = report["detector"]
    print(
        f"leaf_detector  images={det['images']} leaves={det['true_leaves']}  "
        f"precision={det['precision']:.4f} recall={det['recall']:.4f} f1={det['f1']:.4f} "
        f"(IoU>={det['iou_threshold']}, mean IoU {det['mean_iou_of_matches']:.3f})"
    )
    print(
        "graders: 'all' = every detected crop, a false detection counted as graded wrongly; "
        "'matched' = detected crops matched to a true leaf; 'true' = true-box crops"
    )
    print(
        f"{'grader':<18}{'crops':>6}{'false':>6}{'exact(all)':>11}{'within1(all)':>13}"
        f"{'exact(matched)':>15}{'exact(true)':>12}{'within1(true)':>14}"
    )
    missing = {"n": 0, "false_detections": 0, "exact": float("nan"), "within_one": float("nan")}
    for disease, entry in report["graders"].items():
        t = entry["true_boxes"]
        d = entry.get("detected_boxes", missing)
        a = entry.get("all_detections", missing)
        print(
            f"{disease + '_grader':<18}{a['n']:>6}{a['false_detections']:>6}{a['exact']:>11.4f}"
            f"{a['within_one']:>13.4f}{d['exact']:>15.4f}{t['exact']:>12.4f}{t['within_one']:>14.4f}"
        )
        for name, m in (("detected", d), ("true", t)):
            if "confusion_true_by_predicted" in m:
                print(
                    f"    confusion ({name} boxes, rows = true grade): "
                    f"{m['confusion_true_by_predicted']}"
                )
