"""Held-out evaluation of the active leaf detector and disease graders.

    python models/evaluate.py [--seed 2000] [--count 300] [--json out.json]
    python models/evaluate.py --strata [--per-cell 16] [--json out.json]
    python models/evaluate.py --compare-bfloat16 [--device cpu]
    python models/evaluate.py --save-photos heldout.npz   # then, where only torch is:
    python models/evaluate.py --compare-bfloat16 --device cuda --photos heldout.npz

Images come from the simulator with a seed that training never uses. Prints detector
precision / recall / F1 at IoU 0.5, and per disease the exact-grade and within-one
accuracy of the grader on every crop the detector found (a false detection, matched to no
true leaf at IoU >= 0.5, counts as graded wrongly: its crop enters the position means
all the same), on the matched crops only, and on crops cut with the TRUE boxes.

With --strata it renders photos per stratum (photo size 256 / 640 px, scaled to the
detector's input as inference does; every leaf at one severity grade 0..3; leaf count
0-5 / 6-12 / 13-20) and prints F1 and the mean leaf-count error per stratum.

With --compare-bfloat16 it runs the active models in float32 and in bfloat16 on the same
held-out images, prints the detector's F1 in both and each grader's agreement (same grade
on the same crops, those of the float32 detections), and records the figures in
<models>/precision.json: FARM_TORCH_DTYPE=bfloat16 is accepted only for the weights
recorded there as meeting the rule (farm_platform/ml/inference.py, BFLOAT16_*).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from farm_platform.admin.configured import configured_registry
from farm_platform.ml.inference import (
    PRECISION_RECORD,
    Detection,
    Placement,
    bfloat16_refusal,
    cut_crop,
    decode_png,
    detect_leaves,
    load_detector,
    load_grader,
    model_placement,
    prepare_crops,
)
from farm_platform.ml.registry import (
    DETECTOR_MODEL_ID,
    DISEASE_TYPES,
    ModelCard,
    ModelRegistry,
    write_json_atomic,
)

HELDOUT_SEED = 2000
HELDOUT_COUNT = 300
IOU_THRESHOLD = 0.5

STRATA_SEED = 3000  # never a training seed (training: 1000.., 4000..)
STRATA_PER_CELL = 16  # photos per (size, severity, leaf-count) cell
STRATA_SIZES = (256, 640)
RENDERERS = ("training", "eval")
# The evaluation family (farm_platform_dev/eval_render.py, issue 25): its own seeds, and
# every photo size of issue 25's targets.
EVAL_STRATA_SEED = 7000
EVAL_HELDOUT_SEED = 7100
EVAL_STRATA_SIZES = (96, 128, 256, 640)
STRATA_SEVERITIES = (0, 1, 2, 3)
LEAF_COUNT_BINS = ((0, 5), (6, 12), (13, 20))
# Targets of issue 15, checked in every stratum.
TARGET_F1 = 0.95
TARGET_ABS_COUNT_ERROR = 0.5
TARGET_OVERCOUNT = 0.3


@dataclass
class Heldout:
    images: list[np.ndarray]
    boxes: list[np.ndarray]  # (n, 4) float per image
    grades: list[np.ndarray]  # (n, 5) int per image
    pngs: list[bytes]


def render(seed: int, count: int, renderer: str = "training") -> Heldout:
    if renderer == "eval":
        return render_eval(seed, count)
    from farm_platform_dev.simulate import render_training_images

    data = Heldout([], [], [], [])
    for sim in render_training_images(seed, count):
        data.pngs.append(sim.png)
        data.images.append(decode_png(sim.png))
        data.boxes.append(
            np.array([[lf.x0, lf.y0, lf.x1, lf.y1] for lf in sim.leaves], np.float64).reshape(-1, 4)
        )
        data.grades.append(np.array([lf.grades for lf in sim.leaves], np.int64).reshape(-1, 5))
    return data


def save_heldout(data: Heldout, path: Path) -> None:
    """The photos (PNG bytes) and their truth in one .npz, for `load_heldout` on a machine
    that cannot render them (the simulator needs the whole platform installed; a lent GPU
    machine may have only torch)."""
    counts = np.array([len(boxes) for boxes in data.boxes], np.int64)
    np.savez_compressed(
        path,
        png_bytes=np.frombuffer(b"".join(data.pngs), np.uint8),
        png_lengths=np.array([len(png) for png in data.pngs], np.int64),
        leaf_counts=counts,
        boxes=np.concatenate([b.reshape(-1, 4) for b in data.boxes])
        if len(counts)
        else np.zeros((0, 4)),
        grades=np.concatenate([g.reshape(-1, 5) for g in data.grades])
        if len(counts)
        else np.zeros((0, 5), np.int64),
    )


def load_heldout(path: Path) -> Heldout:
    """The photos and truth `save_heldout` wrote."""
    with np.load(path) as saved:
        png_lengths, leaf_counts = saved["png_lengths"], saved["leaf_counts"]
        png_bytes = saved["png_bytes"].tobytes()
        boxes, grades = saved["boxes"], saved["grades"]

    def spans(lengths: np.ndarray) -> list[tuple[int, int]]:
        ends = np.cumsum(lengths)
        return list(zip((ends - lengths).tolist(), ends.tolist(), strict=True))

    pngs = [png_bytes[a:b] for a, b in spans(png_lengths)]
    leaves = spans(leaf_counts)
    return Heldout(
        images=[decode_png(png) for png in pngs],
        boxes=[boxes[a:b].astype(np.float64) for a, b in leaves],
        grades=[grades[a:b].astype(np.int64) for a, b in leaves],
        pngs=pngs,
    )


def render_eval(seed: int, count: int, size: int = 256) -> Heldout:
    """`count` photos of the evaluation family (0-20 leaves, grades drawn at random)."""
    from farm_platform_dev.eval_render import render_eval_images
    from farm_platform_dev.simulate.render import encode_png

    data = Heldout([], [], [], [])
    for pixels, boxes, grades in render_eval_images(seed, count, size):
        data.images.append(pixels)
        data.pngs.append(encode_png(pixels))
        data.boxes.append(boxes)
        data.grades.append(grades)
    return data


def render_photo(
    rng: np.random.Generator,
    n_leaves: int,
    size: int,
    severity: int | None,
    renderer: str = "training",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One photo of `size` px: pixels, true boxes (n, 4) and grades (n, 5).

    `severity` g puts every disease of every leaf at grade g (the heaviest lesions of that
    grade: spots, blotches, necrosis together); None draws each grade uniformly 0..3 as
    `render_training_images` does (without its healthy fifth). `renderer` "eval" draws it
    with the evaluation family instead (farm_platform_dev/eval_render.py)."""
    if renderer == "eval":
        from farm_platform_dev.eval_render import render_eval_photo

        return render_eval_photo(rng, n_leaves, size, severity)
    from farm_platform_dev.simulate import MAX_GRADE, NUM_DISEASES
    from farm_platform_dev.simulate import render as simulator

    layout = simulator.plan_layout(rng, n_leaves, size)
    n = len(layout.leaves)
    if severity is None:
        grades = rng.integers(0, MAX_GRADE + 1, (n, NUM_DISEASES))
    else:
        grades = np.full((n, NUM_DISEASES), severity, np.int64)
    pixels = simulator.render_layout(layout, grades, rng)
    boxes = np.array(simulator.leaf_boxes(layout), np.float64).reshape(-1, 4)
    return pixels, boxes, grades.reshape(-1, NUM_DISEASES)


@dataclass
class Stratified:
    data: Heldout
    strata: list[dict[str, Any]]  # per photo: size, severity, leaves (true count)


def count_bin(leaves: int) -> str:
    for low, high in LEAF_COUNT_BINS:
        if low <= leaves <= high:
            return f"{low}-{high}"
    raise ValueError(f"{leaves} leaves is outside every bin {LEAF_COUNT_BINS}")


def render_strata(
    seed: int = STRATA_SEED,
    per_cell: int = STRATA_PER_CELL,
    sizes: Sequence[int] = STRATA_SIZES,
    renderer: str = "training",
) -> Stratified:
    """`per_cell` photos for every photo size x severity x requested leaf-count bin.

    A crowded photo may fit fewer leaves than requested; its bin is that of the leaves
    actually placed (the true count)."""
    out = Stratified(Heldout([], [], [], []), [])
    for size in sizes:
        for severity in STRATA_SEVERITIES:
            for b, (low, high) in enumerate(LEAF_COUNT_BINS):
                for i in range(per_cell):
                    rng = np.random.default_rng((seed, size, severity, b, i))
                    pixels, boxes, grades = render_photo(
                        rng, int(rng.integers(low, high + 1)), size, severity, renderer
                    )
                    out.data.images.append(pixels)
                    out.data.boxes.append(boxes)
                    out.data.grades.append(grades)
                    out.strata.append({"size": size, "severity": severity, "leaves": len(boxes)})
    return out


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


def simulator_fingerprint() -> str:
    """sha256 over the simulator's source: the models are only as valid as the images."""
    import hashlib

    import farm_platform_dev.simulate as simulate

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


def evaluate(
    registry: ModelRegistry,
    data: Heldout,
    only: Sequence[str] | None = None,
    detector_version: str | None = None,
) -> dict[str, Any]:
    detector = load_detector(detector_card(registry, detector_version), registry)
    detections = detect_leaves(data.images, detector, batch_size=32)
    det, matches = detector_metrics(detections, data)
    graders = {}
    for disease in DISEASE_TYPES:
        if only is None or f"{disease}_grader" in only:
            card = registry.grader_for(disease)
            graders[disease] = (load_grader(card), card)
    return {"detector": det, "graders": grader_metrics(graders, data, detections, matches)}


def detector_card(registry: ModelRegistry, version: str | None = None) -> ModelCard:
    """The active leaf detector's card, or that of `version`."""
    if version is None:
        return registry.detector()
    return registry.card(DETECTOR_MODEL_ID, version)


def evaluate_strata(
    registry: ModelRegistry, strata: Stratified, detector_version: str | None = None
) -> list[dict[str, Any]]:
    detector = load_detector(detector_card(registry, detector_version), registry)
    detections = detect_leaves(strata.data.images, detector, batch_size=32)
    return stratum_table(detections, strata.data, strata.strata)


def compare_bfloat16(registry: ModelRegistry, data: Heldout, device: str = "cpu") -> dict[str, Any]:
    """Float32 against bfloat16 on `device`, per active model: detector F1 in both, and per
    grader how many crops get the same grade (crops of the float32 detections, so that
    the graders' own precision is measured, not the detector's)."""
    full, half = Placement(device, "float32"), Placement(device, "bfloat16")
    detector_card = registry.detector()
    found: dict[str, list[list[Detection]]] = {}
    record: dict[str, Any] = {}
    f1: dict[str, float] = {}
    for placement in (full, half):
        detector = load_detector(detector_card, registry, placement)
        found[placement.dtype] = detect_leaves(data.images, detector, batch_size=32)
        f1[placement.dtype] = detector_metrics(found[placement.dtype], data)[0]["f1"]
    record[detector_card.id] = {
        "version": detector_card.version,
        "sha256": detector_card.sha256,
        "f1_float32": f1["float32"],
        "f1_bfloat16": f1["bfloat16"],
    }
    crops = [
        cut_crop(image, (d.x0, d.y0, d.x1, d.y1))
        for image, detections in zip(data.images, found["float32"], strict=True)
        for d in detections
    ]
    for disease in DISEASE_TYPES:
        card = registry.grader_for(disease)
        inputs = prepare_crops(crops, (card.input_size[0], card.input_size[1]))
        grades = {
            placement.dtype: predict_grades(load_grader(card, registry, placement), inputs)
            for placement in (full, half)
        }
        record[card.id] = {
            "version": card.version,
            "sha256": card.sha256,
            "crops": len(crops),
            "agreeing": int((grades["float32"] == grades["bfloat16"]).sum()),
        }
    return record


def drift_references(
    registry: ModelRegistry, data: Heldout
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per active model: the reference distribution of each output feature the daily drift
    checks compare (farm_platform/quality/drift.py), on `data` as the pipeline sees it:
    the active detector's boxes, and each grader's confidence on the crops it cuts."""
    import polars as pl

    from farm_platform.ml.inference import run_grader
    from farm_platform.quality import drift

    detector_card_ = registry.detector()
    detections = detect_leaves(data.images, load_detector(detector_card_, registry), 32)
    photos = pl.DataFrame(
        {
            "position_id": [str(i) for i in range(len(data.images))],
            "width": [img.shape[1] for img in data.images],
            "height": [img.shape[0] for img in data.images],
        }
    )
    crops = pl.DataFrame(
        [
            {
                "position_id": str(i),
                "x0": d.x0,
                "y0": d.y0,
                "x1": d.x1,
                "y1": d.y1,
                "score": d.score,
            }
            for i, found in enumerate(detections)
            for d in found
        ],
        schema={
            "position_id": pl.String,
            **dict.fromkeys(("x0", "y0", "x1", "y1", "score"), pl.Float64),
        },
    )
    features = drift.detector_features(photos, crops)
    out = {detector_card_.id: {name: drift.reference(values) for name, values in features.items()}}
    cut = [
        cut_crop(img, (d.x0, d.y0, d.x1, d.y1))
        for img, found in zip(data.images, detections, strict=True)
        for d in found
    ]
    for disease in DISEASE_TYPES:
        card = registry.grader_for(disease)
        grader = load_grader(card, registry)
        inputs = prepare_crops(cut, (card.input_size[0], card.input_size[1]))
        confidence = np.concatenate(
            [run_grader(grader, inputs[i : i + 256])[1] for i in range(0, len(cut), 256)]
        )
        out[card.id] = {"confidence": drift.reference(confidence.astype(np.float64))}
    return out


def record_drift_reference(registry: ModelRegistry, seed: int, count: int) -> int:
    """Measure the drift references and write them into the active models' cards
    (metrics.drift_reference; the weights and their sha256 are untouched)."""
    from farm_platform.quality import drift

    if not isinstance(registry.models_dir, Path):
        raise SystemExit("--record-drift-reference writes local cards; push them afterwards")
    references = drift_references(registry, render(seed, count))
    detector = registry.detector()
    for model_id, features in references.items():
        card = registry.active_card(model_id)
        path = registry.models_dir / model_id / card.version / "card.json"
        stored = json.loads(path.read_text())
        stored["metrics"][drift.REFERENCE_KEY] = {
            "statistic": "psi",
            "measured": dt.date.today().isoformat(),
            "photos": f"training renderer, held-out seed {seed}, {count} photos of 256 px",
            "detector": f"{detector.id} {detector.version}",
            "features": features,
        }
        write_json_atomic(path, stored)
        print(
            f"{model_id} {card.version}: "
            + ", ".join(f"{k} n={v['n']} mean={v['mean']:.3f}" for k, v in features.items())
        )
    return 0


def print_bfloat16_comparison(
    record: dict[str, Any], registry: ModelRegistry, device_type: str
) -> None:
    for model_id, figures in record.items():
        card = registry.active_card(model_id)
        why = bfloat16_refusal(card, figures, device_type)
        if "f1_float32" in figures:
            change = figures["f1_bfloat16"] - figures["f1_float32"]
            shown = (
                f"F1 float32 {figures['f1_float32']:.4f}  bfloat16 {figures['f1_bfloat16']:.4f}"
                f"  change {change:+.4f}"
            )
        else:
            share = figures["agreeing"] / figures["crops"] if figures["crops"] else 0.0
            shown = f"same grade on {figures['agreeing']}/{figures['crops']} crops ({share:.2%})"
        print(f"{model_id:<18}{shown}  -> {'accepted' if why is None else 'REFUSED: ' + why}")


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
    parser.add_argument(
        "--compare-bfloat16",
        action="store_true",
        help="measure float32 against bfloat16 and record it in <models>/" + PRECISION_RECORD,
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (--compare-bfloat16)")
    parser.add_argument(
        "--strata",
        action="store_true",
        help="the detector's F1 and leaf-count error per photo size, severity and leaf count",
    )
    parser.add_argument("--per-cell", type=int, default=STRATA_PER_CELL, help="with --strata")
    parser.add_argument(
        "--detector-version",
        default=None,
        help="evaluate this leaf_detector version instead of the active one",
    )
    parser.add_argument(
        "--renderer",
        choices=RENDERERS,
        default="training",
        help="training: the simulator the models were trained on (other seeds); eval: the "
        "evaluation family training never sees (farm_platform_dev/eval_render.py)",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="with --strata: photo sizes, comma-separated (default 256,640 for the training "
        "renderer, 96,128,256,640 for eval)",
    )
    parser.add_argument(
        "--size", type=int, default=256, help="without --strata, --renderer eval: photo size"
    )
    parser.add_argument(
        "--save-photos",
        type=Path,
        help="render the held-out photos (--seed, --count) into this .npz and stop",
    )
    parser.add_argument(
        "--photos",
        type=Path,
        help="the held-out photos from a --save-photos file instead of rendering them (with "
        "the --seed and --count they were saved with, which the record names)",
    )
    parser.add_argument(
        "--record-drift-reference",
        action="store_true",
        help="record the active models' output distributions on the held-out photos into "
        "their cards (metrics.drift_reference), which the daily drift checks compare with",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.record_drift_reference:
        return record_drift_reference(configured_registry(args.models_dir), args.seed, args.count)
    if args.strata:
        registry = configured_registry(args.models_dir)
        eval_family = args.renderer == "eval"
        seed = EVAL_STRATA_SEED if eval_family else STRATA_SEED
        default_sizes = EVAL_STRATA_SIZES if eval_family else STRATA_SIZES
        sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else list(default_sizes)
        strata = render_strata(seed, args.per_cell, sizes, args.renderer)
        card = detector_card(registry, args.detector_version)
        rows = evaluate_strata(registry, strata, args.detector_version)
        print(
            f"strata: {args.renderer} renderer seed {seed}, {len(strata.strata)} photos "
            f"({args.per_cell} per size x severity x leaf-count cell), "
            f"{card.id} {card.version} ({time.perf_counter() - started:.0f} s)"
        )
        print_strata(rows, f"{card.id} {card.version}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"detector": card.version, "renderer": args.renderer, "strata": rows},
                    indent=2,
                )
            )
        return 0
    if args.renderer == "eval":
        seed = EVAL_HELDOUT_SEED if args.seed == HELDOUT_SEED else args.seed
        data = render_eval(seed, args.count, args.size)
        label = f"evaluation family: seed {seed}, {args.count} photos of {args.size} px"
    elif args.photos:
        data = load_heldout(args.photos)
        label = f"held-out: {len(data.pngs)} images of {args.photos} (seed {args.seed})"
    else:
        data = render(args.seed, args.count)
        label = f"held-out: simulator seed {args.seed}, {args.count} images"
    if args.save_photos:
        save_heldout(data, args.save_photos)
        print(f"{label} saved to {args.save_photos}")
        return 0
    registry = configured_registry(args.models_dir)
    if args.compare_bfloat16:
        record = compare_bfloat16(registry, data, args.device)
        print(
            f"held-out: simulator seed {args.seed}, {args.count} images, device {args.device} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        # One section per kind of device: CPU and CUDA bfloat16 kernels round differently,
        # and measuring on one must not drop the other's figures.
        device_type = args.device.split(":")[0]
        print_bfloat16_comparison(record, registry, device_type)
        if not isinstance(registry.models_dir, Path):
            raise SystemExit(
                f"--compare-bfloat16 records into a local models folder, not "
                f"{registry.models_dir}: measure with --models-dir on a local copy, then "
                "`farm-platform models --models-dir <bucket folder> push <copy>`"
            )
        path = registry.models_dir / PRECISION_RECORD
        stored = json.loads(path.read_text()) if path.exists() else {"bfloat16": {}}
        stored["bfloat16"][device_type] = {
            "measured": {
                "date": dt.date.today().isoformat(),
                "device": args.device,
                "machine": f"{platform.machine()} {platform.processor()}".strip(),
                "heldout_seed": args.seed,
                "heldout_images": len(data.pngs),
            },
            "models": record,
        }
        write_json_atomic(path, stored)
        return 0
    report = evaluate(registry, data, detector_version=args.detector_version)
    current = simulator_fingerprint()
    for card in registry.active_cards().values() if args.renderer == "training" else ():
        trained_on = card.training.get("simulator_source_sha256")
        if trained_on != current:
            print(
                f"WARNING: {card.id} {card.version} was trained on simulator source "
                f"{trained_on or 'unknown'}, the simulator is now {current}: retrain"
            )
    print(f"{label} ({time.perf_counter() - started:.0f} s)")
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
