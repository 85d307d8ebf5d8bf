"""The input/output contract a card declares for a model exported by a team (ONNX or
TorchScript), parsed and validated without torch (Dagster loads cards with the code
location; `farm_platform.ml.formats` runs the models).

    "format": "onnx" | "torchscript"       ("state_dict", the default, takes no contract)
    "input":  {"resize": "stretch" | "letterbox", "pad_value": 0..255 (letterbox),
               "channel_order": "RGB" | "BGR", "layout": "NCHW" | "NHWC",
               "scale": 1/255, "mean": [3 floats], "std": [3 floats],
               "dtype": "float32" | "float16" | "uint8", "batch": null | n}
    "output", detector: {"form": "boxes" | "raw", "box_format": "xyxy" | "cxcywh" (raw),
               "scores": "probabilities" | "logits" (raw), "classes": [class indices],
               "score_threshold", "iou_threshold" (raw), "max_detections"}
    "output", grader:   {"form": "logits" | "probabilities", "label_map": [grade per class],
               "class_names": [names] (optional)}
    "server" (external_oip only): {"url": "grpc://host:port" | "http(s)://host:port", or
               "url_setting": "FARM_EXTERNAL_OIP_<NAME>" (the variable holding it),
               "token_setting": "FARM_EXTERNAL_OIP_<NAME>" (optional bearer token),
               "model": name, "version": version, "input": tensor, "outputs": [tensors]}

The input's size is the card's `input_size` ([height, width]). The model sees
`(pixel * scale - mean) / std` per channel, in its own channel order and layout. An
external_oip model is the same contract on another server: the client encodes the input
tensor and decodes the output tensors as it does for an ONNX file run here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farm_platform.config import EXTERNAL_OIP_SETTING_PREFIX

EXTERNAL_OIP = "external_oip"
FORMATS = ("state_dict", "onnx", "torchscript", EXTERNAL_OIP)
_CHOICES = {
    "resize": ("stretch", "letterbox"),
    "channel_order": ("RGB", "BGR"),
    "layout": ("NCHW", "NHWC"),
    "dtype": ("float32", "float16", "uint8"),
}
DETECTOR_FORMS = ("boxes", "raw")
GRADER_FORMS = ("logits", "probabilities")

# A field's failure: (dotted field name, why) -> the card's error naming file and field.
Fail = Callable[[str, str], Exception]


@dataclass(frozen=True)
class InputContract:
    resize: str = "stretch"
    pad_value: int = 0
    channel_order: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dtype: str = "float32"
    # A model exported for a fixed batch (often 1 for detectors) is fed that many at a time.
    batch: int | None = None


@dataclass(frozen=True)
class DetectorOutput:
    form: str
    box_format: str = "xyxy"
    scores: str = "probabilities"
    classes: tuple[int, ...] | None = None
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    max_detections: int = 20


@dataclass(frozen=True)
class GraderOutput:
    form: str
    label_map: tuple[int, ...]
    class_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ExternalServer:
    """Where an external_oip card's model runs: the server (its URL, or the setting that
    holds it), the model's name and version there, and its tensors' names."""

    url: str | None
    url_setting: str | None
    token_setting: str | None
    model: str
    version: str
    input: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ModelContract:
    format: str
    input: InputContract
    output: DetectorOutput | GraderOutput
    server: ExternalServer | None = None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _triple(section: Mapping[str, Any], name: str, default: tuple, fail: Fail) -> tuple:
    value = section.get(name, list(default))
    if not (isinstance(value, list) and len(value) == 3 and all(_number(v) for v in value)):
        raise fail(f"input.{name}", f"= {value!r} must be 3 numbers, one per channel")
    if name == "std" and any(v == 0 for v in value):
        raise fail("input.std", f"= {value!r} must not hold a zero")
    return tuple(float(v) for v in value)


def _section(data: Mapping[str, Any], name: str, fail: Fail) -> Mapping[str, Any]:
    if name not in data:
        raise fail(name, f"is missing: a {data.get('format')} model's card declares its {name}")
    section = data[name]
    if not isinstance(section, Mapping):
        raise fail(name, f"must be an object, got {section!r}")
    return section


def _choice(section: Mapping[str, Any], prefix: str, name: str, options: Sequence[str], fail: Fail):
    value = section.get(name, options[0])
    if value not in options:
        raise fail(f"{prefix}.{name}", f"= {value!r} must be one of {', '.join(options)}")
    return value


def parse_input(data: Mapping[str, Any], fail: Fail) -> InputContract:
    section = _section(data, "input", fail)
    choices = {name: _choice(section, "input", name, opts, fail) for name, opts in _CHOICES.items()}
    scale = section.get("scale", 1 / 255)
    if not _number(scale) or scale <= 0:
        raise fail("input.scale", f"= {scale!r} must be a positive number (1/255: pixels to 0..1)")
    pad = section.get("pad_value", 0)
    if not _int(pad) or not 0 <= pad <= 255:
        raise fail("input.pad_value", f"= {pad!r} must be a grey level 0..255")
    batch = section.get("batch")
    if batch is not None and (not _int(batch) or batch < 1):
        raise fail("input.batch", f"= {batch!r} must be null (any batch) or a positive integer")
    contract = InputContract(
        pad_value=pad,
        scale=float(scale),
        mean=_triple(section, "mean", (0.0, 0.0, 0.0), fail),
        std=_triple(section, "std", (1.0, 1.0, 1.0), fail),
        batch=batch,
        **choices,
    )
    if contract.dtype == "uint8" and (contract.scale, contract.mean, contract.std) != (
        1.0,
        (0.0,) * 3,
        (1.0,) * 3,
    ):
        raise fail("input.dtype", "= 'uint8' takes raw pixels: scale 1, mean 0 and std 1")
    return contract


def _detector_output(section: Mapping[str, Any], fail: Fail) -> DetectorOutput:
    form = _choice(section, "output", "form", DETECTOR_FORMS, fail)
    classes = section.get("classes")
    if classes is not None and (
        not isinstance(classes, list) or not classes or not all(_int(c) and c >= 0 for c in classes)
    ):
        raise fail("output.classes", f"= {classes!r} must be a list of class indices (leaves)")
    numbers = {}
    for name, default, low, high in (
        ("score_threshold", 0.3, 0.0, 1.0),
        ("iou_threshold", 0.5, 0.0, 1.0),
    ):
        value = section.get(name, default)
        if not _number(value) or not low <= value <= high:
            raise fail(f"output.{name}", f"= {value!r} must be a number in [{low}, {high}]")
        numbers[name] = float(value)
    most = section.get("max_detections", 20)
    if not _int(most) or most < 1:
        raise fail("output.max_detections", f"= {most!r} must be a positive integer")
    return DetectorOutput(
        form=form,
        box_format=_choice(section, "output", "box_format", ("xyxy", "cxcywh"), fail),
        scores=_choice(section, "output", "scores", ("probabilities", "logits"), fail),
        classes=tuple(classes) if classes is not None else None,
        max_detections=most,
        **numbers,
    )


def _grader_output(section: Mapping[str, Any], grades: Sequence[int], fail: Fail) -> GraderOutput:
    form = _choice(section, "output", "form", GRADER_FORMS, fail)
    if "label_map" not in section:
        raise fail(
            "output.label_map",
            "is missing: list the grade of each class the model outputs, in its class order "
            f"(e.g. {list(grades)} when class i is grade i)",
        )
    label_map = section["label_map"]
    if (
        not isinstance(label_map, list)
        or not label_map
        or not all(_int(g) and g in grades for g in label_map)
    ):
        raise fail(
            "output.label_map", f"= {label_map!r} must list, per class, a grade of {list(grades)}"
        )
    names = section.get("class_names")
    if names is not None and (
        not isinstance(names, list)
        or len(names) != len(label_map)
        or not all(isinstance(n, str) for n in names)
    ):
        raise fail("output.class_names", f"must be {len(label_map)} names, one per class")
    return GraderOutput(form, tuple(label_map), tuple(names) if names is not None else None)


def parse_contract(
    data: Mapping[str, Any], task: str, grades: Sequence[int] | None, fail: Fail
) -> ModelContract | None:
    """The contract of a card's parsed JSON; None for a `state_dict` card (the project's own
    architectures, whose input and output the code knows)."""
    model_format = data.get("format", "state_dict")
    if model_format not in FORMATS:
        raise fail("format", f"= {model_format!r} must be one of {', '.join(FORMATS)}")
    if model_format == "state_dict":
        for name in ("input", "output"):
            if name in data:
                raise fail(
                    name,
                    "is for onnx and torchscript cards (and external_oip): a state_dict "
                    "card has none",
                )
    if model_format != EXTERNAL_OIP and "server" in data:
        raise fail("server", f'is for external_oip cards only: this card is "{model_format}"')
    if model_format == "state_dict":
        return None
    model_input = parse_input(data, fail)
    section = _section(data, "output", fail)
    output: DetectorOutput | GraderOutput
    if task == "disease_grader":
        output = _grader_output(section, grades or (), fail)
    else:
        output = _detector_output(section, fail)
    server = _server(data, output, fail) if model_format == EXTERNAL_OIP else None
    return ModelContract(model_format, model_input, output, server)


def _setting(section: Mapping[str, Any], name: str, fail: Fail) -> str | None:
    value = section.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value.startswith(EXTERNAL_OIP_SETTING_PREFIX)
        or not value.replace("_", "").isalnum()
        or not value.isupper()
    ):
        # A card is data: it may only name variables set aside for it, never (say) a cloud
        # credential that would then be sent to the server it names.
        raise fail(
            f"server.{name}",
            f"= {value!r} must be an environment variable named "
            f"{EXTERNAL_OIP_SETTING_PREFIX}<NAME> (capitals, digits, '_')",
        )
    return value


def _name(section: Mapping[str, Any], name: str, fail: Fail) -> str:
    value = section.get(name)
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise fail(f"server.{name}", f"= {value!r} must be a non-empty string without '/'")
    return value


def _server(
    data: Mapping[str, Any], output: DetectorOutput | GraderOutput, fail: Fail
) -> ExternalServer:
    section = _section(data, "server", fail)
    url, url_setting = section.get("url"), _setting(section, "url_setting", fail)
    if (url is None) == (url_setting is None):
        raise fail("server.url", "give either url (the server's address) or url_setting")
    if url is not None and (
        not isinstance(url, str) or not url.startswith(("grpc://", "http://", "https://"))
    ):
        raise fail("server.url", f"= {url!r} must start with grpc://, http:// or https://")
    outputs = section.get("outputs")
    if (
        not isinstance(outputs, list)
        or not outputs
        or len(set(map(str, outputs))) != len(outputs)
        or not all(isinstance(o, str) and o for o in outputs)
    ):
        raise fail("server.outputs", f"= {outputs!r} must list the output tensors' names")
    wanted = {"raw": 1, "logits": 1, "probabilities": 1}.get(output.form)
    if isinstance(output, DetectorOutput) and output.form == "boxes":
        wanted = 3 if output.classes is not None else 2
        if len(outputs) not in (wanted, 3):
            raise fail(
                "server.outputs",
                f"= {outputs!r}: output.form 'boxes' reads boxes, then scores"
                + (", then labels (output.classes filters by them)" if wanted == 3 else ""),
            )
    elif len(outputs) != wanted:
        raise fail("server.outputs", f"= {outputs!r}: output.form {output.form!r} reads 1 tensor")
    return ExternalServer(
        url=url.rstrip("/") if url else None,
        url_setting=url_setting,
        token_setting=_setting(section, "token_setting", fail),
        model=_name(section, "model", fail),
        version=_name(section, "version", fail),
        input=_name(section, "input", fail),
        outputs=tuple(outputs),
    )
