"""A model version's figures on a labelled dataset (issue 42, part 3).

- Detector (COCO detection JSON): COCO AP (IoU 0.50:0.95) and AP50 from pycocotools'
  `COCOeval`; F1 at IoU 0.5 from the same evaluation's matches (its greedy, score-ordered
  matching, crowd boxes ignored); count error per photo = detections - true leaves (mean
  signed and mean absolute).
- Grader (grade CSV or folders): exact and within-one accuracy and the confusion matrix
  (rows = true grade, columns = predicted), from torchmetrics.

Both overall and per stratum (each value of each attribute the dataset carries). The
models run exactly as the pipeline runs them (`detect_leaves`, `grade_crops`): the detector
gives its boxes after its own score threshold, so AP is that of what the platform keeps.
pycocotools and torchmetrics are imported here only, when an evaluation runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from farm_platform.ml.datasets import (
    DatasetError,
    DetectionDataset,
    GradeDataset,
    GradeRow,
)
from farm_platform.ml.registry import ModelCard, ModelRegistry

IOU_THRESHOLD = 0.5
# Higher is better for each; the activation gate compares these (admin/evaluation.py).
DETECTOR_GATED = ("ap", "ap50", "f1")
GRADER_GATED = ("exact", "within_one")


def read_image(path: Any) -> np.ndarray:
    from farm_platform.ml.inference import decode_png  # decodes any format Pillow reads

    with open(path, "rb") as handle:
        return decode_png(handle.read())


# --------------------------------------------------------------------------- detector


def coco_detector_metrics(
    dataset: DetectionDataset,
    detections: Mapping[int, Sequence[tuple[float, float, float, float, float]]],
    image_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """AP, AP50, F1 at IoU 0.5 and count error of `detections` (image id -> boxes as
    (x0, y0, x1, y1, score) in pixels) against the dataset's leaves, on `image_ids`
    (default all)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = list(image_ids) if image_ids is not None else [i["id"] for i in dataset.coco["images"]]
    category = dataset.category_id
    truth = COCO()
    truth.dataset = {
        "images": dataset.coco["images"],
        "categories": dataset.coco["categories"],
        "annotations": [a for a in dataset.coco["annotations"] if a["category_id"] == category],
    }
    # Boxes of other categories are not leaves: left out of every figure, and counted.
    wanted = set(ids)
    others = sum(
        a["category_id"] != category and a["image_id"] in wanted
        for a in dataset.coco["annotations"]
    )
    results = [
        {
            "image_id": image_id,
            "category_id": category,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": score,
            "area": (x1 - x0) * (y1 - y0),
            "id": n + 1,
            "iscrowd": 0,
        }
        for n, (image_id, x0, y0, x1, y1, score) in enumerate(
            (image_id, *box) for image_id in ids for box in detections.get(image_id, ())
        )
    ]
    predicted = COCO()
    predicted.dataset = {**truth.dataset, "annotations": results}
    most = max((len(detections.get(i, ())) for i in ids), default=0)
    evaluation = COCOeval(truth, predicted, "bbox")
    evaluation.params.imgIds = ids
    evaluation.params.catIds = [category]
    evaluation.params.maxDets = [1, 10, max(100, most)]
    # COCOeval reports progress on stdout: keep the command's own output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        predicted.createIndex()
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    tp, fp, fn = _matches_at(evaluation, IOU_THRESHOLD)
    errors = _count_errors(truth.dataset["annotations"], detections, ids)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    def stat(value: float) -> float | None:
        return None if value < 0 else round(float(value), 4)  # -1: no true leaf at all

    return {
        "photos": len(ids),
        "true_leaves": tp + fn,
        "detections": tp + fp,
        "ap": stat(evaluation.stats[0]),
        "ap50": stat(evaluation.stats[1]),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4) if tp + fp + fn else None,
        "count_error": round(float(errors.mean()), 4) if len(ids) else None,
        "abs_count_error": round(float(np.abs(errors).mean()), 4) if len(ids) else None,
        "other_category_boxes": int(others),
    }


def _count_errors(
    leaves: Sequence[Mapping[str, Any]], detections: Mapping[int, Sequence[Any]], ids: list[int]
) -> np.ndarray:
    """Per photo: detections minus true leaves (crowd boxes are not counted as leaves)."""
    true_counts = dict.fromkeys(ids, 0)
    for annotation in leaves:
        if annotation["image_id"] in true_counts and not annotation.get("iscrowd"):
            true_counts[annotation["image_id"]] += 1
    return np.array([len(detections.get(i, ())) - true_counts[i] for i in ids], np.float64)


def _matches_at(evaluation: Any, iou: float) -> tuple[int, int, int]:
    """True and false detections and missed leaves at IoU `iou`, from COCOeval's own
    per-image matching over all areas and the largest detection limit."""
    t = int(np.argmin(np.abs(evaluation.params.iouThrs - iou)))
    whole = evaluation.params.areaRng[0]
    limit = evaluation.params.maxDets[-1]
    tp = fp = fn = 0
    for entry in evaluation.evalImgs:
        if entry is None or entry["aRng"] != whole or entry["maxDet"] != limit:
            continue
        kept = ~np.asarray(entry["dtIgnore"], bool).reshape(len(evaluation.params.iouThrs), -1)[t]
        matched = np.asarray(entry["dtMatches"]).reshape(len(evaluation.params.iouThrs), -1)[t]
        hits = int(((matched > 0) & kept).sum())
        tp += hits
        fp += int(((matched == 0) & kept).sum())
        fn += int((~np.asarray(entry["gtIgnore"], bool)).sum()) - hits
    return tp, fp, fn


def evaluate_detector(
    card: ModelCard, registry: ModelRegistry, dataset: DetectionDataset
) -> dict[str, Any]:
    """The detector of `card` on every photo of `dataset`: overall and per stratum."""
    from farm_platform.ml.inference import detect_leaves, load_detector

    detector = load_detector(card, registry)
    images = dataset.coco["images"]
    found: dict[int, list[tuple[float, float, float, float, float]]] = {}
    for start in range(0, len(images), 32):  # a few photos in memory at a time
        chunk = images[start : start + 32]
        pixels = [read_image(dataset.image_path(image)) for image in chunk]
        for image, detections in zip(chunk, detect_leaves(pixels, detector), strict=True):
            found[image["id"]] = [(d.x0, d.y0, d.x1, d.y1, d.score) for d in detections]
    ids = [image["id"] for image in images]
    return {
        "overall": coco_detector_metrics(dataset, found),
        "strata": _per_stratum(
            ids,
            lambda i: dataset.strata[i],
            lambda subset: coco_detector_metrics(dataset, found, subset),
        ),
    }


def _per_stratum(
    items: Sequence[Any],
    attributes: Callable[[Any], Mapping[str, Any]],
    measure: Callable[[list[Any]], dict[str, Any]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """{attribute: {value: metrics of the items with that value}}."""
    groups: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        for name, value in attributes(item).items():
            groups.setdefault(name, {}).setdefault(str(value), []).append(item)
    return {
        name: {value: measure(members) for value, members in sorted(values.items())}
        for name, values in sorted(groups.items())
    }


# --------------------------------------------------------------------------- grader


def grade_metrics(predicted: Sequence[int], truth: Sequence[int], grades: int) -> dict[str, Any]:
    """Exact and within-one accuracy and the confusion matrix (rows = true grade)."""
    import torch
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
    )

    if not len(truth):
        return {"crops": 0, "exact": None, "within_one": None, "confusion": []}
    preds = torch.tensor(list(predicted), dtype=torch.long)
    target = torch.tensor(list(truth), dtype=torch.long)
    confusion = multiclass_confusion_matrix(preds, target, num_classes=grades)
    exact = multiclass_accuracy(preds, target, num_classes=grades, average="micro")
    # Within one grade: the confusion matrix's diagonal band, over every crop.
    index = torch.arange(grades)
    band = (index[:, None] - index[None, :]).abs() <= 1
    within = confusion[band].sum() / confusion.sum()
    return {
        "crops": len(truth),
        "exact": round(float(exact), 4),
        "within_one": round(float(within), 4),
        "confusion": confusion.tolist(),
    }


def grader_rows(card: ModelCard, dataset: GradeDataset) -> list[GradeRow]:
    """The dataset's rows for this grader's disease (by id or readable name), checked."""
    names = {card.disease_type, card.disease_name} - {None}
    rows = [row for row in dataset.rows if row.disease is None or row.disease in names]
    for row in rows:
        if row.grade not in (card.grades or ()):
            raise DatasetError(
                f"dataset {dataset.path}: {row.path} has grade {row.grade}, but {card.id} "
                f"{card.version} grades {list(card.grades or ())}"
            )
    return rows


def evaluate_grader(card: ModelCard, registry: ModelRegistry, dataset: GradeDataset) -> dict:
    """The grader of `card` on its disease's rows of `dataset`: overall and per stratum;
    {"crops": 0} when the dataset has no row for its disease."""
    from farm_platform.ml.inference import cut_crop, load_grader

    rows = grader_rows(card, dataset)
    if not rows:
        return {"overall": {"crops": 0}, "strata": {}}
    crops = []
    for row in rows:
        image = read_image(row.path)
        crops.append(np.ascontiguousarray(cut_crop(image, row.box)) if row.box else image)
    predicted = _grade(crops, card, load_grader(card, registry))
    truth = [row.grade for row in rows]
    n = card.num_grades
    by_row = {id(row): k for k, row in enumerate(rows)}

    def measure(members: list[GradeRow]) -> dict[str, Any]:
        picked = [by_row[id(row)] for row in members]
        return grade_metrics([predicted[k] for k in picked], [truth[k] for k in picked], n)

    return {
        "overall": grade_metrics(predicted, truth, n),
        "strata": _per_stratum(rows, lambda row: row.strata, measure),
    }


def _grade(crops: list[np.ndarray], card: ModelCard, grader: Any) -> list[int]:
    """Grades as the pipeline gives them: through `grade_crops`, its resizing and its label
    map; the crop rows it wants are stand-ins that only keep crops and grades aligned."""
    import polars as pl

    from farm_platform.ml.inference import LEAF_CROPS_SCHEMA, grade_crops

    n = len(crops)
    rows = pl.DataFrame(
        {
            "position_id": [str(k) for k in range(n)],
            "date": [dt.date(2000, 1, 1)] * n,
            "leaf_crop_idx": list(range(n)),
            "cropper_model_id": ["dataset"] * n,
            "cropper_model_version": ["crops"] * n,
        }
    ).cast({k: LEAF_CROPS_SCHEMA[k] for k in ("date", "leaf_crop_idx")})
    graded = grade_crops(crops, rows, grader, card)
    return graded["predicted_grade"].to_list()


def evaluate_model(
    card: ModelCard, registry: ModelRegistry, dataset: DetectionDataset | GradeDataset
) -> dict[str, Any]:
    """The figures of `card` on `dataset`, refusing a dataset of the other task."""
    if card.task == "leaf_detector":
        if not isinstance(dataset, DetectionDataset):
            raise DatasetError(
                f"{card.id} is a leaf detector: evaluate it on a COCO detection .json, not "
                f"{dataset.path}"
            )
        return evaluate_detector(card, registry, dataset)
    if not isinstance(dataset, GradeDataset):
        raise DatasetError(
            f"{card.id} is a grader: evaluate it on a grade .csv or grade folders, not "
            f"{dataset.path}"
        )
    return evaluate_grader(card, registry, dataset)
