"""Running the shipped models: decode, detect, crop, write crops, grade (used by the assets).

Everything here is batched and deterministic: the same image gives the same detections
and grades whatever the batch size (up to float rounding in the scores).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from fsspec import AbstractFileSystem
from PIL import Image

from farm_platform.layout import ImageKey, bucket_filesystem, crop_uri
from farm_platform.ml.architectures import DiseaseGrader, LeafDetector
from farm_platform.ml.loading import (  # noqa: F401 - the public entry of ml/
    _DTYPES,
    BFLOAT16_MAX_F1_CHANGE,
    BFLOAT16_MIN_GRADE_AGREEMENT,
    PRECISION_RECORD,
    Placement,
    bfloat16_refusal,
    configured_placement,
    load_detector,
    load_grader,
    read_precision_record,
    require_bfloat16_agreement,
)
from farm_platform.ml.pixels import (  # noqa: F401 - the public entry of ml/
    ImageDecodeError,
    box_pixels,
    cpu_threads,
    cut_crop,
    decode_png,
    encode_png,
    letterbox,
    parallel_map,
    prepare_crops,
    resize_crop,
    to_tensor,
    use_threads,
)
from farm_platform.ml.registry import ModelCard, ModelRegistryError
from farm_platform.ml.runners import (  # noqa: F401 - the public entry of ml/
    DetectorRun,
    DetectorRunner,
    GraderRun,
    GraderRunner,
)

LEAF_CROPS_SCHEMA: dict[str, pl.DataType] = {
    "position_id": pl.String(),
    "date": pl.Date(),
    "leaf_crop_idx": pl.Int64(),
    "x0": pl.Float64(),
    "y0": pl.Float64(),
    "x1": pl.Float64(),
    "y1": pl.Float64(),
    "score": pl.Float64(),
    "crop_uri": pl.String(),
    "cropper_model_id": pl.String(),
    "cropper_model_version": pl.String(),
}
GRADES_SCHEMA: dict[str, pl.DataType] = {
    "position_id": pl.String(),
    "date": pl.Date(),
    "leaf_crop_idx": pl.Int64(),
    "disease_type": pl.String(),
    "predicted_grade": pl.Int64(),
    "cropper_model_id": pl.String(),
    "cropper_model_version": pl.String(),
    "disease_model_id": pl.String(),
    "disease_model_version": pl.String(),
    "confidence": pl.Float64(),
}


@dataclass(frozen=True)
class Detection:
    """One detected leaf: box in image pixels (clipped to the image) and score in [0, 1]."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float


# ---------------------------------------------------------------------------------------
# Detection and cropping


def model_placement(
    model: torch.nn.Module | GraderRunner | DetectorRunner,
) -> tuple[torch.device, torch.dtype]:
    """Where a model's inputs go: its weights' device and dtype, or the host in float32
    for a model on a model server (a runner: its client sends host arrays)."""
    if not isinstance(model, torch.nn.Module):
        return torch.device("cpu"), torch.float32
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def run_detector(detector: LeafDetector, scaled: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The local detector on (N, S, S, 3) uint8 inputs: raw boxes and scores per image."""
    device, dtype = model_placement(detector)
    with torch.inference_mode():
        heads = detector(to_tensor(scaled, device, dtype))
        # One copy back per batch; the box decoding's small per-image steps run on the
        # host in float32 whatever the model's device and dtype.
        decoded = detector.decode(*(head.float().cpu() for head in heads))
    return [
        (boxes.numpy(), scores.numpy())
        for boxes, scores in zip(decoded.boxes, decoded.scores, strict=True)
    ]


def run_grader(grader: DiseaseGrader, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The local grader on prepared crops: the most likely class and its probability."""
    with torch.inference_mode():
        # Softmax in float32 whatever the model's dtype: confidences keep their digits.
        confidence, index = torch.softmax(grader(inputs).float(), dim=1).max(dim=1)
    return index.cpu().numpy(), confidence.cpu().numpy()


def detector_runner(detector: LeafDetector | DetectorRunner) -> DetectorRunner:
    if isinstance(detector, DetectorRunner):
        return detector
    return DetectorRunner(detector.input_size, functools.partial(run_detector, detector))


def grader_runner(grader: DiseaseGrader | GraderRunner) -> GraderRunner:
    if isinstance(grader, GraderRunner):
        return grader
    return GraderRunner(functools.partial(run_grader, grader))


def crop_resizing(grader: DiseaseGrader | GraderRunner) -> tuple[str, int]:
    """How crops are resized for `grader`: ("stretch" | "letterbox", pad grey level)."""
    if isinstance(grader, GraderRunner):
        return grader.resize, grader.pad_value
    return "stretch", 0


def scale_for_detector(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Photos of another size are scaled to the detector input; boxes scale back."""
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")

    def scale(image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (size, size):
            return image
        return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))

    return np.ascontiguousarray(np.stack(parallel_map(scale, images)))


def detect_leaves(
    images: Sequence[np.ndarray],
    detector: LeafDetector | DetectorRunner,
    batch_size: int = 32,
) -> list[list[Detection]]:
    """Detections per image, best score first; boxes clipped to the image."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    runner = detector_runner(detector)
    size = runner.input_size
    results: list[list[Detection]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        if runner.run_photos is not None:
            raw, in_photo_pixels = runner.run_photos(chunk), True
        else:
            raw, in_photo_pixels = runner.run(scale_for_detector(chunk, size)), False
        for image, (boxes, scores) in zip(chunk, raw, strict=True):
            height, width = image.shape[:2]
            sx, sy = (1.0, 1.0) if in_photo_pixels else (width / size, height / size)
            found = []
            for (x0, y0, x1, y1), score in zip(boxes.tolist(), scores.tolist(), strict=True):
                x0, x1 = min(max(x0 * sx, 0.0), width), min(max(x1 * sx, 0.0), width)
                y0, y1 = min(max(y0 * sy, 0.0), height), min(max(y1 * sy, 0.0), height)
                if x1 - x0 >= 1.0 and y1 - y0 >= 1.0:
                    found.append(Detection(x0, y0, x1, y1, float(score)))
            found.sort(key=lambda d: -d.score)
            results.append(found)
    return results


def crop_leaves(
    images: Sequence[tuple[ImageKey, np.ndarray]],
    detector: LeafDetector | DetectorRunner,
    cropper_card: ModelCard,
    bucket_root: str,
    batch_size: int = 32,
    detections: Sequence[Sequence[Detection]] | None = None,
) -> tuple[pl.DataFrame, list[np.ndarray]]:
    """Detect and cut out leaves: `leaf_crops` rows (docs/contracts.md) and crop arrays, aligned.

    `detections` (from `detect_leaves`) skips detecting again: the benchmark times the two
    apart."""
    if detections is None:
        detections = detect_leaves([image for _, image in images], detector, batch_size)
    rows: dict[str, list[Any]] = {name: [] for name in LEAF_CROPS_SCHEMA}
    crops: list[np.ndarray] = []
    for (key, image), found in zip(images, detections, strict=True):
        for idx, det in enumerate(found):
            rows["position_id"].append(key.position_id)
            rows["date"].append(key.date)
            rows["leaf_crop_idx"].append(idx)
            for name in ("x0", "y0", "x1", "y1", "score"):
                rows[name].append(float(getattr(det, name)))
            rows["crop_uri"].append(
                crop_uri(bucket_root, key, cropper_card.id, cropper_card.version, idx)
            )
            rows["cropper_model_id"].append(cropper_card.id)
            rows["cropper_model_version"].append(cropper_card.version)
            crops.append(np.ascontiguousarray(cut_crop(image, (det.x0, det.y0, det.x1, det.y1))))
    return pl.DataFrame(rows, schema=LEAF_CROPS_SCHEMA), crops


def write_crops(
    frame: pl.DataFrame, crops: Sequence[np.ndarray], fs: AbstractFileSystem | None = None
) -> list[str]:
    """Write each crop as a PNG at its `crop_uri`; returns the URIs written."""
    uris = frame["crop_uri"].to_list()
    if len(uris) != len(crops):
        raise ValueError(f"{len(uris)} crop rows but {len(crops)} crops")
    if not uris:
        return []
    if fs is None:
        fs, _ = bucket_filesystem(uris[0])
    payload = {
        fs._strip_protocol(uri): encode_png(crop) for uri, crop in zip(uris, crops, strict=True)
    }
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols:
        # A folder bucket: plain files, without fsspec's per-call work (a photo's ~15
        # crops share one folder; object stores have no folders, and gcsfs would probe
        # the bucket per call).
        for parent in {path.rsplit("/", 1)[0] for path in payload}:
            os.makedirs(parent, exist_ok=True)
        for path, data in payload.items():
            with open(path, "wb") as file:
                file.write(data)
    elif getattr(fs, "async_impl", False):
        # One call, every object in flight at once: gcsfs's default gather batch is the
        # limit otherwise (measured against the GCS emulator: 5.5 ms per crop object
        # with the default, 1.9 ms with all of a chunk's ~1,000 crops in one gather).
        fs.pipe(payload, batch_size=len(payload))
    else:
        fs.pipe(payload)
    return uris


# ---------------------------------------------------------------------------------------
# Grading


def grade_crops(
    crops: Sequence[np.ndarray] | torch.Tensor,
    crop_rows: pl.DataFrame,
    grader: DiseaseGrader | GraderRunner,
    grader_card: ModelCard,
    batch_size: int = 256,
) -> pl.DataFrame:
    """Grade crops (of any number of images, batched across them) with one disease grader.

    `crops` are the arrays from `crop_leaves` (or the tensor of `prepare_crops`, to resize
    once for all five graders); `crop_rows` the aligned `leaf_crops` rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if grader_card.task != "disease_grader" or grader_card.grades is None:
        raise ModelRegistryError(f"model {grader_card.id} {grader_card.version} is not a grader")
    if len(crops) != crop_rows.height:
        raise ValueError(f"{len(crops)} crops but {crop_rows.height} crop rows")
    size = (grader_card.input_size[0], grader_card.input_size[1])
    device, dtype = model_placement(grader)
    if isinstance(crops, torch.Tensor):
        inputs = crops.to(device=device, dtype=dtype, non_blocking=True)
    else:
        inputs = prepare_crops(list(crops), size, device, dtype, *crop_resizing(grader))
    if tuple(inputs.shape[2:]) != size:
        raise ValueError(f"prepared crops are {tuple(inputs.shape[2:])}, the grader wants {size}")
    runner = grader_runner(grader)
    grades: list[int] = []
    confidences: list[float] = []
    for start in range(0, inputs.shape[0], batch_size):
        index, confidence = runner.run(inputs[start : start + batch_size])
        grades.extend(grader_card.grades[i] for i in index.tolist())
        confidences.extend(confidence.tolist())
    n = crop_rows.height
    return pl.DataFrame(
        {
            "position_id": crop_rows["position_id"],
            "date": crop_rows["date"],
            "leaf_crop_idx": crop_rows["leaf_crop_idx"],
            "disease_type": [grader_card.disease_type] * n,
            "predicted_grade": grades,
            "cropper_model_id": crop_rows["cropper_model_id"],
            "cropper_model_version": crop_rows["cropper_model_version"],
            "disease_model_id": [grader_card.id] * n,
            "disease_model_version": [grader_card.version] * n,
            "confidence": confidences,
        },
        schema=GRADES_SCHEMA,
    )
