"""A model on an external Open Inference Protocol server (KServe, Triton), named by an
external_oip card (ml/contract.py, "server"). The card's contract is applied here exactly
as for an ONNX file run in process (ml/formats.py: resizing, encoding, decoding, NMS, the
label map); only the model's forward pass runs on that server, through the project's OIP
client (ml/oip.py: its bounded tries, timeouts and OipUnavailable).

Wherever the runs' other models run (FARM_INFERENCE local or oip), the card decides where
this one does. Every answer must say it came from the card's model and version (a server
that names none is taken at the versioned path it was asked on).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from farm_platform import config, config_values
from farm_platform.ml.contract import ExternalServer
from farm_platform.ml.formats import ContractError, ExportedModel, Signature
from farm_platform.ml.oip import OipClient, OipError, OipUnavailable, OipVersionMismatch
from farm_platform.ml.oip_wire import Reported
from farm_platform.ml.registry import ModelCard

# The protocol's datatypes, as the card's input.dtype names them.
_DTYPE_NAMES = {"FP32": "float32", "FP16": "float16", "UINT8": "uint8"}


def _server(card: ModelCard) -> ExternalServer:
    server = card.external
    assert server is not None, f"{card.id} {card.version} is not an external_oip card"
    return server


@functools.lru_cache(maxsize=16)
def _client(url: str, token: str | None, hint: str, timeout_seconds: float) -> OipClient:
    # One client per server: its gRPC channels and HTTP session serve every run's batches.
    return OipClient(url, timeout=timeout_seconds, token=token, hint=hint)


def server_client(
    card: ModelCard, timeout_seconds: float = config.DEFAULT_OIP_TIMEOUT_SECONDS
) -> OipClient:
    """The client of the card's server (its URL, or the setting's value; its token)."""
    server = _server(card)
    where = f"server.url_setting ${server.url_setting}" if server.url_setting else "server.url"
    url = server.url or config_values.external_oip_url(
        str(server.url_setting), f"{card.id} {card.version}"
    )
    hint = (
        f"is the server of {card.id} {card.version} ({server.model} {server.version}) running, "
        f"and is the card's {where} its address?"
    )
    token = config_values.external_oip_token(server.token_setting)
    return _client(url, token, hint, timeout_seconds)


def _label(card: ModelCard, client: OipClient) -> str:
    server = _server(card)
    return (
        f"{card.id} {card.version} (external_oip: {server.model} {server.version} at {client.url})"
    )


def _error(card: ModelCard, client: OipClient, field: str, why: str) -> ContractError:
    return ContractError(f"model {_label(card, client)}: {field}: {why}")


def _checked(card: ModelCard, reported: Reported) -> None:
    server = _server(card)
    names = (reported.model_id or server.model, reported.version or server.version)
    if names != (server.model, server.version):
        raise OipVersionMismatch(
            f"the server of {card.id} {card.version} computed {names[0]} {names[1]}, but the "
            f"card names {server.model} {server.version}: refusing its answer"
        )


def _metadata(card: ModelCard, client: OipClient) -> dict[str, Any]:
    """The model's metadata at the card's version; a missing model or version is a
    ContractError naming server.model or server.version, no server one naming server.url."""
    server = _server(card)
    try:
        return client.metadata(server.model, server.version)
    except OipUnavailable as exc:
        raise _error(card, client, "server.url", str(exc)) from None
    except OipError as versioned:
        try:
            served = client.metadata(server.model).get("versions") or []
        except OipError:
            raise _error(
                card,
                client,
                "server.model",
                f"the server has no model {server.model!r}: {versioned}",
            ) from None
        raise _error(
            card,
            client,
            "server.version",
            f"{server.model} has no version {server.version!r} there (it serves "
            f"{', '.join(map(str, served)) or 'no listed version'}): {versioned}",
        ) from None


def signature(card: ModelCard, client: OipClient) -> Signature:
    """The server's model checked against the card's tensor names; its input's declared
    name, shape and dtype (checked against the card's input like an ONNX graph's)."""
    server = _server(card)
    metadata = _metadata(card, client)
    inputs = {t["name"]: t for t in metadata.get("inputs") or []}
    if server.input not in inputs:
        raise _error(
            card,
            client,
            "server.input",
            f"{server.input!r} is not an input of {server.model} (its inputs: "
            f"{', '.join(inputs) or 'none declared'})",
        )
    outputs = [t["name"] for t in metadata.get("outputs") or []]
    missing = [name for name in server.outputs if name not in outputs]
    if missing:
        raise _error(
            card,
            client,
            "server.outputs",
            f"{', '.join(map(repr, missing))} not among {server.model}'s outputs "
            f"({', '.join(outputs) or 'none declared'})",
        )
    tensor = inputs[server.input]
    shape = tuple(int(d) if int(d) >= 0 else None for d in tensor.get("shape") or ())
    dtype = _DTYPE_NAMES.get(tensor.get("datatype", ""), str(tensor.get("datatype")))
    return Signature(server.input, shape, dtype)


def load_external(
    card: ModelCard,
    check: bool = True,
    timeout_seconds: float = config.DEFAULT_OIP_TIMEOUT_SECONDS,
) -> ExportedModel:
    """The card's model as an ExportedModel whose forward pass is a request to its server;
    with `check`, the server is asked first whether it serves the card's model, version
    and tensors (a run fails here, before any photo, if not)."""
    server = _server(card)
    assert card.contract is not None
    client = server_client(card, timeout_seconds)
    found = signature(card, client) if check else None

    def session(array: np.ndarray) -> list[np.ndarray]:
        reported, out = client.infer(
            server.model, {server.input: array}, server.outputs, version=server.version
        )
        _checked(card, reported)
        missing = [name for name in server.outputs if name not in out]
        if missing:
            raise _error(card, client, "server.outputs", f"the answer lacks {missing}")
        return [out[name] for name in server.outputs]

    size = (card.input_size[0], card.input_size[1])
    return ExportedModel(_label(card, client), card.task, size, card.contract, session, found)
