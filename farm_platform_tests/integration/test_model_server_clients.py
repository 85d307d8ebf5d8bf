"""The model server's clients, for real: runs that cannot reach a server, the inference
setting, two replicas that require a token (one server process each, per module), and
requests spread over replicas one of which is killed. Needs the `serve` extra; skipped
without it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from model_server_support import (
    grpc_stub,
    inference,
    kill_on_arrival,
    oip,
    oip_runners,
    served_models_fixture,  # noqa: F401 (the fixture `served_models_dir`)
)

from farm_platform import config
from farm_platform.admin.configured import configured_registry
from farm_platform.config import REPO_ROOT
from farm_platform.ml import oip_wire
from farm_platform.ml.registry import ModelRegistry
from farm_platform.resources.inference import InferenceResource
from farm_platform_dev.model_server import ModelServerProcess
from farm_platform_dev.processes import free_port


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_unreachable_server_fails_the_run_in_one_line(scheme: str) -> None:
    from farm_platform.grading.chunks import GradingPlan, _models

    registry = configured_registry()
    unreachable = InferenceResource(
        mode="oip", oip_url=f"{scheme}://127.0.0.1:{free_port()}", oip_timeout_seconds=1
    )
    plan = GradingPlan(
        date=dt.date(2024, 5, 1),
        positions=("P000",),
        record_images=True,
        detect=True,
        detector_card=registry.detector(),
        grader_cards=(registry.grader_for("disease_0"),),
        run_id="r",
        chunk_photos=8,
        inference=unreachable.settings(),
    )
    with pytest.raises(oip.OipUnavailable) as failure:
        _models(plan, registry)
    message = str(failure.value)
    assert "\n" not in message
    assert f"unreachable after {config.OIP_ATTEMPTS} tries" in message


def test_inference_setting_is_checked() -> None:
    with pytest.raises(config.ConfigError, match="FARM_INFERENCE='remote'"):
        InferenceResource(mode="remote").settings()
    with pytest.raises(config.ConfigError, match="FARM_OIP_URL is not set"):
        InferenceResource(mode="oip").settings()
    served = InferenceResource(mode="oip", oip_url="grpc://h:1/", oip_token="t").settings()
    assert (served.oip_url, served.oip_token) == ("grpc://h:1", "t")
    assert served.where() == "on the model server grpc://h:1"


def test_grpc_without_the_serve_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    # As if kserve were not installed: the import of its protocol stubs fails.
    monkeypatch.setitem(sys.modules, "kserve.protocol.grpc", None)
    client = oip.OipClient(f"grpc://127.0.0.1:{free_port()}")
    with pytest.raises(oip.OipError, match=r"serve extra \(pip install '.\[serve\]'\)"):
        client.infer("leaf_detector", {"images": np.zeros((0, 256, 256, 3), np.uint8)}, ())


def test_the_kubernetes_manifest_listens_on_the_pods_address() -> None:
    import yaml

    manifest = yaml.safe_load((REPO_ROOT / "deploy/kserve/inference-service.yaml").read_text())
    [container] = manifest["spec"]["predictor"]["containers"]
    command = [*container["command"], *container.get("args", [])]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    [token] = [e for e in container["env"] if e["name"] == config.FARM_OIP_TOKEN]
    assert "secretKeyRef" in token["valueFrom"]


# ---------------------------------------------------------------------------------------
# Two replicas that require a token

TOKEN = secrets.token_hex(16)


@pytest.fixture(scope="module")
def replicas(
    served_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ModelServerProcess]]:
    logs = tmp_path_factory.mktemp("replicas")
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                ModelServerProcess(served_models_dir, logs / f"{n}.log", token=TOKEN)
            )
            for n in "ab"
        ]


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_server_with_a_token_serves_only_requests_that_carry_it(
    transport: str, replicas: list[ModelServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = replicas[0]
    url = server.grpc_url if transport == "grpc" else server.http_url
    crops = {"crops": np.zeros((1, 48, 48, 3), np.uint8)}
    refused = "UNAUTHENTICATED" if transport == "grpc" else "HTTP 401"
    for token, reason in ((None, "no bearer token"), ("not-" + TOKEN, "wrong bearer token")):
        client = oip.OipClient(url, token=token)
        with pytest.raises(oip.OipError, match=f"{refused}: {reason}") as failure:
            client.infer("disease_0_grader", crops, oip_runners.GRADER_OUTPUTS)
        assert "\n" not in str(failure.value)
    monkeypatch.setenv(config.FARM_OIP_URL, url)
    monkeypatch.setenv(config.FARM_OIP_TOKEN, TOKEN)
    monkeypatch.setenv(config.FARM_INFERENCE, "oip")
    settings = InferenceResource.from_environment().settings()
    client = oip.OipClient.from_settings(settings)
    reported, _ = client.infer("disease_0_grader", crops, oip_runners.GRADER_OUTPUTS)
    assert reported == oip_wire.Reported("disease_0_grader", "v1")


def test_a_server_with_a_token_answers_health_checks_without_it(
    replicas: list[ModelServerProcess],
) -> None:
    import grpc
    import requests
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    server = replicas[0]
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert requests.get(server.http_url + path, timeout=10).status_code == 200
    assert requests.get(server.http_url + "/v2/models", timeout=10).status_code == 401
    stub = grpc_stub(server.grpc_url)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="leaf_detector"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_empty_batch_neither_waits_for_nor_holds_the_emulated_accelerator() -> None:
    """A run's version check sends every replica an empty batch of each model. Held like a
    real batch, it cost scale_out.py's runs 6 models x k replicas x the batch time each,
    queued behind the other runs' batches: a run's time grew with k."""
    from farm_platform.ml.serving import EmulatedAccelerator

    accelerator = EmulatedAccelerator(batch_seconds=0.01)
    holding, release, entered = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with accelerator.batch(32):
            holding.set()
            release.wait(60)

    def another_batch() -> None:
        with accelerator.batch(1):
            entered.set()

    holder, waiter = threading.Thread(target=hold), threading.Thread(target=another_batch)
    holder.start()
    try:
        assert holding.wait(60)
        with accelerator.batch(0):
            assert not release.is_set()  # in and out while a real batch holds it
        waiter.start()
        assert not entered.wait(0.5), "a real batch must wait for the accelerator"
    finally:
        release.set()
        holder.join(60)
        if waiter.is_alive():
            waiter.join(60)
    assert entered.is_set()


def test_clients_made_together_start_their_rotations_at_different_replicas() -> None:
    """Every run makes its own client. When each rotation began at the first replica, runs
    started together asked the same replica at the same moment, request after request, and
    queued on it while the others idled (benchmarks/scale_out.py, 1 s batches: efficiency
    0.34 at k = 4 with the cores 60 % idle)."""
    urls = [f"grpc://127.0.0.1:{port}" for port in range(9001, 9005)]
    firsts = [oip.OipClient(",".join(urls))._rotation()[0] for _ in range(64)]
    # Random starts: missing a replica in 64 clients has a chance of 4 * (3/4)**64 < 1e-7.
    assert set(firsts) == set(urls)
    pinned = oip.OipClient(",".join(urls), first_replica=2)
    assert [pinned._rotation()[0] for _ in range(3)] == [urls[2], urls[3], urls[0]]


def test_requests_spread_over_the_replicas_and_survive_one_killed_mid_batch(
    replicas: list[ModelServerProcess], served_models_dir: Path
) -> None:
    registry = ModelRegistry(served_models_dir)
    card, detector_card = registry.grader_for("disease_1"), registry.detector()
    grader = inference.load_grader(card, registry)
    a, b = (server.grpc_url for server in replicas)
    client = oip.OipClient(f"{a},{b}", timeout=10, token=TOKEN, first_replica=0)

    client.reload(card.id)  # on every replica
    assert client.answered == {a: 1, b: 1}
    oip_runners.check_versions(client, list(registry.active_cards().values()))
    assert client.answered == {a: 7, b: 7}  # every replica was asked about every model

    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (16, 8, 48, 48, 3), dtype=np.uint8)
    for n, crops in enumerate(batch):
        if n == 9:
            assert client.answered == {a: 7 + 5, b: 7 + 4}
            assert replicas[1].log_path.read_text().count("ModelInfer") == 6 + 4
            # The next request (b's turn) kills b mid-computation; a answers it instead.
            photos = rng.integers(0, 256, (36, 256, 256, 3), dtype=np.uint8)
            killer = kill_on_arrival(replicas[1], 6 + 4)
            served_boxes = oip_runners.remote_detector(client, detector_card).run(photos)
            killer.join()
            local = inference.load_detector(detector_card, registry)
            # In the server's batches of 32, so that the float sums run in the same order.
            local_boxes = [*inference.run_detector(local, photos[:32])]
            local_boxes += inference.run_detector(local, photos[32:])
            for (boxes, scores), (want_boxes, want_scores) in zip(
                served_boxes, local_boxes, strict=True
            ):
                assert np.array_equal(boxes, want_boxes) and np.array_equal(scores, want_scores)
            assert client.answered == {a: 7 + 5 + 1, b: 7 + 4}  # b never answered it
        _, served = client.infer(card.id, {"crops": crops}, oip_runners.GRADER_OUTPUTS)
        index, confidence = inference.run_grader(grader, inference.to_tensor(crops))
        assert np.array_equal(served["index"], index)
        assert np.allclose(served["confidence"], confidence, rtol=0, atol=1e-6)
    assert client.answered == {a: 7 + 5 + 1 + 7, b: 7 + 4}
    # b's own log: its share, then the request it was killed in
    assert replicas[1].log_path.read_text().count("ModelInfer") == 6 + 4 + 1

    # The version check passes on the replica it can still reach.
    oip_runners.check_versions(client, [card])


def test_replicas_all_unreachable_fail_in_one_line_naming_them() -> None:
    urls = [f"grpc://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    client = oip.OipClient(",".join(urls), timeout=1)
    registry = configured_registry()
    for attempt in (
        lambda: client.infer("disease_0_grader", {"crops": np.zeros((0, 48, 48, 3), np.uint8)}, ()),
        lambda: oip_runners.check_versions(client, [registry.grader_for("disease_0")]),
    ):
        with pytest.raises(oip.OipUnavailable) as failure:
            attempt()
        message = str(failure.value)
        assert "\n" not in message
        assert message.startswith(f"model servers {urls[0]}, {urls[1]} unreachable after 3 tries")
        # The time the tries took, and the timeout as a limit, not as what each try took.
        assert re.search(r"after 3 tries in [0-9]+\.[0-9] s \(", message), message
        assert "a try waits up to 1 s" in message and "s each" not in message


def test_a_list_of_server_addresses_is_checked_one_by_one() -> None:
    from farm_platform.config_values import oip_url

    assert oip_url(" grpc://127.0.0.1:1/, http://127.0.0.1:2") == (
        "grpc://127.0.0.1:1,http://127.0.0.1:2"
    )
    with pytest.raises(config.ConfigError, match="'127.0.0.1:2' must start with grpc://"):
        oip_url("grpc://127.0.0.1:1,127.0.0.1:2")
