"""What `models/evaluate.py` records beside the models: the float32 / bfloat16 agreement
per active model (precision.json, which FARM_TORCH_DTYPE=bfloat16 is checked against) and
the drift checks' reference distributions (each active card's metrics.drift_reference)."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
from eval_metrics import detector_metrics, predict_grades
from eval_photos import Heldout, render

from farm_platform.ml.inference import (
    PRECISION_RECORD,
    Detection,
    Placement,
    bfloat16_refusal,
    cut_crop,
    detect_leaves,
    load_detector,
    load_grader,
    prepare_crops,
)
from farm_platform.ml.registry import (
    DISEASE_TYPES,
    ModelRegistry,
    write_json_atomic,
)


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


def record_bfloat16(
    record: dict[str, Any], registry: ModelRegistry, device: str, seed: int, photos: int
) -> None:
    """Print the comparison and record it in <models>/precision.json."""
    # One section per kind of device: CPU and CUDA bfloat16 kernels round differently,
    # and measuring on one must not drop the other's figures.
    device_type = device.split(":")[0]
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
            "device": device,
            "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "heldout_seed": seed,
            "heldout_images": photos,
        },
        "models": record,
    }
    write_json_atomic(path, stored)
