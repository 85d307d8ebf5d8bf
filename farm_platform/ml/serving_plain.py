"""`models serve --plain MODEL_ID:VERSION=NAME:SERVED_VERSION`: a registered version served
the way a plain model server (KServe's runtimes, Triton) serves an exported model: its own
input tensor in, its own output tensors out, under the name and version given, with none
of the platform's preparation or decoding. The tensors are named as Triton names a PyTorch
model's: `INPUT__0`, then `OUTPUT__0`, `OUTPUT__1`, ...

What it is for: an external_oip card (docs/models.md) can be tried against the project's
own server before it points at a team's, and the tests do exactly that. Served plain: ONNX
and TorchScript cards (the contract their card declares is the contract of the tensors),
and the shipped graders (float32 NCHW crops in [0, 1] -> logits). A state_dict detector's
heads are not a declared output form: it is refused. Needs the `serve` extra (kserve).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from farm_platform.config import ConfigError
from farm_platform.ml import inference, oip_wire
from farm_platform.ml.contract import EXTERNAL_OIP, InputContract
from farm_platform.ml.registry import ModelCard, ModelRegistry, ModelRegistryError

PLAIN_INPUT = "INPUT__0"
_SPEC = re.compile(r"^(?P<id>[^:=]+):(?P<version>[^:=]+)=(?P<name>[^:=/]+):(?P<served>[^:=/]+)$")


def plain_output(index: int) -> str:
    return f"OUTPUT__{index}"


@dataclass(frozen=True)
class PlainSpec:
    """Which registered version to serve plain, and under which name and version."""

    model_id: str
    version: str
    name: str
    served_version: str

    @classmethod
    def parse(cls, text: str) -> PlainSpec:
        match = _SPEC.match(text.strip())
        if match is None:
            raise ConfigError(
                f"--plain {text!r} must be MODEL_ID:VERSION=NAME:SERVED_VERSION "
                "(e.g. disease_0_grader:v1=leafgrade:7)"
            )
        return cls(match["id"], match["version"], match["name"], match["served"])


def _session(card: ModelCard, registry: ModelRegistry) -> tuple[Callable, InputContract, str]:
    """The card's model as one input array -> its output arrays, its input's contract and
    the runtime's name."""
    if card.format == EXTERNAL_OIP:
        raise ModelRegistryError(f"{card.id} {card.version} runs on its own server already")
    if card.contract is not None:
        from farm_platform.ml import formats

        path = registry.verify_weights(card)
        assert path is not None
        model = formats.load_card(card, str(path.resolve()))
        runtime = "onnxruntime" if card.format == "onnx" else "pytorch"
        return model.session, card.contract.input, runtime
    if card.task != "disease_grader":
        raise ModelRegistryError(
            f"{card.id} {card.version}: a state_dict detector's heads are no declared output "
            "form; export it to ONNX or TorchScript to serve it plain (docs/models.md)"
        )
    import torch

    grader = inference.load_grader(card, registry)
    device, dtype = inference.model_placement(grader)

    def run(array: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [grader(torch.from_numpy(array).to(device, dtype)).float().cpu().numpy()]

    return run, InputContract(), "pytorch"


class PlainModel(kserve.Model):
    """One registered version under `spec.name`, version `spec.served_version`."""

    def __init__(self, spec: PlainSpec, registry: ModelRegistry) -> None:
        super().__init__(spec.name)
        self.spec = spec
        self.registry = registry
        self.platform = ""
        self._run: Callable[[np.ndarray], list[np.ndarray]] | None = None
        self._inputs: list[dict[str, Any]] = []
        self._outputs: list[dict[str, Any]] = []

    @property
    def versions(self) -> list[str]:
        return [self.spec.served_version] if self._run is not None else []

    def get_input_types(self) -> list[dict[str, Any]]:
        return self._inputs

    def get_output_types(self) -> list[dict[str, Any]]:
        return self._outputs

    def load(self) -> bool:
        card = self.registry.card(self.spec.model_id, self.spec.version)
        run, spec, self.platform = _session(card, self.registry)
        height, width = card.input_size
        batch = spec.batch or 1
        shape = [batch, 3, height, width] if spec.layout == "NCHW" else [batch, height, width, 3]
        # One batch of zeros tells the outputs' datatypes and shapes (TorchScript declares none).
        probe = run(np.zeros(shape, dtype=spec.dtype))
        dims = [-1 if spec.batch is None else spec.batch, *shape[1:]]
        self._inputs = [{"name": PLAIN_INPUT, "datatype": _datatype(spec.dtype), "shape": dims}]
        self._outputs = [
            {
                "name": plain_output(i),
                "datatype": oip_wire.datatype(array.dtype),
                "shape": [-1 if spec.batch is None else batch, *array.shape[1:]],
            }
            for i, array in enumerate(probe)
        ]
        self._run = run
        self.ready = True
        return True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        if self._run is None:
            raise InvalidInput(f"model {self.name} is not loaded")
        array = self._input(payload)
        outputs = {plain_output(i): out for i, out in enumerate(self._run(array))}
        wanted = [o.name for o in payload.request_outputs or []] or list(outputs)
        unknown = [name for name in wanted if name not in outputs]
        if unknown:
            raise InvalidInput(
                f"{self.name} has no output {', '.join(map(repr, unknown))} "
                f"(its outputs: {', '.join(outputs)})"
            )
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            model_version=self.spec.served_version,
            infer_outputs=[infer_output(name, outputs[name]) for name in wanted],
            use_binary_outputs=payload.use_binary_outputs,
        )

    def _input(self, payload: InferRequest) -> np.ndarray:
        declared = self._inputs[0]
        tensor = payload.get_input_by_name(PLAIN_INPUT)
        if tensor is None:
            given = ", ".join(repr(i.name) for i in payload.inputs)
            raise InvalidInput(f"{self.name} takes one input {PLAIN_INPUT!r}, got {given}")
        if tensor.datatype != declared["datatype"]:
            raise InvalidInput(
                f"{self.name} takes {PLAIN_INPUT} of {declared['datatype']}, got {tensor.datatype}"
            )
        array = np.array(tensor.as_numpy())
        shape = declared["shape"]
        if array.ndim != len(shape) or any(
            d != -1 and d != n for d, n in zip(shape, array.shape, strict=True)
        ):
            raise InvalidInput(
                f"{self.name} takes {PLAIN_INPUT} of shape {shape}, got {array.shape}"
            )
        return array


def _datatype(dtype: str) -> str:
    return oip_wire.datatype(np.dtype(dtype))


def infer_output(name: str, array: np.ndarray) -> InferOutput:
    """An output tensor of a response, its bytes sent raw."""
    array = np.ascontiguousarray(array)
    output = InferOutput(
        name=name, shape=list(array.shape), datatype=oip_wire.datatype(array.dtype)
    )
    output.set_data_from_numpy(array, binary_data=True)
    return output


def plain_models(specs: list[PlainSpec], registry: ModelRegistry) -> list[PlainModel]:
    """Each spec's model, loaded and ready."""
    models = [PlainModel(spec, registry) for spec in specs]
    for model in models:
        model.load()
    return models
