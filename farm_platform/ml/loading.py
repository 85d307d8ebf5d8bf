"""Loading the shipped models onto the configured device and precision, with the sha256
check and the bfloat16 agreement rule (`farm_platform.ml.inference` is the public entry)."""

from __future__ import annotations

import functools
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from farm_platform import config, config_values
from farm_platform.config import ConfigError
from farm_platform.ml.architectures import DiseaseGrader, LeafDetector
from farm_platform.ml.pixels import cpu_threads
from farm_platform.ml.registry import (
    PRECISION_RECORD,
    ModelCard,
    ModelRegistry,
    ModelRegistryError,
)
from farm_platform.ml.runners import DetectorRunner, GraderRunner
from farm_platform.ml.settings import InferenceSettings

# bfloat16 is offered only for models whose measured agreement with float32 meets these
# (issue 17): grades equal on this share of crops, detector F1 within this distance.
BFLOAT16_MIN_GRADE_AGREEMENT = 0.995
BFLOAT16_MAX_F1_CHANGE = 0.005
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Cards may only name classes from our own code: a card is data and must not be able to
# make the platform import arbitrary modules.
_ALLOWED_ARCHITECTURE_PREFIX = "farm_platform."


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
    torch.set_num_threads(1 if placement.device.startswith("cuda") else cpu_threads())


def configured_placement(settings: InferenceSettings | None = None) -> Placement:
    """The settings' device and dtype (FARM_TORCH_DEVICE, FARM_TORCH_DTYPE; the defaults
    without `settings`), the device resolved against the GPUs torch sees."""
    settings = settings or InferenceSettings()
    device = config_values.torch_device(settings.device, torch.cuda.device_count())
    return Placement(device, config_values.torch_dtype(settings.dtype))


def _registry_for(card: ModelCard) -> ModelRegistry:
    # A card read from <models>/<id>/<version>/card.json knows its models folder.
    if card.directory is not None:
        return ModelRegistry(card.directory.parent.parent)
    raise ModelRegistryError(
        f"model {card.id} {card.version}: its card was not read from a models folder, so "
        "its weights cannot be found: pass the registry it came from"
    )


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
    card: ModelCard,
    task: str,
    registry: ModelRegistry | None,
    placement: Placement | None,
    settings: InferenceSettings | None,
) -> Any:
    if card.task != task:
        raise ModelRegistryError(f"model {card.id} {card.version} is a {card.task}, not a {task}")
    # A wait policy OpenMP does not know it ignores in silence: refuse it at every load,
    # cached model or not.
    config_values.omp_wait_policy(os.environ.get(config.OMP_WAIT_POLICY))
    registry = registry or _registry_for(card)
    path = registry.verify_weights(card)
    if card.contract is not None:
        # An exported model runs in the dtype its contract declares: FARM_TORCH_DTYPE and
        # its bfloat16 rule are for the project's own architectures.
        from farm_platform.ml import external_oip, formats

        if path is None:  # its forward pass runs on the server its card names
            timeout = (settings or InferenceSettings()).oip_timeout_seconds
            model = external_oip.load_external(card, timeout_seconds=timeout)
        else:
            device = (placement or configured_placement(settings)).device
            model = formats.load_card(card, str(path.resolve()), device)
        if task == "leaf_detector":
            return formats.detector_runner(model)
        return formats.grader_runner(model)
    if placement is None:
        placement = configured_placement(settings)
        if placement.dtype == "bfloat16":
            require_bfloat16_agreement(card, registry.models_dir, placement.torch_device.type)
    return _load_cached(
        card.id,
        card.version,
        card.sha256,
        str(path.resolve()),
        card.architecture,
        json.dumps(dict(card.architecture_kwargs), sort_keys=True),
        placement,
    )


def load_detector(
    card: ModelCard,
    registry: ModelRegistry | None = None,
    placement: Placement | None = None,
    settings: InferenceSettings | None = None,
) -> LeafDetector | DetectorRunner:
    """The detector of `card`, sha256-verified, in eval mode, cached per process.

    On the device and dtype of `settings` (the defaults without them) unless `placement`
    says otherwise (an explicit placement skips the bfloat16 rule: that is how the
    agreement is measured). An ONNX or TorchScript card gives a `DetectorRunner` that
    applies its contract."""
    model = _load(card, "leaf_detector", registry, placement, settings)
    assert isinstance(model, LeafDetector | DetectorRunner)
    return model


def load_grader(
    card: ModelCard,
    registry: ModelRegistry | None = None,
    placement: Placement | None = None,
    settings: InferenceSettings | None = None,
) -> DiseaseGrader | GraderRunner:
    """The grader of `card`, sha256-verified, in eval mode, cached per process (placed as
    `load_detector`'s; an ONNX or TorchScript card gives a `GraderRunner`)."""
    model = _load(card, "disease_grader", registry, placement, settings)
    assert isinstance(model, DiseaseGrader | GraderRunner)
    return model


def read_precision_record(models_dir: Path | str, device_type: str) -> dict[str, Any]:
    """The measured float32/bfloat16 agreement per model id on `device_type` ("cpu",
    "cuda"): {} before any measurement there. CPU and CUDA bfloat16 kernels do not round
    alike, so each kind of device has its own measurement. `models_dir`: a folder or a
    bucket folder's URL."""
    registry = ModelRegistry(models_dir)
    path = registry.store.location(PRECISION_RECORD)
    try:
        record = registry.read_json(PRECISION_RECORD)
        if record is None:
            return {}
        models = record["bfloat16"].get(device_type, {}).get("models", {})
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


def require_bfloat16_agreement(card: ModelCard, models_dir: Path | str, device_type: str) -> None:
    """ConfigError unless `card`'s recorded bfloat16 agreement on `device_type` meets the rule."""
    measured = read_precision_record(models_dir, device_type).get(card.id)
    why = bfloat16_refusal(card, measured, device_type)
    if why is not None:
        raise ConfigError(
            f"{config.FARM_TORCH_DTYPE}=bfloat16 refused: {why}. Use float32 (the default)."
        )
