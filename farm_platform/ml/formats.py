"""Models a team exported: ONNX (run by onnxruntime) and TorchScript (torch.jit), run under
the input/output contract their card declares (`farm_platform.ml.contract`).

They come out as the same runners the model server's client gives (`DetectorRunner`,
`GraderRunner`), so the assets' code runs them as it runs the shipped models. Nothing is
unpickled: onnxruntime reads a protobuf, and `torch.jit.load` reads TorchScript with its
own C++ unpickler, which only builds tensors, containers and the archive's TorchScript
classes (a pickled `os.system` is refused: "Unknown type name 'posix.system'", tested).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from farm_platform.ml.contract import DetectorOutput, GraderOutput, InputContract, ModelContract
from farm_platform.ml.nms import non_max_suppression
from farm_platform.ml.pixels import cpu_threads, letterbox, parallel_map, resize_crop
from farm_platform.ml.registry import ModelCard, ModelRegistryError
from farm_platform.ml.runners import DetectorRun, DetectorRunner, GraderRunner

_ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}


class ContractError(ModelRegistryError):
    """A model whose input or output is not what its card declares; the message names the
    card's field."""


@dataclass(frozen=True)
class Signature:
    """What an ONNX graph declares of its one input: name, shape (None: dynamic), dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class ExportedModel:
    """An exported model, loaded: `session` maps one input array to its output arrays."""

    label: str  # "<id> <version> (<format>)", for messages
    task: str
    input_size: tuple[int, int]
    contract: ModelContract
    session: Callable[[np.ndarray], list[np.ndarray]]
    signature: Signature | None

    def error(self, field: str, why: str) -> ContractError:
        return ContractError(f"model {self.label}: {field}: {why}")

    def run(self, array: np.ndarray) -> list[list[np.ndarray]]:
        """The outputs per batch of the contract's batch size (the last one padded)."""
        batch = self.contract.input.batch
        if batch is None or len(array) == batch:
            return [self.session(array)]
        chunks = []
        for start in range(0, len(array), batch):
            part = array[start : start + batch]
            if len(part) < batch:  # a model exported for a fixed batch takes no other
                padding = np.zeros((batch - len(part), *part.shape[1:]), dtype=part.dtype)
                part = np.concatenate([part, padding])
            chunks.append(self.session(part))
        return chunks


def first_line(exc: Exception) -> str:
    """An exception's first line (onnxruntime's and TorchScript's run to many), or its type."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def describe(outputs: Sequence[np.ndarray]) -> str:
    shapes = ", ".join(str(tuple(o.shape)) for o in outputs)
    return f"{len(outputs)} output{'s' if len(outputs) != 1 else ''} {shapes}"


# ------------------------------------------------------------------------------ loading


def _onnx_session(path: str) -> tuple[Callable[[np.ndarray], list[np.ndarray]], Signature]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types
        raise ModelRegistryError(
            f"{path} is not an ONNX model onnxruntime runs: {first_line(exc)}"
        ) from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelRegistryError(
            f"{path}: the ONNX graph takes {len(inputs)} inputs ({names}); the platform feeds "
            "one image tensor"
        )
    spec = inputs[0]
    shape = tuple(d if isinstance(d, int) else None for d in spec.shape)
    signature = Signature(spec.name, shape, _ONNX_TYPES.get(spec.type, spec.type))

    def run(array: np.ndarray) -> list[np.ndarray]:
        return list(session.run(None, {spec.name: array}))

    return run, signature


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):  # e.g. {"boxes": ..., "scores": ..., "labels": ...}
        keys = [k for k in ("boxes", "scores", "labels") if k in value] or list(value)
        value = [value[k] for k in keys]
    if isinstance(value, tuple | list) and all(isinstance(t, torch.Tensor) for t in value):
        return list(value)
    raise TypeError(f"the model returned {type(value).__name__}, not tensors")


def _torchscript_session(path: str, device: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated for torch.export; TorchScript is what teams hold.
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location=device)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelRegistryError(
            f"{path} is not a TorchScript archive: {first_line(exc)}"
        ) from None
    module.eval()

    def run(array: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            outputs = _tensors(module(torch.from_numpy(array).to(device)))
        return [(t.float() if t.is_floating_point() else t).cpu().numpy() for t in outputs]

    return run


@functools.lru_cache(maxsize=32)
def load_exported(
    label: str,
    task: str,
    sha256: str,
    path: str,
    input_size: tuple[int, int],
    contract: ModelContract,
    device: str = "cpu",
) -> ExportedModel:
    """The model file at `path` (sha256-verified by the caller), cached per file and place."""
    del sha256  # in the key: retrained weights load anew
    if contract.format == "onnx":
        session, signature = _onnx_session(path)
    else:
        session, signature = _torchscript_session(path, device), None
    return ExportedModel(label, task, input_size, contract, session, signature)


def load_card(card: ModelCard, path: str, device: str = "cpu") -> ExportedModel:
    assert card.contract is not None, "a state_dict card is loaded by ml/loading.py"
    label = f"{card.id} {card.version} ({card.format})"
    size = (card.input_size[0], card.input_size[1])
    return load_exported(label, card.task, card.sha256, path, size, card.contract, device)


# ------------------------------------------------------------------------------ input


def encode(pixels: np.ndarray, spec: InputContract, layout: str | None = None) -> np.ndarray:
    """(N, H, W, 3) RGB pixels 0..255 -> the model's input: channel order, scale, mean and
    std (given in the model's channel order), dtype and layout as the contract says."""
    if spec.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    if spec.dtype == "uint8":
        array = pixels if pixels.dtype == np.uint8 else np.rint(pixels).astype(np.uint8)
    else:
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        array = (pixels.astype(np.float32) * np.float32(spec.scale) - mean) / std
        array = array.astype(spec.dtype, copy=False)
    if (layout or spec.layout) == "NCHW":
        array = array.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(array)


def fit_photos(
    photos: Sequence[np.ndarray], size: tuple[int, int], spec: InputContract
) -> tuple[np.ndarray, list[tuple[float, float, int, int]]]:
    """Photos resized to the input (H, W) and, per photo, (scale x, scale y, left, top)."""

    def fit(photo: np.ndarray) -> tuple[np.ndarray, tuple[float, float, int, int]]:
        if spec.resize == "letterbox":
            return letterbox(photo, size, spec.pad_value)
        # As the shipped detector's input is scaled (PIL bilinear), stretched per axis.
        geometry = (size[1] / photo.shape[1], size[0] / photo.shape[0], 0, 0)
        return resize_crop(photo, size), geometry

    if not photos:
        return np.zeros((0, *size, 3), np.uint8), []
    fitted = parallel_map(fit, photos)
    return np.stack([image for image, _ in fitted]), [geometry for _, geometry in fitted]


# ------------------------------------------------------------------------------ detector


def _per_image(array: np.ndarray, n: int, rank: int) -> np.ndarray:
    # A model exported for batches of one may drop the batch dimension.
    return array[None] if n == 1 and array.ndim == rank - 1 else array


def _boxes_form(
    model: ExportedModel, out: DetectorOutput, outputs: list[np.ndarray], n: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    expected = "boxes (N, K, 4) in input pixels, then scores (N, K)"
    if len(outputs) < 2:
        raise model.error(
            "output.form",
            f"declared 'boxes' ({expected}) but the model returned {describe(outputs)}; "
            'per-anchor predictions are declared as "form": "raw"',
        )
    boxes, scores = _per_image(outputs[0], n, 3), _per_image(outputs[1], n, 2)
    if (
        boxes.ndim != 3
        or boxes.shape[0] != n
        or boxes.shape[2] != 4
        or scores.shape != boxes.shape[:2]
    ):
        raise model.error(
            "output.form",
            f"declared 'boxes' ({expected}) but the model returned {describe(outputs)} for "
            f"{n} image(s)",
        )
    keep = scores >= out.score_threshold
    if out.classes is not None:
        if len(outputs) < 3:
            raise model.error(
                "output.classes",
                "filters by class, but the model returns no labels (a third output)",
            )
        keep &= np.isin(outputs[2].reshape(scores.shape), out.classes)
    results = []
    for i in range(n):
        found_boxes, found_scores = boxes[i][keep[i]], scores[i][keep[i]]
        order = np.argsort(-found_scores, kind="stable")[: out.max_detections]
        results.append(
            (found_boxes[order].astype(np.float32), found_scores[order].astype(np.float32))
        )
    return results


def _raw_form(
    model: ExportedModel, out: DetectorOutput, outputs: list[np.ndarray], n: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    predictions = _per_image(outputs[0], n, 3) if len(outputs) == 1 else None
    if (
        predictions is None
        or predictions.ndim != 3
        or predictions.shape[0] != n
        or predictions.shape[2] < 5
    ):
        raise model.error(
            "output.form",
            "declared 'raw' (one (N, anchors, 4 + classes) tensor: box, then a score per class) "
            f"but the model returned {describe(outputs)} for {n} image(s)",
        )
    class_scores = predictions[..., 4:].astype(np.float32)
    classes = out.classes if out.classes is not None else tuple(range(class_scores.shape[2]))
    if max(classes) >= class_scores.shape[2]:
        raise model.error(
            "output.classes",
            f"names class {max(classes)}, but the predictions carry {class_scores.shape[2]} "
            "class score(s) after the 4 box numbers",
        )
    if out.scores == "logits":
        class_scores = 1.0 / (1.0 + np.exp(-class_scores))
    # Class-agnostic: every kept class is a leaf, and one leaf must give one box.
    leaf_scores = class_scores[..., list(classes)].max(axis=2)
    boxes = predictions[..., :4].astype(np.float32)
    if out.box_format == "cxcywh":
        half = boxes[..., 2:] / 2
        boxes = np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=2)
    return non_max_suppression(
        boxes, leaf_scores, out.score_threshold, out.iou_threshold, out.max_detections
    )


def detect_fitted(model: ExportedModel, fitted: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(N, H, W, 3) uint8 photos already fitted to the input -> per photo boxes (k, 4) in
    input pixels and scores (k,), best first (what the model server runs)."""
    out = model.contract.output
    assert isinstance(out, DetectorOutput)
    decode = _boxes_form if out.form == "boxes" else _raw_form
    batch = model.contract.input.batch or len(fitted)
    results: list[tuple[np.ndarray, np.ndarray]] = []
    for outputs in model.run(encode(fitted, model.contract.input)):
        results.extend(decode(model, out, outputs, batch))
    return results[: len(fitted)]


def photo_detector(
    run_fitted: DetectorRun, size: tuple[int, int], spec: InputContract
) -> Callable[[Sequence[np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """Photos as they are -> fitted as `spec` says -> `run_fitted` (here or on the model
    server) -> per photo boxes in the photo's pixels and scores."""

    def run_photos(photos: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        fitted, geometry = fit_photos(photos, size, spec)
        mapped = []
        for (boxes, scores), (sx, sy, left, top) in zip(run_fitted(fitted), geometry, strict=True):
            shift = np.array([left, top, left, top], np.float32)
            scale = np.array([sx, sy, sx, sy], np.float32)
            mapped.append((((boxes - shift) / scale).astype(np.float32), scores))
        return mapped

    return run_photos


def detect_photos(
    model: ExportedModel, photos: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per photo: boxes (k, 4) in the photo's pixels and scores (k,), best first."""
    run = functools.partial(detect_fitted, model)
    return photo_detector(run, model.input_size, model.contract.input)(photos)


def detector_runner(model: ExportedModel) -> DetectorRunner:
    run = functools.partial(detect_fitted, model)
    return DetectorRunner(model.input_size[0], run, functools.partial(detect_photos, model))


# ------------------------------------------------------------------------------ grader


def class_probabilities(model: ExportedModel, outputs: list[np.ndarray], n: int) -> np.ndarray:
    out = model.contract.output
    assert isinstance(out, GraderOutput)
    classes = len(out.label_map)
    values = _per_image(outputs[0], n, 2) if len(outputs) == 1 else None
    if values is None or values.ndim != 2 or values.shape[0] != n:
        raise model.error(
            "output.form",
            f"declared {out.form} (one (N, classes) tensor) but the model returned "
            f"{describe(outputs)} for {n} crop(s)",
        )
    if values.shape[1] != classes:
        raise model.error(
            "output.label_map",
            f"maps {classes} classes, but the model gives {values.shape[1]} {out.form} per crop",
        )
    values = torch.from_numpy(values.astype(np.float32))
    # Softmax in float32 as the shipped graders' confidences are.
    return (torch.softmax(values, dim=1) if out.form == "logits" else values).numpy()


def grade_inputs(model: ExportedModel, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) crops in [0, 1] -> (grade (N,), its probability (N,)). Classes that map
    to the same grade add up."""
    out = model.contract.output
    assert isinstance(out, GraderOutput)
    n = inputs.shape[0]
    pixels = inputs.float().mul(255.0).permute(0, 2, 3, 1).cpu().numpy()
    batch = model.contract.input.batch or n
    probabilities = np.concatenate(
        [
            class_probabilities(model, o, batch)
            for o in model.run(encode(pixels, model.contract.input))
        ]
    )[:n]
    grades = max(out.label_map) + 1
    to_grade = np.zeros((len(out.label_map), grades), dtype=np.float32)
    to_grade[np.arange(len(out.label_map)), list(out.label_map)] = 1.0
    per_grade = probabilities @ to_grade
    index = per_grade.argmax(axis=1)
    return index, per_grade[np.arange(n), index].astype(np.float32)


def grader_runner(model: ExportedModel) -> GraderRunner:
    spec = model.contract.input
    return GraderRunner(functools.partial(grade_inputs, model), spec.resize, spec.pad_value)
