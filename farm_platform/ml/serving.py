"""The model server: the registry's active models behind KServe's `ModelServer`.

Speaks the Open Inference Protocol (KServe v2) over REST and gRPC. Each model is served
under its model id, answers with the version it computed with in `model_version`, loads
its weights through `ml.inference` (the same sha256 checks as a local run) and runs a
request's many photos or crops in batches, through the same code as local inference.

A new active version reaches the server without a restart: it watches the registry (every
`watch_seconds`), and `POST /v2/repository/models/<id>/load` reloads a model at once. A
version whose weights fail their check is not swapped in: the old one keeps serving.
Needs the `serve` extra (kserve).
"""

from __future__ import annotations

import threading
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput, ModelNotFound
from kserve.logging import logger
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from farm_platform.ml import inference
from farm_platform.ml.oip import DETECTOR_INPUT, GRADER_INPUT
from farm_platform.ml.registry import ModelCard, ModelRegistry, ModelRegistryError

# Per forward pass: a request may carry any number of photos or crops.
DETECTOR_BATCH = 32
GRADER_BATCH = 256


class RegistryModel(kserve.Model):
    """One model id; `load` (re)reads the registry's active version of it."""

    def __init__(self, model_id: str, registry: ModelRegistry) -> None:
        super().__init__(model_id)
        self.registry = registry
        # Card and network swap together, so a request never pairs one's version with
        # the other's weights while a reload runs.
        self._loaded: tuple[ModelCard, Any] | None = None
        self._lock = threading.Lock()

    @property
    def card(self) -> ModelCard | None:
        return self._loaded[0] if self._loaded else None

    def load(self) -> bool:
        with self._lock:
            card = self.registry.active_card(self.name)
            if card.task == "leaf_detector":
                network: Any = inference.load_detector(card, self.registry)
            else:
                network = inference.load_grader(card, self.registry)
            self._loaded = (card, network)
            self.ready = True
        return True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        if self._loaded is None:
            raise InvalidInput(f"model {self.name} is not loaded")
        card, network = self._loaded
        if card.task == "leaf_detector":
            outputs = _detect(network, _input(payload, DETECTOR_INPUT, card))
        else:
            outputs = _grade(network, _input(payload, GRADER_INPUT, card))
        return InferResponse(
            response_id=payload.id or "",
            model_name=card.id,
            model_version=card.version,
            infer_outputs=[_output(name, array) for name, array in outputs.items()],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


def _input(payload: InferRequest, name: str, card: ModelCard) -> np.ndarray:
    tensor = payload.get_input_by_name(name)
    if tensor is None or tensor.datatype != "UINT8" or len(tensor.shape) != 4:
        raise InvalidInput(f"{card.id} takes one UINT8 input {name!r} of shape [N, H, W, 3]")
    # A writable copy: the request's bytes are read-only and torch refuses to share them.
    array = np.array(tensor.as_numpy())
    height, width = card.input_size
    if tuple(array.shape[1:]) != (height, width, 3):
        raise InvalidInput(
            f"{card.id} {card.version} takes [N, {height}, {width}, 3], got {list(array.shape)}"
        )
    return array


def _detect(network: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    boxes: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in range(0, images.shape[0], DETECTOR_BATCH):
        for found_boxes, found_scores in inference.run_detector(
            network, images[start : start + DETECTOR_BATCH]
        ):
            boxes.append(found_boxes)
            scores.append(found_scores)
    return {
        "boxes": np.concatenate(boxes or [np.zeros((0, 4), np.float32)]).astype(np.float32),
        "scores": np.concatenate(scores or [np.zeros(0, np.float32)]).astype(np.float32),
        "counts": np.array([len(s) for s in scores], dtype=np.int64),
    }


def _grade(network: Any, crops: np.ndarray) -> dict[str, np.ndarray]:
    indices: list[np.ndarray] = []
    confidences: list[np.ndarray] = []
    device, dtype = inference.model_placement(network)
    for start in range(0, crops.shape[0], GRADER_BATCH):
        index, confidence = inference.run_grader(
            network, inference.to_tensor(crops[start : start + GRADER_BATCH], device, dtype)
        )
        indices.append(index)
        confidences.append(confidence)
    return {
        "index": np.concatenate(indices or [np.zeros(0, np.int64)]).astype(np.int64),
        "confidence": np.concatenate(confidences or [np.zeros(0, np.float32)]).astype(np.float32),
    }


def _output(name: str, array: np.ndarray) -> InferOutput:
    datatype = {"f": "FP32", "i": "INT64"}[array.dtype.kind]
    output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
    output.set_data_from_numpy(array, binary_data=True)
    return output


class RegistryRepository(kserve.ModelRepository):
    """The repository extension's load call re-reads the registry (the reload call)."""

    def __init__(self, registry: ModelRegistry) -> None:
        super().__init__(str(registry.models_dir))
        self.registry = registry

    def load(self, name: str) -> bool:
        model = self.get_model(name)
        if model is None:
            if name not in self.registry.active_versions():
                raise ModelNotFound(name)
            model = RegistryModel(name, self.registry)
            self.update(model)
        return model.load()


def registry_models(registry: ModelRegistry) -> list[RegistryModel]:
    """Every active model of the registry, loaded (weights checked) and ready."""
    models = [RegistryModel(model_id, registry) for model_id in sorted(registry.active_versions())]
    for model in models:
        model.load()
    return models


class RegistryWatch(threading.Thread):
    """Reloads each served model whose active version in the registry changed."""

    def __init__(self, repository: RegistryRepository, interval_seconds: float) -> None:
        super().__init__(name="registry-watch", daemon=True)
        self.repository = repository
        self.interval_seconds = interval_seconds
        self.stopped = threading.Event()

    def check(self) -> None:
        try:
            active = self.repository.registry.active_versions()
        except ModelRegistryError as exc:
            logger.warning("registry watch: %s", exc)
            return
        for name, model in list(self.repository.get_models().items()):
            card = model.card if isinstance(model, RegistryModel) else None
            if card is None or active.get(name, card.version) == card.version:
                continue
            try:
                model.load()
                logger.info("registry watch: %s %s -> %s", name, card.version, active[name])
            except ModelRegistryError as exc:
                logger.warning("registry watch: keeping %s %s: %s", name, card.version, exc)

    def run(self) -> None:
        while not self.stopped.wait(self.interval_seconds):
            self.check()


def serve(
    registry: ModelRegistry, http_port: int, grpc_port: int, watch_seconds: float = 5.0
) -> None:
    """Serve until SIGTERM / SIGINT (blocks); `watch_seconds` 0 turns the watch off."""
    repository = RegistryRepository(registry)
    server = kserve.ModelServer(
        http_port=http_port,
        grpc_port=grpc_port,
        registered_models=repository,
        # One process: the models live once in memory and torch uses the cores.
        workers=1,
        enable_latency_logging=False,
    )
    models = registry_models(registry)
    if watch_seconds > 0:
        RegistryWatch(repository, watch_seconds).start()
    server.start(models)
