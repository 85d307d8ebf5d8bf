"""Running the shipped models: decode, detect, crop, write crops, grade (used by the assets).

Everything here is batched and deterministic: the same image gives the same detections
and grades whatever the batch size (up to float rounding in the scores).
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import torch
from fsspec import AbstractFileSystem
from PIL import Image

from farm_platform import config
from farm_platform.config import ConfigError
from farm_platform.layout import ImageKey, bucket_filesystem, crop_uri
from farm_platform.ml.architectures import DiseaseGrader, LeafDetector
from farm_platform.ml.registry import ModelCard, ModelRegistry, ModelRegistryError

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
# bfloat16 is offered only for models whose measured agreement with float32 meets these
# (issue 17): grades equal on this share of crops, detector F1 within this distance.
BFLOAT16_MIN_GRADE_AGREEMENT = 0.995
BFLOAT16_MAX_F1_CHANGE = 0.005
# Written by `python models/evaluate.py --compare-bfloat16`, next to registry.json.
PRECISION_RECORD = "precision.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Cards may only name classes from our own code: a card is data and must not be able to
# make the platform import arbitrary modules.
_ALLOWED_ARCHITECTURE_PREFIX = "farm_platform."


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image convertible to RGB."""


@dataclass(frozen=True)
class Detection:
    """One detected leaf: box in image pixels (clipped to the image) and score in [0, 1]."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float


# ---------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Placement:
    """Where and in which precision the models run: device "cpu" or "cuda:N", dtype name."""

    device: str
    dtype: str

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


def _set_threads(placement: Placement) -> None:
    # On a GPU torch's own CPU work is small (box decoding, copies) and the cores are
    # needed to decode photos for it; spinning intra-op threads would take them.
    torch.set_num_threads(1 if placement.device.startswith("cuda") else config.torch_threads())


def configured_placement() -> Placement:
    """`FARM_TORCH_DEVICE` and `FARM_TORCH_DTYPE`, resolved against the GPUs torch sees."""
    return Placement(config.torch_device(torch.cuda.device_count()), config.torch_dtype())


def _registry_for(card: ModelCard) -> ModelRegistry:
    # A card read from <models>/<id>/<version>/card.json knows its models folder.
    if card.directory is not None:
        return ModelRegistry(card.directory.parent.parent)
    return ModelRegistry()


def _architecture_class(path: str) -> type[torch.nn.Module]:
    module_name, _, class_name = path.partition(":")
    if not module_name.startswith(_ALLOWED_ARCHITECTURE_PREFIX):
        raise ModelRegistryError(
            f"architecture {path!r} is outside {_ALLOWED_ARCHITECTURE_PREFIX}*: refusing to import"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ModelRegistryError(f"architecture {path!r} cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ModelRegistryError(f"architecture {path!r} is not a torch.nn.Module")
    return cls


@functools.lru_cache(maxsize=32)
def _load_cached(
    model_id: str,
    version: str,
    sha256: str,
    weights_path: str,
    architecture: str,
    kwargs: str,
    placement: Placement,
) -> torch.nn.Module:
    # Keyed by id + version + sha (and the file) and placement: a new version or retrained
    # weights load anew, while every asset of a run shares one instance per model.
    del model_id, version, sha256
    _set_threads(placement)
    model = _architecture_class(architecture)(**json.loads(kwargs))
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, KeyError, OSError, ValueError) as exc:
        raise ModelRegistryError(
            f"weights {weights_path} do not fit {architecture}: {exc}"
        ) from None
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(device=placement.torch_device, dtype=placement.torch_dtype)


def _load(
    card: ModelCard, task: str, registry: ModelRegistry | None, placement: Placement | None
) -> torch.nn.Module:
    if card.task != task:
        raise ModelRegistryError(f"model {card.id} {card.version} is a {card.task}, not a {task}")
    registry = registry or _registry_for(card)
    path = registry.verify_weights(card)
    if placement is None:
        placement = configured_placement()
        if placement.dtype == "bfloat16":
            require_bfloat16_agreement(card, registry.models_dir, placement.torch_device.type)
    return _load_cached(
        card.id,
        card.version,
        card.sha256,
        str(Path(path).resolve()),
        card.architecture,
        json.dumps(dict(card.architecture_kwargs), sort_keys=True),
        placement,
    )


def load_detector(
    card: ModelCard, registry: ModelRegistry | None = None, placement: Placement | None = None
) -> LeafDetector:
    """The detector of `card`, sha256-verified, in eval mode, cached per process.

    On the configured device and dtype unless `placement` says otherwise (an explicit
    placement skips the bfloat16 rule: that is how the agreement is measured)."""
    model = _load(card, "leaf_detector", registry, placement)
    assert isinstance(model, LeafDetector)
    return model


def load_grader(
    card: ModelCard, registry: ModelRegistry | None = None, placement: Placement | None = None
) -> DiseaseGrader:
    """The grader of `card`, sha256-verified, in eval mode, cached per process (placed as
    `load_detector`'s)."""
    model = _load(card, "disease_grader", registry, placement)
    assert isinstance(model, DiseaseGrader)
    return model


def read_precision_record(models_dir: Path, device_type: str) -> dict[str, Any]:
    """The measured float32/bfloat16 agreement per model id on `device_type` ("cpu",
    "cuda"): {} before any measurement there. CPU and CUDA bfloat16 kernels do not round
    alike, so each kind of device has its own measurement."""
    path = Path(models_dir) / PRECISION_RECORD
    if not path.exists():
        return {}
    try:
        models = json.loads(path.read_text())["bfloat16"].get(device_type, {}).get("models", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelRegistryError(f"{path} is not a precision record: {exc}") from None
    if not isinstance(models, dict):
        raise ModelRegistryError(f"{path}: bfloat16.{device_type}.models must map model ids")
    return models


def bfloat16_refusal(
    card: ModelCard, measured: dict[str, Any] | None, device_type: str = "cpu"
) -> str | None:
    """Why bfloat16 is refused for `card` given its measurement on `device_type` ("cpu",
    "cuda"); None: accepted.

    A measurement counts only for the very weights it was made with (their sha256)."""
    if not measured or measured.get("sha256") != card.sha256:
        return (
            f"no float32/bfloat16 agreement is recorded for {card.id} {card.version} with these "
            f"weights on {device_type}: measure it with `python models/evaluate.py "
            f"--compare-bfloat16 --device {device_type}`"
        )
    if card.task == "leaf_detector":
        # F1 is recorded to 4 decimals: 0.9 - 0.895 must be 0.005, not 0.005000000000000004.
        change = round(abs(float(measured["f1_bfloat16"]) - float(measured["f1_float32"])), 4)
        if change > BFLOAT16_MAX_F1_CHANGE:
            return (
                f"{card.id} {card.version}: held-out F1 moves by {change:.4f} in bfloat16 "
                f"(float32 {measured['f1_float32']:.4f}, bfloat16 {measured['f1_bfloat16']:.4f}),"
                f" more than {BFLOAT16_MAX_F1_CHANGE}"
            )
        return None
    crops = int(measured["crops"])
    agreement = int(measured["agreeing"]) / crops if crops else 0.0
    if agreement < BFLOAT16_MIN_GRADE_AGREEMENT:
        return (
            f"{card.id} {card.version}: bfloat16 grades agree with float32 on {agreement:.2%} of "
            f"{crops} held-out crops, fewer than {BFLOAT16_MIN_GRADE_AGREEMENT:.1%}"
        )
    return None


def require_bfloat16_agreement(card: ModelCard, models_dir: Path, device_type: str) -> None:
    """ConfigError unless `card`'s recorded bfloat16 agreement on `device_type` meets the rule."""
    measured = read_precision_record(models_dir, device_type).get(card.id)
    why = bfloat16_refusal(card, measured, device_type)
    if why is not None:
        raise ConfigError(
            f"{config.FARM_TORCH_DTYPE}=bfloat16 refused: {why}. Use float32 (the default)."
        )


# ---------------------------------------------------------------------------------------
# Parallel CPU work: decoding photos, resizing crops

_T = TypeVar("_T")
_R = TypeVar("_R")
_pool_lock = threading.Lock()
_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
# A forked child inherits the pools but not their threads: work handed to them would wait
# forever. It makes its own on first use.
os.register_at_fork(after_in_child=_pools.clear)


def _cpu_pool(purpose: str, workers: int) -> ThreadPoolExecutor:
    # Threads, not processes: Pillow and zlib release the GIL while they decode and
    # resize, and the decoded arrays need no pickling back to the caller.
    with _pool_lock:
        key = (purpose, workers)
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix=f"farm-{purpose}")
        return _pools[key]


def parallel_map(
    function: Callable[[_T], _R], items: Sequence[_T], purpose: str = "crops"
) -> list[_R]:
    """`[function(item) for item in items]`, in order, on `FARM_TORCH_THREADS` workers.

    Items go in one contiguous slice per worker: a crop resize takes microseconds, and a
    task per item would cost more in hand-offs than it saves. Each `purpose` has its own
    pool: the next chunk's decoding (`"decode"`, in a reader thread) must not queue ahead
    of this chunk's crop resizing, which the device waits for."""
    workers = config.torch_threads()
    if workers < 2 or len(items) < 2:
        return [function(item) for item in items]
    step = math.ceil(len(items) / workers)
    slices = [items[i : i + step] for i in range(0, len(items), step)]
    results: list[_R] = []
    pool = _cpu_pool(purpose, workers)
    for part in pool.map(lambda chunk: [function(item) for item in chunk], slices):
        results.extend(part)
    return results


# ---------------------------------------------------------------------------------------
# Images


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 RGB array; ImageDecodeError says why it is unusable."""
    if not data:
        raise ImageDecodeError("cannot decode image: the data is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(
            f"cannot decode image ({len(data)} bytes, starting {bytes(data[:8])!r}): {exc}"
        ) from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageDecodeError(f"cannot decode image: unexpected decoded shape {array.shape}")
    return array


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Crops are small and written by the thousand: favour speed over a few bytes.
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def box_pixels(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel window (x0, y0, x1, y1) covering a float box, inside the image, >= 1 px."""
    x0 = min(max(int(math.floor(box[0])), 0), width - 1)
    y0 = min(max(int(math.floor(box[1])), 0), height - 1)
    x1 = max(min(int(math.ceil(box[2])), width), x0 + 1)
    y1 = max(min(int(math.ceil(box[3])), height), y0 + 1)
    return x0, y0, x1, y1


def cut_crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    x0, y0, x1, y1 = box_pixels(box, image.shape[0], image.shape[1])
    return image[y0:y1, x0:x1]


def resize_crop(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a crop to the grader input (H, W); training uses the very same function."""
    height, width = size
    if crop.shape[0] == height and crop.shape[1] == width:
        return crop
    return np.asarray(Image.fromarray(crop).resize((width, height), Image.BILINEAR))


def to_tensor(
    arrays: Sequence[np.ndarray] | np.ndarray,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) `dtype` in [0, 1], on `device` (default CPU).

    To a GPU the uint8 pixels travel (a quarter of the float bytes) from pinned memory
    without blocking the host, and become floats there; the values are the same."""
    if device is not None and device.type == "cuda":
        shape = arrays[0].shape if len(arrays) else (0, 0, 3)
        pinned = torch.empty((len(arrays), *shape), dtype=torch.uint8, pin_memory=True)
        if len(arrays):
            # Stacked straight into page-locked memory: one host copy, not two.
            np.stack(arrays, out=pinned.numpy())
        pixels = pinned.to(device, non_blocking=True)
    else:
        stacked = arrays if isinstance(arrays, np.ndarray) else np.stack(arrays)
        pixels = torch.from_numpy(np.ascontiguousarray(stacked))
    tensor = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    return tensor if dtype == torch.float32 else tensor.to(dtype)


def prepare_crops(
    crops: Sequence[np.ndarray],
    input_size: tuple[int, int],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resized grader input for many crops; compute once and pass to every grader."""
    if not crops:
        return torch.zeros((0, 3, *input_size), device=device, dtype=dtype)
    resized = parallel_map(lambda crop: resize_crop(crop, input_size), crops)
    return to_tensor(resized, device, dtype)


def model_placement(
    model: torch.nn.Module | GraderRunner | DetectorRunner,
) -> tuple[torch.device, torch.dtype]:
    """Where a model's inputs go: its weights' device and dtype, or the host in float32
    for a model on a model server (a runner: its client sends host arrays)."""
    if not isinstance(model, torch.nn.Module):
        return torch.device("cpu"), torch.float32
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


# ---------------------------------------------------------------------------------------
# Detection and cropping


# Where a batch runs: in this process (the default) or on a model server (ml/oip.py). A
# runner takes what the local model takes after the CPU-side preparation, so the same
# preparation and post-processing code serves both and results are identical.
DetectorRun = Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]
GraderRun = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DetectorRunner:
    """`run`: (N, S, S, 3) uint8 -> per image (boxes (k, 4) in input pixels, scores (k,))."""

    input_size: int
    run: DetectorRun


@dataclass(frozen=True)
class GraderRunner:
    """`run`: (N, 3, H, W) float in [0, 1] -> (class index (N,), confidence (N,) float32)."""

    run: GraderRun


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
        raw = runner.run(scale_for_detector(chunk, size))
        for image, (boxes, scores) in zip(chunk, raw, strict=True):
            height, width = image.shape[:2]
            sx, sy = width / size, height / size
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
        # Object stores have no folders (and gcsfs would probe the bucket per call).
        for parent in sorted({path.rsplit("/", 1)[0] for path in payload}):
            fs.makedirs(parent, exist_ok=True)
    if getattr(fs, "async_impl", False):
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
        inputs = prepare_crops(list(crops), size, device, dtype)
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
