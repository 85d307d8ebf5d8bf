"""What the model server tests share (test_model_server*.py): the models they serve, gRPC
calls made without the client under test, this machine's outward address, and a replica
killed while it computes an answer.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import copy_repo_models

from farm_platform_dev.model_server import ModelServerProcess
from farm_platform_dev.processes import kill_now

# The `serve` extra: a module that imports these is skipped without it.
pytest.importorskip("kserve")
inference = pytest.importorskip("farm_platform.ml.inference")
oip = pytest.importorskip("farm_platform.ml.oip")
oip_runners = pytest.importorskip("farm_platform.ml.oip_runners")


def served_models(folder: Path) -> Path:
    """The shipped models in `folder`/models plus a v2 of disease_2_grader (same weights),
    inactive."""
    target = copy_repo_models(folder / "models")
    v2 = target / "disease_2_grader" / "v2"
    shutil.copytree(target / "disease_2_grader" / "v1", v2)
    card = json.loads((v2 / "card.json").read_text())
    (v2 / "card.json").write_text(json.dumps({**card, "version": "v2"}))
    return target


# Import it as `served_models_fixture` into a test module: pytest then provides
# `served_models_dir` there, one per module (the server processes of a module serve it).
@pytest.fixture(scope="module", name="served_models_dir")
def served_models_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return served_models(tmp_path_factory.mktemp("served"))


def grpc_stub(url: str) -> Any:
    import grpc
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    return GRPCInferenceServiceStub(grpc.insecure_channel(url.removeprefix("grpc://")))


def grpc_metadata(url: str, model_id: str, version: str = "") -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    answer = grpc_stub(url).ModelMetadata(pb.ModelMetadataRequest(name=model_id, version=version))
    metadata = MessageToDict(answer, preserving_proto_field_name=True)
    # proto3 JSON writes int64 as strings
    for tensor in (*metadata["inputs"], *metadata["outputs"]):
        tensor["shape"] = [int(n) for n in tensor["shape"]]
    return metadata


def outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def kill_on_arrival(server: ModelServerProcess, calls_seen: int) -> threading.Thread:
    """SIGKILL `server` as soon as its log shows one more ModelInfer call than
    `calls_seen`: while it computes the answer (kserve logs each call as it starts)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while server.log_path.read_text().count("ModelInfer") <= calls_seen:
            assert time.monotonic() < deadline, "the request never reached the replica"
            time.sleep(0.002)
        kill_now([server.pid])

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher
