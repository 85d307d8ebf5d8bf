"""The model server: the registry's active models behind KServe's `ModelServer`.

Speaks the Open Inference Protocol (KServe v2) over REST and gRPC. Each model is served
under its model id, answers with the version it computed with in `model_version`, loads
its weights through `ml.inference` (the same sha256 checks as a local run) and runs a
request's many photos or crops in batches, through the same code as local inference.

A new active version reaches the server without a restart: it watches the registry (every
`watch_seconds`), and `POST /v2/repository/models/<id>/load` reloads a model at once. A
version whose weights fail their check is not swapped in: the old one keeps serving.

Each model's metadata names its active version, `pytorch` and its tensors. It listens on
`host` (127.0.0.1 unless told); ml/server_guards.py holds the versioned paths and the token.
Needs the `serve` extra (kserve).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput, ModelNotFound
from kserve.logging import logger
from kserve.protocol.infer_type import InferRequest, InferResponse

from farm_platform.ml import inference
from farm_platform.ml.oip_runners import (
    DETECTOR_INPUT,
    DETECTOR_OUTPUTS,
    GRADER_INPUT,
    GRADER_OUTPUTS,
)
from farm_platform.ml.registry import ModelCard, ModelRegistry, ModelRegistryError
from farm_platform.ml.serving_kserve import RegistryModelServer
from farm_platform.ml.serving_plain import PlainSpec, infer_output, plain_models
from farm_platform.ml.settings import InferenceSettings

# Per forward pass: a request may carry any number of photos or crops.
DETECTOR_BATCH = 32
GRADER_BATCH = 256
# What `_detect` and `_grade` answer, in the client's order; -1: as many as the request.
OUTPUT_TYPES = {
    "boxes": ("FP32", [-1, 4]),
    "scores": ("FP32", [-1]),
    "counts": ("INT64", [-1]),
    "index": ("INT64", [-1]),
    "confidence": ("FP32", [-1]),
}


class EmulatedAccelerator:
    """A remote accelerator's timing, for the scale-out benchmark on a machine without one:
    one batch at a time per server, each held for at least `batch_seconds` (the real
    outputs are computed inside). An empty batch (a run's version check) has nothing to
    compute, so it neither waits for the accelerator nor holds it. Off (0) outside
    benchmarks."""

    def __init__(self, batch_seconds: float = 0.0) -> None:
        self.batch_seconds = batch_seconds
        self._busy = threading.Lock()

    @contextlib.contextmanager
    def batch(self, items: int) -> Iterator[None]:
        if self.batch_seconds <= 0 or items == 0:
            yield
            return
        with self._busy:
            started = time.monotonic()
            yield
            time.sleep(max(0.0, self.batch_seconds - (time.monotonic() - started)))


class RegistryModel(kserve.Model):
    """One model id; `load` (re)reads the registry's active version of it."""

    # Shared by every model of the server: one (emulated) accelerator per replica.
    accelerator = EmulatedAccelerator()

    def __init__(
        self, model_id: str, registry: ModelRegistry, settings: InferenceSettings | None = None
    ) -> None:
        super().__init__(model_id)
        self.registry = registry
        self.settings = settings
        # Card and network swap together, so a request never pairs one's version with
        # the other's weights while a reload runs.
        self._loaded: tuple[ModelCard, Any] | None = None
        self._lock = threading.Lock()

    @property
    def card(self) -> ModelCard | None:
        return self._loaded[0] if self._loaded else None

    @property
    def versions(self) -> list[str]:
        return [self._loaded[0].version] if self._loaded else []

    def get_input_types(self) -> list[dict[str, Any]]:
        return tensor_metadata(self._loaded[0])[0] if self._loaded else []

    def get_output_types(self) -> list[dict[str, Any]]:
        return tensor_metadata(self._loaded[0])[1] if self._loaded else []

    def load(self) -> bool:
        with self._lock:
            card = self.registry.active_card(self.name)
            if card.external is not None:
                # Its card names the server it runs on: the runs call that one directly.
                raise ModelRegistryError(
                    f"{card.id} {card.version} runs on its own server ({card.external.model} "
                    f"{card.external.version}), not on this one"
                )
            if card.task == "leaf_detector":
                network: Any = inference.load_detector(card, self.registry, settings=self.settings)
            else:
                network = inference.load_grader(card, self.registry, settings=self.settings)
            self._loaded = (card, network)
            self.ready = True
        return True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        if self._loaded is None:
            raise InvalidInput(f"model {self.name} is not loaded")
        card, network = self._loaded
        detector = card.task == "leaf_detector"
        pixels = _input(payload, DETECTOR_INPUT if detector else GRADER_INPUT, card)
        with self.accelerator.batch(len(pixels)):
            outputs = _detect(network, pixels) if detector else _grade(network, pixels)
        return InferResponse(
            response_id=payload.id or "",
            model_name=card.id,
            model_version=card.version,
            infer_outputs=[infer_output(name, array) for name, array in outputs.items()],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


def tensor_metadata(card: ModelCard) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model's input and outputs as the protocol's metadata: name, datatype, shape."""
    height, width = card.input_size
    if card.task == "leaf_detector":
        name, outputs = DETECTOR_INPUT, DETECTOR_OUTPUTS
    else:
        name, outputs = GRADER_INPUT, GRADER_OUTPUTS
    inputs = [{"name": name, "datatype": "UINT8", "shape": [-1, height, width, 3]}]
    return inputs, [
        {"name": output, "datatype": OUTPUT_TYPES[output][0], "shape": OUTPUT_TYPES[output][1]}
        for output in outputs
    ]


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
    # An exported model's runner takes photos fitted to its input (the client fits them).
    run = network.run if isinstance(network, inference.DetectorRunner) else None
    for start in range(0, images.shape[0], DETECTOR_BATCH):
        chunk = images[start : start + DETECTOR_BATCH]
        for found_boxes, found_scores in (
            run(chunk) if run else inference.run_detector(network, chunk)
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
    run = inference.grader_runner(network).run
    for start in range(0, crops.shape[0], GRADER_BATCH):
        index, confidence = run(
            inference.to_tensor(crops[start : start + GRADER_BATCH], device, dtype)
        )
        indices.append(index)
        confidences.append(confidence)
    return {
        "index": np.concatenate(indices or [np.zeros(0, np.int64)]).astype(np.int64),
        "confidence": np.concatenate(confidences or [np.zeros(0, np.float32)]).astype(np.float32),
    }


class RegistryRepository(kserve.ModelRepository):
    """The repository extension's load call re-reads the registry (the reload call)."""

    def __init__(self, registry: ModelRegistry, settings: InferenceSettings | None = None) -> None:
        super().__init__(str(registry.models_dir))
        self.registry = registry
        self.settings = settings

    def load(self, name: str) -> bool:
        model = self.get_model(name)
        if model is None:
            if name not in self.registry.active_versions():
                raise ModelNotFound(name)
            model = RegistryModel(name, self.registry, self.settings)
            self.update(model)
        return model.load()


def registry_models(
    registry: ModelRegistry, settings: InferenceSettings | None = None
) -> list[RegistryModel]:
    """Every active model of the registry, loaded (weights checked) and ready, on the
    device and dtype of `settings` (the defaults without them); an external_oip card's
    model is left to its own server."""
    active = registry.active_cards()
    models = [
        RegistryModel(model_id, registry, settings)
        for model_id, card in sorted(active.items())
        if card.external is None
    ]
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
        # Any failure keeps the served versions and the watch alive: a registry in a bucket
        # can also fail to answer (network, permissions), not only be wrong.
        try:
            active = self.repository.registry.active_versions()
        except Exception as exc:
            logger.warning("registry watch: %s", exc)
            return
        for name, model in list(self.repository.get_models().items()):
            card = model.card if isinstance(model, RegistryModel) else None
            if card is None or active.get(name, card.version) == card.version:
                continue
            try:
                model.load()
                logger.info("registry watch: %s %s -> %s", name, card.version, active[name])
            except Exception as exc:
                logger.warning("registry watch: keeping %s %s: %s", name, card.version, exc)

    def run(self) -> None:
        while not self.stopped.wait(self.interval_seconds):
            self.check()


def serve(
    registry: ModelRegistry,
    http_port: int,
    grpc_port: int,
    watch_seconds: float = 5.0,
    host: str = "127.0.0.1",
    token: str | None = None,
    emulated_batch_seconds: float = 0.0,
    plain: Sequence[PlainSpec] = (),
    settings: InferenceSettings | None = None,
) -> None:
    """Serve until SIGTERM / SIGINT (blocks); `watch_seconds` 0 turns the watch off; with
    a `token`, every call but the health checks must carry it; `emulated_batch_seconds`:
    see EmulatedAccelerator (benchmarks only); `plain`: versions also served plain
    (ml/serving_plain.py); `settings`: the models' device, dtype and CPU threads (the
    defaults without them)."""
    RegistryModel.accelerator = EmulatedAccelerator(emulated_batch_seconds)
    if settings is not None:
        inference.use_threads(settings.threads)
    repository = RegistryRepository(registry, settings)
    server = RegistryModelServer(repository, host, http_port, grpc_port, token)
    models: list[kserve.Model] = [
        *registry_models(registry, settings),
        *plain_models(list(plain), registry),
    ]
    if watch_seconds > 0:
        RegistryWatch(repository, watch_seconds).start()
    server.start(models)
