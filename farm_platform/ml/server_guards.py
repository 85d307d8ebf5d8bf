"""What a call must pass before kserve's handlers serve it (ml/serving.py installs these).

A versioned model path is served for the active version only, and refused naming it; with a
token, every call but the health checks needs `authorization: Bearer <token>`, over REST
(ASGI middleware) and gRPC (an interceptor). Needs the `serve` extra (kserve).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable

import grpc
import kserve
from grpc import aio
from kserve.errors import ModelNotFound
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# Probes (Kubernetes' included) carry no token.
HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
HEALTH_METHODS = frozenset(
    {"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"}
)


class VersionNotServed(ModelNotFound):
    """A version other than the active one: not found (REST 404, gRPC NOT_FOUND)."""

    def __init__(self, model_id: str, version: str, active: str) -> None:
        self.reason = (
            f"{model_id} version {version} is not served: the active version is {active} "
            f"(/v2/models/{model_id}/versions/{active})"
        )


def check_version(repository: kserve.ModelRepository, model_id: str, version: str) -> None:
    """Pass for no version or the one served; else VersionNotServed / ModelNotFound."""
    if not version:
        return
    # Duck-typed: serving's models say which version they serve (none before a load).
    versions = getattr(repository.get_model(model_id), "versions", None)
    if not versions:
        raise ModelNotFound(model_id)
    if version not in versions:
        raise VersionNotServed(model_id, version, versions[0])


def token_refusal(authorization: str | None, token: str) -> str | None:
    """Why a call with this `authorization` is refused (one line), or None to serve it."""
    if not authorization:
        return "no bearer token: this server needs `authorization: Bearer <FARM_OIP_TOKEN>`"
    scheme, _, given = authorization.partition(" ")
    # Constant time: the comparison must not tell a caller how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        return "wrong bearer token (authorization: Bearer <FARM_OIP_TOKEN>)"
    return None


class BearerTokenMiddleware:
    """REST: 401 with the reason unless the request carries the token (health excepted)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in HEALTH_PATHS:
            headers = dict(scope["headers"])
            value = headers.get(b"authorization")
            refusal = token_refusal(value.decode("latin-1") if value else None, self.token)
            if refusal:
                response = JSONResponse(
                    {"error": refusal}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_VERSIONED_PATH = re.compile(
    r"^/v2/models/(?P<model>[^/]+)/versions/(?P<version>[^/]+)(?P<rest>/ready|/infer)?$"
)


class ActiveVersionMiddleware:
    """kserve 0.21's REST endpoints raise NotImplementedError for every versioned path:
    this serves `/v2/models/<id>/versions/<v>[/ready|/infer]` as `/v2/models/<id>[...]`
    when v is the active version, and answers 404 naming the active one otherwise."""

    def __init__(self, app: ASGIApp, repository: kserve.ModelRepository) -> None:
        self.app = app
        self.repository = repository

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _VERSIONED_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if match:
            try:
                check_version(self.repository, match["model"], match["version"])
            except ModelNotFound as exc:
                await JSONResponse({"error": str(exc)}, status_code=404)(scope, receive, send)
                return
            path = f"/v2/models/{match['model']}{match['rest'] or ''}"
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


class BearerTokenInterceptor(aio.ServerInterceptor):
    """gRPC: UNAUTHENTICATED with the reason unless the metadata carries the token (health
    excepted)."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        given = dict(details.invocation_metadata or ()).get("authorization")
        refusal = None if details.method in HEALTH_METHODS else token_refusal(given, self.token)
        if refusal is None:
            return await continuation(details)

        async def refuse(request: bytes, context: aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)

        return grpc.unary_unary_rpc_method_handler(refuse)
