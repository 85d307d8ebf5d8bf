"""The project's model server's models as runners: the client (ml/oip.py) sends each batch
to the server, and every answer must come from the run's model version.

The tensors each model takes and gives (ml/serving.py serves them):

    leaf_detector        images UINT8 [N, S, S, 3]  -> boxes FP32 [M, 4], scores FP32 [M],
                                                       counts INT64 [N] (M = sum of counts)
    disease_<k>_grader   crops UINT8 [N, H, W, 3]   -> index INT64 [N], confidence FP32 [N]
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from farm_platform.ml.oip import OipClient, OipUnavailable, OipVersionMismatch
from farm_platform.ml.oip_wire import Reported
from farm_platform.ml.registry import ModelCard

if TYPE_CHECKING:  # torch loads only where a model runs (the CLI's error path must not)
    import torch

    from farm_platform.ml.inference import DetectorRunner, GraderRunner

DETECTOR_INPUT = "images"
DETECTOR_OUTPUTS = ("boxes", "scores", "counts")
GRADER_INPUT = "crops"
GRADER_OUTPUTS = ("index", "confidence")


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
        raise client.unavailable(unreachable[-1].reason, client.urls, time.monotonic() - started)


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
