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

Every response names the model and version that computed it; a response from another
version than the run's is refused (`OipVersionMismatch`), so one run never mixes versions.
ml/oip_runners.py runs the project server's models through this client, and
ml/external_oip.py the models of an external_oip card's server.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import requests

from farm_platform import config
from farm_platform.ml import oip_wire as wire
from farm_platform.ml.oip_wire import Reported
from farm_platform.ml.settings import InferenceSettings

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
    # What to do when no replica answers (the end of OipUnavailable's message).
    hint: str = "is `farm-platform models serve` running?"

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
        raise self.unavailable(reason, urls, time.monotonic() - started)

    def _rotation(self) -> tuple[str, ...]:
        start = next(self._turn) % len(self.urls)
        return self.urls[start:] + self.urls[:start]

    def unavailable(self, reason: str, urls: tuple[str, ...], seconds: float) -> OipUnavailable:
        """`seconds`: how long the tries took (a refused connection fails at once; only a
        server that accepts and never answers makes a try last its whole timeout)."""
        urls = tuple(url for url in self.urls if url in urls)  # as configured, not as rotated
        where = f"model server {urls[0]}" if len(urls) == 1 else f"model servers {', '.join(urls)}"
        return OipUnavailable(
            f"{where} unreachable after {self.attempts} tries in {seconds:.1f} s ({reason}; "
            f"a try waits up to {self.timeout:g} s): {self.hint}",
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
                raise OipError(f"reloading {model_id} on {url}: {wire.reason(response)}")

        for url in self.urls:
            self._call(send, replica=url)

    def infer(
        self,
        model_id: str,
        inputs: Mapping[str, np.ndarray],
        outputs: tuple[str, ...],
        replica: str | None = None,
        version: str = "",
    ) -> tuple[Reported, dict[str, np.ndarray]]:
        """One inference request (to the next replica, or to `replica`) to `model_id`, or to
        its `version` when given; the outputs and who computed them."""
        arrays = {
            name: np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            for name, array in inputs.items()
        }
        grpc_request = None
        rest_request = None

        def send(url: str) -> tuple[Reported, dict[str, np.ndarray]]:
            nonlocal grpc_request, rest_request
            if url.startswith("grpc://"):
                grpc_request = grpc_request or self._grpc_request(
                    model_id, version, arrays, outputs
                )
                return self._grpc_infer(url, grpc_request)
            rest_request = rest_request or wire.rest_request(arrays, outputs)
            return self._rest_infer(url, _model_path(model_id, version), *rest_request)

        return self._call(send, replica)

    def metadata(self, model_id: str, version: str = "") -> dict[str, Any]:
        """The model's metadata (`GET /v2/models/{name}[/versions/{v}]`): name, versions,
        platform, and its inputs and outputs (name, datatype, shape), as the server says."""

        def send(url: str) -> dict[str, Any]:
            if url.startswith("grpc://"):
                pb, _ = self._grpc_modules()
                request = pb.ModelMetadataRequest(name=model_id, version=version)
                answer = self._grpc_call(url, "ModelMetadata", request, f"metadata of {model_id}")
                tensors = [
                    [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]
                    for ts in (answer.inputs, answer.outputs)
                ]
                return {
                    "name": answer.name,
                    "versions": list(answer.versions),
                    "platform": answer.platform,
                    "inputs": tensors[0],
                    "outputs": tensors[1],
                }
            response = self._http(url, "GET", _model_path(model_id, version))
            if response.status_code != 200:
                raise OipError(f"metadata of {model_id} on {url}: {wire.reason(response)}")
            return dict(response.json())

        return self._call(send)

    def _rest_infer(
        self, url: str, path: str, body: bytes, header_length: int
    ) -> tuple[Reported, dict[str, np.ndarray]]:
        response = self._http(
            url,
            "POST",
            f"{path}/infer",
            data=body,
            headers={
                "Content-Type": "application/octet-stream",
                wire.HEADER_LENGTH: str(header_length),
            },
        )
        if response.status_code != 200:
            raise OipError(f"{path.removeprefix('/v2/models/')} on {url}: {wire.reason(response)}")
        try:
            return wire.decode_response(response)
        except wire.WireError as exc:
            raise OipError(str(exc)) from None

    def _grpc_request(
        self,
        model_id: str,
        version: str,
        arrays: Mapping[str, np.ndarray],
        outputs: tuple[str, ...],
    ) -> Any:
        pb, _ = self._grpc_modules()
        return pb.ModelInferRequest(
            model_name=model_id,
            model_version=version,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name=name, datatype=wire.datatype(array.dtype), shape=list(array.shape)
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
                f"{self.url} needs the Open Inference Protocol's gRPC stubs from the "
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
            try:
                dtype = wire.numpy_dtype(output.datatype, output.name)
            except wire.WireError as exc:
                raise OipError(str(exc)) from None
            decoded[output.name] = np.frombuffer(raw, dtype=dtype).reshape(list(output.shape))
        return Reported(response.model_name, response.model_version), decoded


def _model_path(model_id: str, version: str) -> str:
    return f"/v2/models/{model_id}" + (f"/versions/{version}" if version else "")


def _backoff(attempt: int) -> None:
    # Bounded (0.5 s, then 1 s): a server that stays away fails the run within seconds and
    # the requeue sensor retries its photos, rather than a run waiting on a dead server.
    if attempt:
        time.sleep(min(0.5 * 2 ** (attempt - 1), 2.0))
