"""Drift / out-of-distribution checks on the models' outputs (issue 25).

A model's outputs on photos like its evaluation data have a known distribution; photos
unlike them (another camera, soil, light, crop) move it. Per day and model this compares:

* leaf detector: `detection_score` (per box), `boxes_per_photo` (per photo) and
  `box_size` (per box: sqrt(box area / photo area), so any photo size compares);
* each disease grader: `confidence` (per graded crop, the softmax probability of the
  grade it gave);

with a reference recorded on the model card when it was evaluated
(`python models/evaluate.py --record-drift-reference`: the active models on the
held-out photos of the training renderer, seed 2000; card `metrics.drift_reference`).

Statistic: the population-stability index over the reference's decile bins,
PSI = sum((p_day - p_ref) * ln(p_day / p_ref)), each share smoothed by half a count. A
feature drifts when PSI > `PSI_THRESHOLD` (0.25, the customary "significant shift") plus
a sampling allowance, `SAMPLING_ALLOWANCE` x (bins - 1) x (1/n_day + 1/n_ref): PSI
measured on finite samples of one same distribution is about (bins - 1)(1/n + 1/m) on
average (a chi-square over its sample size), so three times that keeps a small day of
ordinary photos from warning by chance. A feature with fewer than `MIN_VALUES` values
that day is not compared. A model drifts when any of its features does.

numpy and polars only: the checks run inside the image runs, the references are
computed by models/evaluate.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

DETECTOR_DRIFT = "detector_drift"
GRADER_DRIFT = "grader_drift"
DETECTOR_FEATURES = ("detection_score", "boxes_per_photo", "box_size")
GRADER_FEATURES = ("confidence",)
PSI_THRESHOLD = 0.25
SAMPLING_ALLOWANCE = 3.0
MIN_VALUES = 10
BINS = 10
REFERENCE_KEY = "drift_reference"


def detector_features(photos: pl.DataFrame, crops: pl.DataFrame) -> dict[str, np.ndarray]:
    """`photos`: position_id, width, height (every photo the detector saw); `crops`:
    position_id, x0, y0, x1, y1, score (its boxes). A photo without boxes counts 0."""
    sized = crops.join(photos.select("position_id", "width", "height"), on="position_id")
    area = ((sized["x1"] - sized["x0"]) * (sized["y1"] - sized["y0"])).to_numpy()
    photo_area = (sized["width"] * sized["height"]).cast(pl.Float64).to_numpy()
    per_photo = crops.group_by("position_id").len()
    counts = (
        photos.select("position_id")
        .join(per_photo, on="position_id", how="left")
        .get_column("len")
        .fill_null(0)
        .to_numpy()
    )
    return {
        "detection_score": sized["score"].to_numpy().astype(np.float64),
        "boxes_per_photo": counts.astype(np.float64),
        "box_size": np.sqrt(np.clip(area, 0, None) / np.maximum(photo_area, 1.0)),
    }


def reference(values: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """A feature's reference: decile edges (deduplicated), the share in each bin, n, mean."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        raise ValueError("a drift reference needs values")
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "proportions": [round(float(c) / len(values), 6) for c in counts],
        "n": len(values),
        "mean": round(float(values.mean()), 6),
    }


def psi(ref: Mapping[str, Any], values: np.ndarray) -> float:
    """Population-stability index of `values` against a `reference`, half-count smoothed."""
    edges = np.asarray(ref["edges"], np.float64)
    k = len(edges) + 1
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=k)
    day = (counts + 0.5) / (len(values) + 0.5 * k)
    base = (np.asarray(ref["proportions"]) * ref["n"] + 0.5) / (ref["n"] + 0.5 * k)
    return float(np.sum((day - base) * np.log(day / base)))


def threshold(ref: Mapping[str, Any], n: int) -> float:
    """The PSI above which a day of `n` values has drifted from `ref`."""
    bins = len(ref["edges"]) + 1
    return PSI_THRESHOLD + SAMPLING_ALLOWANCE * (bins - 1) * (1.0 / n + 1.0 / ref["n"])


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    n: int
    statistic: float | None  # None: fewer than MIN_VALUES values, not compared
    threshold: float | None
    day_mean: float | None
    reference: Mapping[str, Any]

    @property
    def drifted(self) -> bool:
        return self.statistic is not None and self.statistic > (self.threshold or 0.0)


def compare(
    references: Mapping[str, Mapping[str, Any]], features: Mapping[str, np.ndarray]
) -> list[FeatureDrift]:
    """Each feature that has a reference, compared with the day's values."""
    out = []
    for name, values in features.items():
        ref = references.get(name)
        if ref is None:
            continue
        values = np.asarray(values, np.float64)
        n = len(values)
        if n < MIN_VALUES:
            out.append(FeatureDrift(name, n, None, None, None, ref))
            continue
        out.append(
            FeatureDrift(
                name,
                n,
                round(psi(ref, values), 4),
                round(threshold(ref, n), 4),
                round(float(values.mean()), 4),
                ref,
            )
        )
    return out


def card_reference(card: Any) -> dict[str, Any] | None:
    """The card's recorded reference (features -> reference), or None."""
    recorded = (card.metrics or {}).get(REFERENCE_KEY)
    return recorded.get("features") if isinstance(recorded, dict) else None


def day_detector_features(
    warehouse: Any, date: dt.date, cropper: tuple[str, str]
) -> dict[str, np.ndarray]:
    """The day's detector outputs as stored (every run of the day so far): the photos
    with a decoded size and the boxes of this detector version."""
    photos = warehouse.query(
        "SELECT position_id, width, height FROM drone_images"
        " WHERE date = %s AND error IS NULL AND width IS NOT NULL",
        [date],
    )
    crops = warehouse.query(
        "SELECT position_id, x0, y0, x1, y1, score FROM leaf_crops WHERE date = %s"
        " AND cropper_model_id = %s AND cropper_model_version = %s",
        [date, *cropper],
    )
    if photos.is_empty():
        return {name: np.zeros(0) for name in DETECTOR_FEATURES}
    return detector_features(photos, crops)


def day_grader_features(
    warehouse: Any, date: dt.date, disease: str, cropper: tuple[str, str], grader: tuple[str, str]
) -> dict[str, np.ndarray]:
    frame = warehouse.query(
        "SELECT confidence FROM disease_grades WHERE date = %s AND disease_type = %s"
        " AND cropper_model_id = %s AND cropper_model_version = %s"
        " AND disease_model_id = %s AND disease_model_version = %s",
        [date, disease, *cropper, *grader],
    )
    return {"confidence": frame["confidence"].to_numpy().astype(np.float64)}


def drift_rows(
    date: dt.date,
    model: tuple[str, str],
    results: Sequence[FeatureDrift],
    checked_at: dt.datetime,
    run_id: str,
) -> pl.DataFrame:
    """Rows of the `model_drift` table for one model's day."""
    from farm_platform.resources.tables import MODEL_DRIFT_TABLE

    rows = [
        {
            "date": date,
            "model_id": model[0],
            "model_version": model[1],
            "feature": r.feature,
            "statistic": r.statistic,
            "threshold": r.threshold,
            "n": r.n,
            "reference_n": int(r.reference["n"]),
            "drifted": r.drifted,
            "checked_at": checked_at,
            "dagster_run_id": run_id,
        }
        for r in results
    ]
    return pl.DataFrame(rows, schema=MODEL_DRIFT_TABLE.polars_schema)


def drifted_models(warehouse: Any, day: dt.date) -> pl.DataFrame:
    """date, model_id: the days up to `day` on which an active model's outputs drifted
    (table model_drift), oldest first."""
    if not warehouse.table_exists("model_drift"):
        return pl.DataFrame(schema={"date": pl.Date, "model_id": pl.String})
    return warehouse.query(
        "SELECT DISTINCT d.date, d.model_id FROM model_drift AS d JOIN model_versions AS m"
        " ON d.model_id = m.model_id AND d.model_version = m.version"
        " WHERE m.active AND d.drifted AND d.date <= %s ORDER BY d.date, d.model_id",
        [day],
    )


def drifted_days(warehouse: Any, day: dt.date) -> list[dt.date]:
    """Days up to `day` on which any active model's outputs drifted."""
    return sorted(set(drifted_models(warehouse, day)["date"]))


def report_lines(drifted: pl.DataFrame) -> list[str]:
    """The daily report's warnings for `drifted_models`: the detector's days (their leaf
    counts, and so every mean, are in doubt), then the graders'."""
    lines = []
    detector = drifted.filter(pl.col("model_id") == "leaf_detector")
    if detector.height:
        days = ", ".join(str(d) for d in detector["date"])
        lines.append(
            f"The photos of these days look unlike the detector's evaluation data; treat "
            f"their counts with care: {days}."
        )
    graders = drifted.filter(pl.col("model_id") != "leaf_detector")
    if graders.height:
        per_day = graders.group_by("date", maintain_order=True).agg("model_id")
        days = "; ".join(
            f"{row['date']} ({', '.join(row['model_id'])})" for row in per_day.iter_rows(named=True)
        )
        lines.append(
            "The graders' confidence on these days' crops is unlike their evaluation data; "
            f"treat those grades with care: {days}."
        )
    return lines
