"""Where a batch runs: in this process (the default), on a model server (ml/oip.py), or
as an exported model under its card's contract (ml/formats.py). A runner takes what the
local model takes after the CPU-side preparation, so the same preparation and
post-processing code serves all and results are identical."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

DetectorRun = Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]
GraderRun = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DetectorRunner:
    """`run`: (N, S, S, 3) uint8 -> per image (boxes (k, 4) in input pixels, scores (k,)).

    `run_photos`, when set, replaces the square scaling and `run`: photos as they are ->
    per photo (boxes in the photo's pixels, scores); an exported model's card declares its
    own resizing (`farm_platform.ml.formats`)."""

    input_size: int
    run: DetectorRun
    run_photos: Callable[[Sequence[np.ndarray]], list[tuple[np.ndarray, np.ndarray]]] | None = None


@dataclass(frozen=True)
class GraderRunner:
    """`run`: (N, 3, H, W) float in [0, 1] -> (class index (N,), confidence (N,) float32).

    The crops are resized to the card's input size by `resize` ("stretch", or "letterbox"
    on a `pad_value` grey, as an exported model's card may declare)."""

    run: GraderRun
    resize: str = "stretch"
    pad_value: int = 0
