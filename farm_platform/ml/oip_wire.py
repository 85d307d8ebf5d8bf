"""The Open Inference Protocol's tensors on the wire (ml/oip.py sends them): datatypes,
the REST binary extension's body (a JSON header, then the tensors' raw little-endian
bytes) and its decoding. Only numpy and requests: no server, no torch."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import requests

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {
    "UINT8": np.dtype("<u1"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
}


class WireError(ValueError):
    """A tensor the protocol's datatypes here do not cover."""


@dataclass(frozen=True)
class Reported:
    """The model id and version a response says computed it ("" when it says none)."""

    model_id: str
    version: str


def datatype(dtype: np.dtype) -> str:
    for name, known in DTYPES.items():
        if dtype.kind == known.kind and dtype.itemsize == known.itemsize:
            return name
    raise WireError(f"no Open Inference Protocol datatype for {dtype}")


def numpy_dtype(name: str, tensor: str) -> np.dtype:
    if name not in DTYPES:
        raise WireError(f"unexpected datatype {name} of {tensor}")
    return DTYPES[name]


def rest_request(arrays: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> tuple[bytes, int]:
    """The binary extension's body (a JSON header, then the tensors' bytes) and the
    header's length."""
    header = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype(array.dtype),
                "parameters": {"binary_data_size": array.nbytes},
            }
            for name, array in arrays.items()
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    head = json.dumps(header).encode()
    return b"".join([head, *(array.tobytes() for array in arrays.values())]), len(head)


def reason(response: requests.Response) -> str:
    try:
        detail = response.json().get("error") or response.text
    except ValueError:
        detail = response.text
    return f"HTTP {response.status_code}: {' '.join(str(detail).split())[:300]}"


def decode_response(response: requests.Response) -> tuple[Reported, dict[str, np.ndarray]]:
    raw = response.content
    length = response.headers.get(HEADER_LENGTH)
    head = json.loads(raw[: int(length)] if length else raw)
    offset = int(length) if length else len(raw)
    outputs: dict[str, np.ndarray] = {}
    for output in head.get("outputs", []):
        dtype = numpy_dtype(output["datatype"], output["name"])
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = np.frombuffer(raw, dtype=dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        else:
            array = np.asarray(output["data"], dtype=dtype)
        outputs[output["name"]] = array.reshape(output["shape"])
    reported = Reported(str(head.get("model_name") or ""), str(head.get("model_version") or ""))
    return reported, outputs
