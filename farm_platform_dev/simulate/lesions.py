"""Leaf tissue and the five diseases' lesions, painted in leaf-local coordinates
(render.py's module docstring describes each disease's look). Painting order (yellowing,
necrosis, powder, spots, streaks) keeps the countable signs (spots, streaks) on top."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_YELLOW = np.array([222.0, 206.0, 58.0], dtype=np.float32)
_NECROSIS = np.array([182.0, 130.0, 62.0], dtype=np.float32)
_NECROSIS_EDGE = np.array([84.0, 54.0, 28.0], dtype=np.float32)
_POWDER = np.array([232.0, 232.0, 224.0], dtype=np.float32)
_SPOT_CORE = np.array([58.0, 36.0, 20.0], dtype=np.float32)
_SPOT_RING = np.array([186.0, 150.0, 100.0], dtype=np.float32)
_STREAK = np.array([14.0, 14.0, 12.0], dtype=np.float32)
_MIDRIB = np.array([168.0, 200.0, 128.0], dtype=np.float32)
_VEIN = np.array([120.0, 168.0, 92.0], dtype=np.float32)

# Per grade 0..3.
_SPOT_COUNT = (0, 2, 5, 10)
_SPOT_SCALE = (0.0, 1.0, 1.15, 1.35)
_BLOTCH_COUNT = (0, 1, 2, 4)
_BLOTCH_RADIUS = (0.0, 0.65, 0.95, 1.2)  # times the leaf half-width
_POWDER_COUNT = (0, 2, 4, 7)
_POWDER_RADIUS = (0.0, 0.3, 0.4, 0.5)
_STREAK_COUNT = (0, 2, 4, 7)
_STREAK_WIDTH = (0.0, 0.85, 0.95, 1.35)
_NECROSIS_TIP = (2.0, 0.5, 0.25, 0.0)  # necrotic where s > this (2 = nowhere)
_NECROSIS_MARGIN = (2.0, 2.0, 0.78, 0.62)  # ... or where |t| > this (toward the tip)
_NECROSIS_MARGIN_FROM = (2.0, 2.0, -0.1, -0.55)  # margin necrosis only where s > this

_VEIN_SLOPE = 0.8  # side veins run forward: u - _VEIN_SLOPE * |v| = const
_VEIN_NORM = math.sqrt(1.0 + _VEIN_SLOPE**2)


@dataclass(frozen=True)
class LeafFrame:
    """A leaf's patch in leaf-local coordinates: u along the midrib and v across (px), s =
    u / half-length, w the half-width at s (px), t = v / w; a and b the half-length and
    half-width."""

    u: np.ndarray
    v: np.ndarray
    s: np.ndarray
    w: np.ndarray
    av: np.ndarray
    wsafe: np.ndarray
    t: np.ndarray
    a: float
    b: float


def frame(
    u: np.ndarray, v: np.ndarray, s: np.ndarray, w: np.ndarray, a: float, b: float
) -> LeafFrame:
    wsafe = np.maximum(w, 1e-3)
    return LeafFrame(u=u, v=v, s=s, w=w, av=np.abs(v), wsafe=wsafe, t=v / wsafe, a=a, b=b)


def _mix(rgb: np.ndarray, color: np.ndarray, weight: np.ndarray) -> None:
    """Blend toward `color` (an RGB triple or a per-pixel (h, w, 3) array) by `weight`."""
    rgb += (color - rgb) * weight[:, :, None]


def paint_tissue(
    rgb: np.ndarray, f: LeafFrame, color: tuple[float, float, float], tex: np.ndarray
) -> tuple[float, np.ndarray]:
    """Base colour, one side of the midrib a little brighter, texture, veins and midrib;
    returns the side veins' period and coordinate (the streaks follow them)."""
    shade = 1.0 + 0.07 * np.tanh(f.v / (0.35 * f.b)) + 0.05 * tex
    rgb[:] = np.asarray(color, dtype=np.float32)[None, None, :] * shade[:, :, None]
    period = max(5.0, f.a / 3.2)
    vein_coord = f.u - _VEIN_SLOPE * f.av
    phase = np.mod(vein_coord, period)
    vein_dist = np.minimum(phase, period - phase) / _VEIN_NORM
    _mix(rgb, _VEIN, 0.35 * np.clip(0.8 - vein_dist, 0, 1) * (f.av > 0.8))
    _mix(rgb, _MIDRIB, 0.65 * np.clip(1.1 - f.av, 0, 1) * (np.abs(f.s) < 0.93))
    return period, vein_coord


def paint_lesions(
    rgb: np.ndarray,
    f: LeafFrame,
    plan: np.random.Generator,
    grades: np.ndarray,
    tex: np.ndarray,
    period: float,
    vein_coord: np.ndarray,
) -> None:
    """Each disease's lesions at its grade, from the leaf's own lesion `plan`."""
    h, wd = f.u.shape
    _yellowing(rgb, f, int(grades[1]), plan.uniform(-0.12, 0.12, (4, 2)))
    _necrosis(rgb, f, int(grades[4]), plan.uniform(0, 2 * math.pi, 2), tex[:h, :wd])
    centers2 = np.stack([plan.uniform(-0.75, 0.7, 7), plan.uniform(-0.6, 0.6, 7)], axis=1)
    _powder(rgb, f, int(grades[2]), centers2, tex[h : 2 * h, :wd])
    centers0 = np.stack([plan.uniform(-0.72, 0.72, 10), plan.uniform(-0.62, 0.62, 10)], axis=1)
    _spots(rgb, f, int(grades[0]), centers0)
    k_lo, k_hi = -int(0.8 * f.a / period), int(0.55 * f.a / period)
    slots = [(k, side) for k in range(k_lo, k_hi + 1) for side in (-1.0, 1.0)]
    order = plan.permutation(len(slots))
    starts = plan.uniform(0.05, 0.3, len(slots))
    _streaks(rgb, f, int(grades[3]), period, vein_coord, [(slots[i], starts[i]) for i in order])


def _yellowing(rgb: np.ndarray, f: LeafFrame, g: int, jitter: np.ndarray) -> None:
    """disease_1: yellow blotches, elongated along the leaf, mostly in the base half."""
    if not g:
        return
    centers = [(-0.45, 0.0), (-0.05, 0.1), (-0.75, -0.1), (0.3, 0.0)]
    radius = _BLOTCH_RADIUS[g] * f.b
    weight = np.zeros_like(f.u)
    for k in range(_BLOTCH_COUNT[g]):
        cs, ct = centers[k][0] + jitter[k, 0], centers[k][1] + jitter[k, 1]
        cu, cv = cs * f.a, ct * f.b * 0.5
        d = np.sqrt(((f.u - cu) / 1.7) ** 2 + (f.v - cv) ** 2)
        weight = np.maximum(weight, np.clip((radius - d) / (0.3 * radius), 0, 1))
    _mix(rgb, _YELLOW, 0.92 * weight)


def _necrosis(
    rgb: np.ndarray, f: LeafFrame, g: int, wave_phase: np.ndarray, tex: np.ndarray
) -> None:
    """disease_4: necrosis from the tip, then along the margins; wavy front, dark rim."""
    if not g:
        return
    front = _NECROSIS_TIP[g] + 0.06 * np.sin(7.0 * f.t + wave_phase[0])
    depth = f.s - front  # > 0 inside
    margin = np.where(
        f.s > _NECROSIS_MARGIN_FROM[g],
        np.abs(f.t) - _NECROSIS_MARGIN[g] + 0.04 * np.sin(9.0 * f.s + wave_phase[1]),
        -10.0,
    )
    depth_px = np.maximum(depth * f.a, margin * f.wsafe)
    dead = np.clip(depth_px + 0.5, 0, 1)
    _mix(rgb, _NECROSIS * (0.92 + 0.12 * tex[:, :, None]), dead)
    rim = np.clip(1.2 - np.abs(depth_px), 0, 1)
    _mix(rgb, _NECROSIS_EDGE, 0.8 * rim)


def _powder(rgb: np.ndarray, f: LeafFrame, g: int, centers: np.ndarray, tex: np.ndarray) -> None:
    """disease_2: white powdery patches with speckle."""
    if not g:
        return
    radius = max(2.2, _POWDER_RADIUS[g] * 2.0 * f.b)
    weight = np.zeros_like(f.u)
    for cs, ct in centers[: _POWDER_COUNT[g]]:
        cu = cs * f.a
        cv = ct * f.b * (1.0 - cs * cs)
        d = np.sqrt((f.u - cu) ** 2 + (f.v - cv) ** 2)
        weight = np.maximum(weight, np.clip((radius - d) / (0.45 * radius), 0, 1))
    speckle = 0.55 + 0.45 * tex
    # Capped opacity: yellowing/necrosis under the powder must still show.
    _mix(rgb, _POWDER, np.clip(weight * speckle, 0, 0.85))


def _spots(rgb: np.ndarray, f: LeafFrame, g: int, centers: np.ndarray) -> None:
    """disease_0: dark round spots with a lighter ring."""
    if not g:
        return
    r = max(1.7, 0.046 * 2 * f.a) * _SPOT_SCALE[g]
    core = np.zeros_like(f.u)
    ring = np.zeros_like(f.u)
    for cs, ct in centers[: _SPOT_COUNT[g]]:
        cu = cs * f.a
        cv = ct * f.b * (1.0 - cs * cs)
        d = np.sqrt((f.u - cu) ** 2 + (f.v - cv) ** 2)
        core = np.maximum(core, np.clip(r - d + 0.5, 0, 1))
        ring = np.maximum(ring, np.clip(1.65 * r - d + 0.5, 0, 1))
    _mix(rgb, _SPOT_RING, 0.9 * ring)
    _mix(rgb, _SPOT_CORE, core)


def _streaks(
    rgb: np.ndarray,
    f: LeafFrame,
    g: int,
    period: float,
    vein_coord: np.ndarray,
    slots: list[tuple[tuple[int, float], float]],
) -> None:
    """disease_3: black streaks along the side veins; `slots`: (vein, side) and where the
    streak starts, in the leaf's own order."""
    if not g:
        return
    width = _STREAK_WIDTH[g]
    weight = np.zeros_like(f.u)
    for (k, side), start in slots[: _STREAK_COUNT[g]]:
        dist = np.abs(vein_coord - k * period) / _VEIN_NORM
        along = (f.v * side > 0) & (f.t * side > start) & (f.t * side < 0.92)
        weight = np.maximum(weight, np.clip(width - dist + 0.5, 0, 1) * along)
    _mix(rgb, _STREAK, weight)
