"""kserve 0.21's `ModelServer`, made to serve the platform's models as the protocol says
(ml/serving.py builds it): model metadata with `versions` and `platform`, versioned gRPC
calls checked, a repository load that answers, and both servers bound to `host` only.
Needs the `serve` extra (kserve)."""

from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any

import kserve
from grpc import aio
from grpc_interceptor.exceptions import FailedPrecondition
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import ModelNotReady
from kserve.logging import logger
from kserve.model_server import app as rest_app
from kserve.model_server import args as kserve_args
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import (
    add_GRPCInferenceServiceServicer_to_server,
)
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer

from farm_platform.ml.server_guards import (
    ActiveVersionMiddleware,
    BearerTokenInterceptor,
    BearerTokenMiddleware,
    check_version,
)

PLATFORM = "pytorch"


class RegistryDataPlane(DataPlane):
    """kserve 0.21's metadata leaves `versions` out and `platform` empty: fills them."""

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        metadata = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        # Our models say which version they serve (and, plain ones, their runtime).
        versions = getattr(model, "versions", None)
        if versions is not None:
            metadata.update(versions=versions, platform=getattr(model, "platform", PLATFORM))
        return metadata


class RegistryServicer(InferenceServicer):
    """kserve 0.21's gRPC servicer ignores `version` / `model_version` (any version would
    be answered by the active one) and drops `versions`: checks and fills them."""

    def __init__(
        self,
        data_plane: DataPlane,
        extension: ModelRepositoryExtension,
        repository: kserve.ModelRepository,
    ) -> None:
        super().__init__(data_plane, extension)
        self.repository = repository

    async def ModelMetadata(  # noqa: N802 (the protocol's name)
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        check_version(self.repository, request.name, request.version)
        metadata = await self._data_plane.model_metadata(model_name=request.name)
        return pb.ModelMetadataResponse(**{"versions": [], **metadata})

    async def RepositoryModelLoad(  # noqa: N802
        self, request: pb.RepositoryModelLoadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        """kserve 0.21's reads a dict that the extension's load (returning None) never
        gives, so every call failed INTERNAL; and a failed load answered UNAVAILABLE, which
        a client takes for a server that is down: FAILED_PRECONDITION with the reason."""
        try:
            await self._mode_repository_extension.load(model_name=request.model_name)
        except ModelNotReady as exc:
            raise FailedPrecondition(str(exc)) from None
        return pb.RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=True)

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        check_version(self.repository, request.name, request.version)
        return await super().ModelReady(request, context)

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        check_version(self.repository, request.model_name, request.model_version)
        return await super().ModelInfer(request, context)


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RegistryGRPCServer(GRPCServer):
    """kserve 0.21's GRPCServer.start fixes the address ([::]), the interceptors and the
    servicer, with no option to change them: the same start with ours."""

    def __init__(self, host: str, token: str | None, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host = host
        self.token = token

    async def start(self, max_workers: int) -> None:
        interceptors: list[aio.ServerInterceptor] = [
            LoggingInterceptor(),
            ExceptionToStatusInterceptor(),
        ]
        if self.token:
            interceptors.insert(0, BearerTokenInterceptor(self.token))
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", self._kwargs["grpc_max_send_message_length"]),
                (
                    "grpc.max_receive_message_length",
                    self._kwargs["grpc_max_receive_message_length"],
                ),
            ],
        )
        servicer = RegistryServicer(
            self._data_plane, self._model_repository_extension, self._data_plane.model_registry
        )
        add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(grpc_address(self.host, self._port))
        logger.info("Starting gRPC server on %s", grpc_address(self.host, self._port))
        await self._server.start()
        await self._server.wait_for_termination()


class RegistryModelServer(kserve.ModelServer):
    """kserve's ModelServer with our data plane, middleware and gRPC server on `host`."""

    def __init__(
        self,
        repository: kserve.ModelRepository,
        host: str,
        http_port: int,
        grpc_port: int,
        token: str | None,
    ) -> None:
        super().__init__(
            http_port=http_port,
            grpc_port=grpc_port,
            registered_models=repository,
            # One process: the models live once in memory and torch uses the cores.
            workers=1,
            enable_latency_logging=False,
        )
        self.host = host
        self.token = token
        self.dataplane = RegistryDataPlane(model_registry=repository)

    def start(self, models: list[kserve.Model]) -> None:
        """kserve 0.21's `start` (its one-worker path) binds 0.0.0.0 and [::] with no option
        to change it: the same steps, on `host`."""
        self._register_and_check_atleast_one_model_is_ready(models)
        # kserve builds its REST app on this module-level FastAPI app (its hook for custom
        # routes and middleware); the last added runs first: the token before the path.
        rest_app.add_middleware(ActiveVersionMiddleware, repository=self.registered_models)
        if self.token:
            rest_app.add_middleware(BearerTokenMiddleware, token=self.token)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host
        self._grpc_server = RegistryGRPCServer(
            self.host,
            self.token,
            self.grpc_port,
            self.dataplane,
            self.model_repository_extension,
            kwargs=vars(kserve_args),
            grace_period=self.grace_period,
        )
        self.servers += [self._rest_server.start(), self._grpc_server.start(self.max_threads)]
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
