"""`models add`'s check of an exported model's contract on a probe batch: the ONNX graph's
declared input against the card, then a batch through the very code the runs use. Each
mismatch is one `ContractError` line naming the card's field."""

from __future__ import annotations

import numpy as np
import torch

from farm_platform.ml import formats
from farm_platform.ml.contract import GraderOutput
from farm_platform.ml.formats import ContractError, ExportedModel
from farm_platform.ml.pixels import prepare_crops
from farm_platform.ml.registry import ModelCard, ModelRegistry

PROBE_BATCH = 2
# Rows of declared probabilities must sum to 1 within this (float16 exports included).
_PROBABILITY_SUM_TOLERANCE = 1e-2


def _check_signature(model: ExportedModel) -> None:
    """The ONNX graph's declared input against the card's input fields."""
    signature = model.signature
    if signature is None:  # TorchScript declares no input shape: the probe run tells
        return
    spec, (height, width) = model.contract.input, model.input_size
    shape, graph = signature.shape, f"the graph's input {signature.name!r} is {signature.shape}"
    if len(shape) != 4:
        raise model.error("input.layout", f"{graph}, not a 4-dimensional image batch")
    channels = 1 if spec.layout == "NCHW" else 3
    other = "NHWC" if spec.layout == "NCHW" else "NCHW"
    if shape[channels] not in (3, None):
        other_channels = 3 if spec.layout == "NCHW" else 1
        why = f", which is {other}" if shape[other_channels] == 3 else ""
        raise model.error("input.layout", f"declared {spec.layout}, but {graph}{why}")
    spatial = (shape[2], shape[3]) if spec.layout == "NCHW" else (shape[1], shape[2])
    if any(d is not None and d != want for d, want in zip(spatial, (height, width), strict=True)):
        raise model.error("input_size", f"the card says [{height}, {width}], but {graph}")
    if signature.dtype != spec.dtype:
        raise model.error(
            "input.dtype", f"the card says {spec.dtype}, but {graph} of {signature.dtype}"
        )
    if shape[0] is not None and shape[0] != spec.batch:
        raise model.error(
            "input.batch", f'{graph}: it takes batches of {shape[0]}; declare "batch": {shape[0]}'
        )


def _probe_pixels(model: ExportedModel) -> np.ndarray:
    """A probe batch at the input size, RGB 0..255: smooth gradients, not noise."""
    height, width = model.input_size
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack(
        [xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), 128 + 0 * xs], -1
    )
    return np.stack([image, image[::-1, ::-1]] * (PROBE_BATCH // 2)).astype(np.uint8)


def _refused(model: ExportedModel, exc: Exception) -> ContractError:
    """Why the model refused the probe: the other layout's success names input.layout."""
    spec = model.contract.input
    other = "NHWC" if spec.layout == "NCHW" else "NCHW"
    pixels = _probe_pixels(model)
    try:
        model.session(formats.encode(pixels, spec, layout=other))
    except Exception:  # noqa: BLE001 - it fails either way: report the declared layout's error
        shape = formats.encode(pixels, spec).shape
        return model.error(
            "input",
            f"the model refused a probe batch {shape} {spec.dtype} ({spec.layout}, "
            f"input_size {list(model.input_size)}): {formats.first_line(exc)}",
        )
    return model.error("input.layout", f"declared {spec.layout}, but the model runs on {other}")


def _probe_detector(model: ExportedModel) -> str:
    photos = list(_probe_pixels(model))
    # One photo of another shape: the resize (stretch or letterbox) is exercised too.
    photos[-1] = photos[-1][: max(1, photos[-1].shape[0] * 2 // 3)]
    try:
        results = formats.detect_photos(model, photos)
    except ContractError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime and TorchScript raise their own
        raise _refused(model, exc) from None
    for boxes, scores in results:
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise model.error("output.form", "the probe batch gave non-finite boxes or scores")
    found = [len(scores) for _, scores in results]
    return f"leaves found per probe photo {found}"


def _probe_grader(model: ExportedModel) -> str:
    spec, out = model.contract.input, model.contract.output
    assert isinstance(out, GraderOutput)
    crops = prepare_crops(
        list(_probe_pixels(model)),
        model.input_size,
        None,
        torch.float32,
        spec.resize,
        spec.pad_value,
    )
    try:
        grades, confidence = formats.grade_inputs(model, crops)
    except ContractError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime and TorchScript raise their own
        raise _refused(model, exc) from None
    if out.form == "probabilities":
        pixels = crops.mul(255.0).permute(0, 2, 3, 1).numpy()
        outputs = model.run(formats.encode(pixels, spec))[0]
        values = formats.class_probabilities(model, outputs, spec.batch or PROBE_BATCH)
        sums = values.sum(axis=1)
        if (
            (values < 0).any()
            or (values > 1).any()
            or np.abs(sums - 1).max() > _PROBABILITY_SUM_TOLERANCE
        ):
            raise model.error(
                "output.form",
                f"declared probabilities, but the probe rows sum to {np.round(sums, 3)}: "
                'logits? declare "form": "logits"',
            )
    if not np.isfinite(confidence).all():
        raise model.error("output.form", "the probe batch gave non-finite scores")
    return f"grades {grades.tolist()} for the probe crops"


def probe_exported(card: ModelCard, registry: ModelRegistry) -> str:
    """Check an ONNX, TorchScript or external_oip card's contract on a probe batch (an
    external one: its server's model metadata first, then the batch on that server);
    what it gave."""
    path = registry.verify_weights(card)
    if path is None:
        from farm_platform.ml.external_oip import load_external

        model = load_external(card)
    else:
        model = formats.load_card(card, str(path.resolve()))
    _check_signature(model)
    spec = model.contract.input
    done = _probe_detector(model) if card.task == "leaf_detector" else _probe_grader(model)
    height, width = card.input_size
    return (
        f"{card.format}: probe batch of {PROBE_BATCH} {height}x{width} {spec.layout} "
        f"{spec.dtype}, {done}"
    )
