"""The client of the model server: Open Inference Protocol (KServe v2), gRPC or REST.

`FARM_OIP_URL` picks the transport: `grpc://host:port` (the pipeline's choice) or
`http://host:port`; several addresses, comma-separated, are replicas: requests take them in
turn, and one a replica cannot answer (refused, reset, timed out) goes to the next, within
the same bounded tries. With `FARM_OIP_TOKEN` set, every request carries it as a bearer
token. Tensors travel as raw little-endian bytes either way (gRPC's
`raw_input_contents`; REST's binary extension, a JSON header then the bytes), so pixels and
scores arrive bit for bit and server results equal local ones. REST needs only `requests`;
gRPC uses the protocol's stubs that kserve ships (the serve extra). Why gRPC for data:
kserve 0.21 turns a REST binary input into a Python list element by element (6.3 MB of
photos: ~2 s), while its gRPC path reads the bytes as they are.

The tensors each model takes and gives (ml/serving.py serves them):

    leaf_detector        images UINT8 [N, S, S, 3]  -> boxes FP32 [M, 4], scores FP32 [M],
                                                       counts INT64 [N] (M = sum of counts)
    disease_<k>_grader   crops UINT8 [N, H, W, 3]   -> index INT64 [N], confidence FP32 [N]

Every response names the model and version that computed it; a response from another
version than the run's is refused (`OipVersionMismatch`), so one run never mixes versions.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import requests

from farm_platform import config
from farm_platform.ml.registry import ModelCard
from farm_platform.ml.settings import InferenceSettings

if TYPE_CHECKING:  # torch loads only where a model runs (the CLI's error path must not)
    import torch

    from farm_platform.ml.inference import DetectorRunner, GraderRunner

DETECTOR_INPUT = "images"
DETECTOR_OUTPUTS = ("boxes", "scores", "counts")
GRADER_INPUT = "crops"
GRADER_OUTPUTS = ("index", "confidence")
HEADER_LENGTH = "Inference-Header-Content-Length"
_DTYPES = {
    "UINT8": np.dtype("<u1"),
    "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"),
}


T = TypeVar("T")


class OipError(RuntimeError):
    """The model server answered something the run cannot use."""


class OipUnavailable(OipError):
    """The model server could not be reached within the bounded retries."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason  # the last try's (ConnectionError, UNAVAILABLE, ...)


class OipVersionMismatch(OipError):
    """The server computed with another model version than the run's (the registry's)."""


@dataclass(frozen=True)
class Reported:
    """The model id and version a response says computed it."""

    model_id: str
    version: str


class _Unreachable(Exception):
    """One try found no server (refused, reset, UNAVAILABLE, timeout): the next may."""


@dataclass
class OipClient:
    """Bounded requests to a server or its replicas (`url`: one address, or several
    comma-separated): each request `timeout` seconds, `attempts` tries in all, the replicas
    taken in turn from `first_replica` (an index; by default a random one, as gRPC's
    round_robin starts: runs started together would otherwise ask the same replica at the
    same moment, request after request, and wait on each other while the others idle);
    with a `token`, every request carries `authorization: Bearer <token>`."""

    url: str
    timeout: float = config.DEFAULT_OIP_TIMEOUT_SECONDS
    attempts: int = config.OIP_ATTEMPTS
    token: str | None = None
    first_replica: int | None = None

    def __post_init__(self) -> None:
        self.urls = tuple(u.strip().rstrip("/") for u in self.url.split(",") if u.strip())
        if not self.urls:
            raise ValueError("OipClient needs a model server address")
        self.url = ",".join(self.urls)
        # Answers per replica: how the requests spread (the tests and the logs read it).
        self.answered: Counter[str] = Counter()
        first = self.first_replica
        self._turn = itertools.count(random.randrange(len(self.urls)) if first is None else first)
        self._session = requests.Session()
        self._metadata: tuple[tuple[str, str], ...] = ()
        if self.token:
            self._session.headers["authorization"] = f"Bearer {self.token}"
            self._metadata = (("authorization", f"Bearer {self.token}"),)
        self._stubs: dict[str, Any] = {}

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> OipClient:
        """A client of the model server(s) `settings` name (mode oip)."""
        return cls(settings.oip_url, timeout=settings.oip_timeout_seconds, token=settings.oip_token)

    def _call(self, send: Callable[[str], T], replica: str | None = None) -> T:
        """`send` to the replicas in turn, starting at the next in the rotation (or only to
        `replica`), until one answers: `attempts` tries in all, a pause (0.5 s, then 1 s)
        only before trying a replica again, so one that is down costs no wait."""
        urls = (replica,) if replica else self._rotation()
        reason = "no answer"
        started = time.monotonic()
        for attempt in range(self.attempts):
            turn, index = divmod(attempt, len(urls))
            if index == 0:
                _backoff(turn)
            try:
                answer = send(urls[index])
            except _Unreachable as exc:
                reason = str(exc)
                continue
            self.answered[urls[index]] += 1
            return answer
        raise self._unavailable(reason, urls, time.monotonic() - started)

    def _rotation(self) -> tuple[str, ...]:
        start = next(self._turn) % len(self.urls)
        return self.urls[start:] + self.urls[:start]

    def _unavailable(self, reason: str, urls: tuple[str, ...], seconds: float) -> OipUnavailable:
        """`seconds`: how long the tries took (a refused connection fails at once; only a
        server that accepts and never answers makes a try last its whole timeout)."""
        urls = tuple(url for url in self.urls if url in urls)  # as configured, not as rotated
        where = f"model server {urls[0]}" if len(urls) == 1 else f"model servers {', '.join(urls)}"
        return OipUnavailable(
            f"{where} unreachable after {self.attempts} tries in {seconds:.1f} s ({reason}; "
            f"a try waits up to {self.timeout:g} s): is `farm-platform models serve` running?",
            reason,
        )

    def _http(self, url: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self._session.request(method, url + path, timeout=self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Unreachable(type(exc).__name__) from None

    def ready(self) -> bool:
        """Whether a replica answers ready."""
        try:
            return self._call(
                lambda url: self._http(url, "GET", "/v2/health/ready").status_code == 200
            )
        except OipUnavailable:
            return False

    def reload(self, model_id: str) -> None:
        """Make every replica load the registry's active version of `model_id` (no restart)."""

        def send(url: str) -> None:
            if url.startswith("grpc://"):
                pb, _ = self._grpc_modules()
                request = pb.RepositoryModelLoadRequest(model_name=model_id)
                self._grpc_call(url, "RepositoryModelLoad", request, f"reloading {model_id}")
                return
            response = self._http(url, "POST", f"/v2/repository/models/{model_id}/load")
            if response.status_code != 200:
                raise OipError(f"reloading {model_id} on {url}: {_reason(response)}")

        for url in self.urls:
            self._call(send, replica=url)

    def infer(
        self,
        model_id: str,
        inputs: Mapping[str, np.ndarray],
        outputs: tuple[str, ...],
        replica: str | None = None,
    ) -> tuple[Reported, dict[str, np.ndarray]]:
        """One inference request (to the next replica, or to `replica`); the outputs and who
        computed them."""
        arrays = {
            name: np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            for name, array in inputs.items()
        }
        grpc_request = None
        rest_request = None

        def send(url: str) -> tuple[Reported, dict[str, np.ndarray]]:
            nonlocal grpc_request, rest_request
            if url.startswith("grpc://"):
                grpc_request = grpc_request or self._grpc_request(model_id, arrays, outputs)
                return self._grpc_infer(url, grpc_request)
            rest_request = rest_request or _rest_request(arrays, outputs)
            return self._rest_infer(url, model_id, *rest_request)

        return self._call(send, replica)

    def _rest_infer(
        self, url: str, model_id: str, body: bytes, header_length: int
    ) -> tuple[Reported, dict[str, np.ndarray]]:
        response = self._http(
            url,
            "POST",
            f"/v2/models/{model_id}/infer",
            data=body,
            headers={"Content-Type": "application/octet-stream", HEADER_LENGTH: str(header_length)},
        )
        if response.status_code != 200:
            raise OipError(f"{model_id} on {url}: {_reason(response)}")
        return _decode_response(response)

    def _grpc_request(
        self, model_id: str, arrays: Mapping[str, np.ndarray], outputs: tuple[str, ...]
    ) -> Any:
        pb, _ = self._grpc_modules()
        return pb.ModelInferRequest(
            model_name=model_id,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name=name, datatype=_datatype(array.dtype), shape=list(array.shape)
                )
                for name, array in arrays.items()
            ],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs],
            raw_input_contents=[array.tobytes() for array in arrays.values()],
        )

    def _grpc_modules(self) -> tuple[Any, Any]:
        """The protocol's messages and stubs."""
        try:
            from kserve.protocol.grpc import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
        except ImportError:
            raise OipError(
                f"{config.FARM_OIP_URL}={self.url} needs the protocol's gRPC stubs from the "
                "serve extra (pip install '.[serve]'); or use the server's http:// address"
            ) from None
        return grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

    def _grpc_stub(self, url: str) -> Any:
        if url not in self._stubs:
            import grpc

            channel = grpc.insecure_channel(
                url.removeprefix("grpc://"),
                # A day's chunk of photos answers with a few MB; the server caps requests.
                options=[("grpc.max_receive_message_length", 64 << 20)],
            )
            _, stubs = self._grpc_modules()
            self._stubs[url] = stubs.GRPCInferenceServiceStub(channel)
        return self._stubs[url]

    def _grpc_call(self, url: str, method: str, request: Any, what: str) -> Any:
        """One gRPC call: _Unreachable when no server answered, OipError for a refusal."""
        import grpc

        try:
            return getattr(self._grpc_stub(url), method)(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise _Unreachable(exc.code().name) from None
            detail = " ".join(str(exc.details()).split())[:300]
            raise OipError(f"{what} on {url}: {exc.code().name}: {detail}") from None

    def _grpc_infer(self, url: str, request: Any) -> tuple[Reported, dict[str, np.ndarray]]:
        response = self._grpc_call(url, "ModelInfer", request, request.model_name)
        decoded: dict[str, np.ndarray] = {}
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
            dtype = _DTYPES.get(output.datatype)
            if dtype is None:
                raise OipError(f"unexpected datatype {output.datatype} of {output.name}")
            decoded[output.name] = np.frombuffer(raw, dtype=dtype).reshape(list(output.shape))
        return Reported(response.model_name, response.model_version), decoded


def _rest_request(arrays: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> tuple[bytes, int]:
    """The binary extension's body (a JSON header, then the tensors' bytes) and the
    header's length."""
    header = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": _datatype(array.dtype),
                "parameters": {"binary_data_size": array.nbytes},
            }
            for name, array in arrays.items()
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    head = json.dumps(header).encode()
    return b"".join([head, *(array.tobytes() for array in arrays.values())]), len(head)


def _backoff(attempt: int) -> None:
    # Bounded (0.5 s, then 1 s): a server that stays away fails the run within seconds and
    # the requeue sensor retries its photos, rather than a run waiting on a dead server.
    if attempt:
        time.sleep(min(0.5 * 2 ** (attempt - 1), 2.0))


def _datatype(dtype: np.dtype) -> str:
    for name, known in _DTYPES.items():
        if dtype.kind == known.kind and dtype.itemsize == known.itemsize:
            return name
    raise ValueError(f"no Open Inference Protocol datatype for {dtype}")


def _reason(response: requests.Response) -> str:
    try:
        detail = response.json().get("error") or response.text
    except ValueError:
        detail = response.text
    return f"HTTP {response.status_code}: {' '.join(str(detail).split())[:300]}"


def _decode_response(response: requests.Response) -> tuple[Reported, dict[str, np.ndarray]]:
    raw = response.content
    length = response.headers.get(HEADER_LENGTH)
    head = json.loads(raw[: int(length)] if length else raw)
    offset = int(length) if length else len(raw)
    outputs: dict[str, np.ndarray] = {}
    for output in head.get("outputs", []):
        dtype = _DTYPES.get(output["datatype"])
        if dtype is None:
            raise OipError(f"unexpected datatype {output['datatype']} of {output['name']}")
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = np.frombuffer(raw, dtype=dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        else:
            array = np.asarray(output["data"], dtype=dtype)
        outputs[output["name"]] = array.reshape(output["shape"])
    reported = Reported(str(head.get("model_name")), str(head.get("model_version")))
    return reported, outputs


def _checked(card: ModelCard, reported: Reported) -> None:
    if (reported.model_id, reported.version) != (card.id, card.version):
        raise OipVersionMismatch(
            f"model server computed {reported.model_id} {reported.version}, but this run uses "
            f"{card.id} {card.version} (the registry's active version): refusing to mix versions "
            "in one run; reload the server (`farm-platform models reload`) or wait for it"
        )


def check_versions(client: OipClient, cards: list[ModelCard]) -> None:
    """Ask every replica for each card's model with an empty batch: each that answers must
    answer with the card's version, before a run sends any photo. A replica that cannot be
    reached is passed over (its later answers are checked like all); none: OipUnavailable."""
    unreachable: list[OipUnavailable] = []
    started = time.monotonic()
    for url in client.urls:
        try:
            for card in cards:
                _checked(card, _empty_request(client, card, url))
        except OipUnavailable as exc:
            unreachable.append(exc)
    if len(unreachable) == len(client.urls):
        raise client._unavailable(unreachable[-1].reason, client.urls, time.monotonic() - started)


def _empty_request(client: OipClient, card: ModelCard, replica: str) -> Reported:
    height, width = card.input_size
    if card.task == "leaf_detector":
        name, outputs = DETECTOR_INPUT, DETECTOR_OUTPUTS
    else:
        name, outputs = GRADER_INPUT, GRADER_OUTPUTS
    empty = {name: np.zeros((0, height, width, 3), np.uint8)}
    reported, _ = client.infer(card.id, empty, outputs, replica=replica)
    return reported


def remote_detector(client: OipClient, card: ModelCard) -> DetectorRunner:
    """The detector of `card`, run on the server; every answer must come from `card`."""
    from farm_platform.ml.inference import DetectorRunner

    def run(scaled: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        reported, out = client.infer(card.id, {DETECTOR_INPUT: scaled}, DETECTOR_OUTPUTS)
        _checked(card, reported)
        ends = np.cumsum(out["counts"])
        starts = ends - out["counts"]
        return [
            (out["boxes"][a:b], out["scores"][a:b])
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
        ]

    if card.contract is None:
        return DetectorRunner(card.input_size[0], run)
    # An exported model: photos are fitted (stretch or letterbox) here, boxes mapped back.
    from farm_platform.ml.formats import photo_detector

    size = (card.input_size[0], card.input_size[1])
    return DetectorRunner(size[0], run, photo_detector(run, size, card.contract.input))


def remote_grader(client: OipClient, card: ModelCard) -> GraderRunner:
    """The grader of `card`, run on the server; every answer must come from `card`."""
    import torch

    from farm_platform.ml.inference import GraderRunner

    def run(inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        # Prepared crops are uint8 / 255 in float32; * 255 rounds back to the very bytes,
        # which travel 4x smaller than floats and are divided by 255 again on the server.
        pixels = inputs.mul(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        reported, out = client.infer(card.id, {GRADER_INPUT: pixels}, GRADER_OUTPUTS)
        _checked(card, reported)
        return out["index"], out["confidence"]

    spec = card.contract.input if card.contract is not None else None
    return GraderRunner(run, spec.resize, spec.pad_value) if spec else GraderRunner(run)
