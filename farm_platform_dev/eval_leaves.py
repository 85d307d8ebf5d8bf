"""The evaluation renderer family's leaves (dev/eval_render.py paints them): tapered,
sometimes lobed or serrated outlines bent along a curved midrib, each leaf's pixel patch in
leaf coordinates, and their placement so that no leaf loses more than `MAX_OCCLUSION` of
its silhouette to later ones."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from farm_platform_dev.simulate.render import leaf_frame, solid_box

MAX_LEAVES = 20
MAX_OCCLUSION = 0.4  # a leaf may lose this much of its silhouette to later leaves
_ATTEMPTS = 80


@dataclass(frozen=True)
class EvalLeaf:
    cx: float
    cy: float
    angle: float
    half_length: float
    half_width: float
    base_exp: float  # width ~ x^base_exp near the base
    tip_exp: float  # ... and (1 - x)^tip_exp near the tip
    lobes: int
    lobe_depth: float
    serration: float
    bend: float  # midrib offset at the middle, in half-widths
    height: float  # above the ground, in px: the shadow's length
    color: tuple[float, float, float]
    plan_seed: int


@dataclass
class LeafPatch:
    x0: int
    y0: int
    s: np.ndarray  # along the midrib, -1 base .. +1 tip
    t: np.ndarray  # across, -1 .. +1 margin to margin (bent midrib at 0)
    w: np.ndarray  # local half-width (px)
    d: np.ndarray  # distance inward from the margin (px), < 0 outside
    alpha: np.ndarray


def leaf_patch(leaf: EvalLeaf, size: int, pad: int = 2) -> LeafPatch:
    reach = leaf.half_length + leaf.half_width * (1.0 + abs(leaf.bend)) + pad
    x0 = max(0, int(leaf.cx - reach))
    y0 = max(0, int(leaf.cy - reach))
    x1 = min(size, int(math.ceil(leaf.cx + reach)) + 1)
    y1 = min(size, int(math.ceil(leaf.cy + reach)) + 1)
    along, across = leaf_frame(leaf.cx, leaf.cy, leaf.angle, x0, x1, y0, y1)
    s = along / leaf.half_length
    inside = np.abs(s) < 1.0
    x = np.clip((s + 1.0) / 2.0, 0.0, 1.0)
    p, q = leaf.base_exp, leaf.tip_exp
    peak = (p / (p + q)) ** p * (q / (p + q)) ** q
    w = leaf.half_width * (x**p) * ((1.0 - x) ** q) / peak
    if leaf.lobes:
        w *= 1.0 - leaf.lobe_depth * (0.5 - 0.5 * np.cos(2.0 * math.pi * leaf.lobes * x))
    if leaf.serration:
        w *= 1.0 - leaf.serration * np.abs(np.sin(math.pi * 26.0 * x))
    across = across - leaf.bend * leaf.half_width * (1.0 - s * s)
    d = w - np.abs(across)
    alpha = np.where(inside, np.clip(d + 0.5, 0.0, 1.0), 0.0).astype(np.float32)
    t = across / np.maximum(w, 1e-3)
    return LeafPatch(x0, y0, s, t, w, d, alpha)


def _draw_leaf(rng: np.random.Generator, size: int, crowd: int) -> EvalLeaf:
    longest = (0.3 - 0.006 * max(0, crowd - 8)) * size
    half_length = rng.uniform(0.09 * size, max(0.1 * size, longest)) / 2.0
    lobed = rng.random() < 0.35
    return EvalLeaf(
        cx=rng.uniform(0, size),
        cy=rng.uniform(0, size),
        angle=rng.uniform(0, 2 * math.pi),
        half_length=half_length,
        half_width=half_length * rng.uniform(0.22, 0.55),
        base_exp=rng.uniform(0.35, 0.9),
        tip_exp=rng.uniform(0.7, 1.7),
        lobes=int(rng.integers(2, 5)) if lobed else 0,
        lobe_depth=rng.uniform(0.15, 0.4) if lobed else 0.0,
        serration=rng.uniform(0.03, 0.1) if rng.random() < 0.3 else 0.0,
        bend=rng.uniform(-0.5, 0.5),
        height=rng.uniform(0.004, 0.025) * size,
        color=(rng.uniform(30, 105), rng.uniform(88, 170), rng.uniform(20, 80)),
        plan_seed=int(rng.integers(0, 2**31 - 1)),
    )


def place_leaves(
    rng: np.random.Generator, n_leaves: int, size: int
) -> list[tuple[EvalLeaf, LeafPatch, tuple[float, float, float, float]]]:
    """Up to `n_leaves` leaves inside the photo, none hidden beyond MAX_OCCLUSION."""
    n_leaves = min(int(n_leaves), MAX_LEAVES)
    owner = np.full((size, size), -1, np.int16)
    area: list[int] = []
    seen: list[int] = []
    placed: list[tuple[EvalLeaf, LeafPatch, tuple[float, float, float, float]]] = []
    for _ in range(n_leaves):
        for _attempt in range(_ATTEMPTS):
            leaf = _draw_leaf(rng, size, n_leaves)
            patch = leaf_patch(leaf, size)
            box = solid_box(patch.alpha, patch.x0, patch.y0)
            if box is None or box[0] < 1 or box[1] < 1 or box[2] > size - 1 or box[3] > size - 1:
                continue
            h, w = patch.alpha.shape
            # The whole silhouette must lie in the patch (not cut by the photo's edge).
            if patch.alpha[0].any() or patch.alpha[-1].any() or patch.alpha[:, 0].any():
                continue
            if patch.alpha[:, -1].any():
                continue
            solid = patch.alpha >= 0.5
            window = owner[patch.y0 : patch.y0 + h, patch.x0 : patch.x0 + w]
            below = window[solid]
            below = below[below >= 0]
            if placed:
                after = np.asarray(seen) - np.bincount(below, minlength=len(placed))
                if np.any(after < (1.0 - MAX_OCCLUSION) * np.asarray(area)):
                    continue
                seen = list(after)
            window[solid] = len(placed)
            area.append(int(solid.sum()))
            seen.append(int(solid.sum()))
            placed.append((leaf, patch, box))
            break
    return placed
