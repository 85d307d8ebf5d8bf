"""Rendering of synthetic top-down drone photos (numpy + PIL only).

An image is soil (brown, multi-scale noise, pebbles, dry straw that is neither
green nor leaf-shaped), leaves drawn on top in order (pointed ellipses with a
midrib and side veins, random rotation and size, a soft shadow), then a global
lighting change (brightness, contrast, colour temperature) and sensor noise.

Leaves are placed so that no leaf loses more than `MAX_OCCLUSION` of its
silhouette to later leaves, and their boxes are always inside the image. The
box of a leaf is the tight axis-aligned box of its rendered silhouette
(pixels with coverage >= 0.5), in pixel-edge coordinates (x1/y1 exclusive).

Lesions are drawn in leaf-local coordinates (s along the midrib, -1 base .. +1
tip; t across, -1 .. +1 margin to margin) and multiplied by the leaf's
coverage, so they never leave the silhouette. Every leaf has its own fixed
lesion plan (where spots/blotches/streaks would appear), and the grade picks
how much of the plan is drawn, so a leaf's lesions grow in place from day to
day. Each disease has its own colour, shape and location so that the graders
can tell them apart when several are present:

* disease_0: dark brown round spots with a lighter tan ring; 2 / 5 / 10 spots.
* disease_1: yellow chlorotic blotches in the leaf's base half; about 15 / 35 / 60 % of the tissue.
* disease_2: white speckled powdery patches anywhere; 2 / 4 / 7 patches, growing.
* disease_3: thin black streaks along the side veins; 2 / 4 / 7 streaks, thicker at 3.
* disease_4: dry brown necrosis from the tip (grade 1), plus the margins (2, 3).

Painting order (yellowing, necrosis, powder, spots, streaks) keeps the
countable signs (spots, streaks) on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .dynamics import MAX_LEAVES, NUM_DISEASES

MIN_LEAF_LENGTH = 28.0  # long axis at 256 px, scaled with image size
MAX_LEAF_LENGTH = 70.0
MAX_OCCLUSION = 0.3
_PLACEMENT_ATTEMPTS = 120
_SHADOW_OFFSET = 2

_YELLOW = np.array([222.0, 206.0, 58.0], dtype=np.float32)
_NECROSIS = np.array([182.0, 130.0, 62.0], dtype=np.float32)
_NECROSIS_EDGE = np.array([84.0, 54.0, 28.0], dtype=np.float32)
_POWDER = np.array([232.0, 232.0, 224.0], dtype=np.float32)
_SPOT_CORE = np.array([58.0, 36.0, 20.0], dtype=np.float32)
_SPOT_RING = np.array([186.0, 150.0, 100.0], dtype=np.float32)
_STREAK = np.array([14.0, 14.0, 12.0], dtype=np.float32)
_MIDRIB = np.array([168.0, 200.0, 128.0], dtype=np.float32)
_VEIN = np.array([120.0, 168.0, 92.0], dtype=np.float32)

# Amount of each disease per grade (index = grade).
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
class LeafParams:
    leaf_id: int
    cx: float
    cy: float
    half_length: float
    half_width: float
    angle: float
    color: tuple[float, float, float]
    lesion_seed: int


@dataclass(frozen=True)
class Layout:
    """Where the leaves of one photo are; fixed for a position across days."""

    image_size: int
    leaves: tuple[LeafParams, ...]
    background_seed: int


@dataclass
class _Geometry:
    px0: int
    py0: int
    u: np.ndarray  # along the midrib (px), + toward the tip
    v: np.ndarray  # across (px)
    s: np.ndarray  # u / half_length
    w: np.ndarray  # half-width of the leaf at s (px)
    alpha: np.ndarray  # coverage 0..1
    box: tuple[float, float, float, float]


def _extent(half_length: float, half_width: float, angle: float) -> tuple[float, float]:
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    return half_length * c + half_width * s, half_length * s + half_width * c


def _geometry(leaf: LeafParams, size: int) -> _Geometry:
    ext_x, ext_y = _extent(leaf.half_length, leaf.half_width, leaf.angle)
    pad = _SHADOW_OFFSET + 2
    px0 = max(0, int(math.floor(leaf.cx - ext_x)) - pad)
    px1 = min(size, int(math.ceil(leaf.cx + ext_x)) + pad)
    py0 = max(0, int(math.floor(leaf.cy - ext_y)) - pad)
    py1 = min(size, int(math.ceil(leaf.cy + ext_y)) + pad)
    xs = np.arange(px0, px1, dtype=np.float32) + 0.5 - leaf.cx
    ys = np.arange(py0, py1, dtype=np.float32) + 0.5 - leaf.cy
    cos, sin = math.cos(leaf.angle), math.sin(leaf.angle)
    u = xs[None, :] * cos + ys[:, None] * sin
    v = -xs[None, :] * sin + ys[:, None] * cos
    s = u / leaf.half_length
    # Pointed ellipse, a little wider toward the base.
    w = leaf.half_width * np.clip(1.0 - s * s, 0.0, None) * (1.0 - 0.18 * s)
    alpha = np.clip(w - np.abs(v) + 0.5, 0.0, 1.0)
    alpha[np.abs(s) >= 1.0] = 0.0
    inside = alpha >= 0.5
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    if len(rows) == 0:
        box = (float(px0), float(py0), float(px0 + 1), float(py0 + 1))
    else:
        box = (
            float(px0 + cols[0]),
            float(py0 + rows[0]),
            float(px0 + cols[-1] + 1),
            float(py0 + rows[-1] + 1),
        )
    return _Geometry(px0, py0, u, v, s, w, alpha, box)


def plan_layout(rng: np.random.Generator, n_leaves: int, image_size: int) -> Layout:
    """Place up to `n_leaves` leaves (fewer if they do not fit under the occlusion rule).

    A placed leaf keeps its attempt index as `leaf_id`, so the ids of the leaves that
    did fit still line up with the dynamics' leaf ids (there can be gaps).
    """
    n_leaves = min(int(n_leaves), MAX_LEAVES)
    scale = image_size / 256.0
    top = np.full((image_size, image_size), -1, dtype=np.int16)
    area: list[int] = []
    visible: list[int] = []
    leaves: list[LeafParams] = []
    for index in range(n_leaves):
        # Crowded photos get somewhat smaller leaves so that 20 can fit.
        max_len = MAX_LEAF_LENGTH - 1.2 * max(0, n_leaves - 8)
        placed = False
        for attempt in range(_PLACEMENT_ATTEMPTS):
            shrink = 0.85 ** (attempt // 30)
            length = rng.uniform(MIN_LEAF_LENGTH, max(MIN_LEAF_LENGTH, max_len * shrink)) * scale
            half_length = length / 2.0
            half_width = half_length * rng.uniform(0.3, 0.46)
            angle = rng.uniform(0.0, 2.0 * math.pi)
            ext_x, ext_y = _extent(half_length, half_width, angle)
            if 2 * ext_x + 4 >= image_size or 2 * ext_y + 4 >= image_size:
                continue
            cx = rng.uniform(ext_x + 2.0, image_size - ext_x - 2.0)
            cy = rng.uniform(ext_y + 2.0, image_size - ext_y - 2.0)
            color = (
                rng.uniform(40.0, 88.0),
                rng.uniform(108.0, 158.0),
                rng.uniform(26.0, 58.0),
            )
            leaf = LeafParams(
                leaf_id=index,
                cx=cx,
                cy=cy,
                half_length=half_length,
                half_width=half_width,
                angle=angle,
                color=color,
                lesion_seed=int(rng.integers(0, 2**31 - 1)),
            )
            geo = _geometry(leaf, image_size)
            mask = geo.alpha >= 0.5
            window = top[geo.py0 : geo.py0 + mask.shape[0], geo.px0 : geo.px0 + mask.shape[1]]
            under = window[mask]
            under = under[under >= 0]
            if len(leaves):
                lost = np.bincount(under, minlength=len(leaves))
                after = np.asarray(visible) - lost
                if np.any(after < (1.0 - MAX_OCCLUSION) * np.asarray(area)):
                    continue
                visible = list(after)
            window[mask] = len(leaves)
            count = int(mask.sum())
            area.append(count)
            visible.append(count)
            leaves.append(leaf)
            placed = True
            break
        if not placed:
            continue
    return Layout(
        image_size=image_size,
        leaves=tuple(leaves),
        background_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _soil(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.array(
        [rng.uniform(95, 140), rng.uniform(62, 88), rng.uniform(40, 66)], dtype=np.float32
    )

    def smooth_noise(cells: int) -> np.ndarray:
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        img = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(img)

    tone = 1.0 + 0.12 * smooth_noise(5) + 0.08 * smooth_noise(24) + 0.05 * smooth_noise(80)
    tone += 0.05 * rng.standard_normal((size, size)).astype(np.float32)
    soil = base[None, None, :] * tone[:, :, None]
    image = Image.fromarray(np.clip(soil, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    scale = size / 256.0
    for _ in range(int(rng.integers(10, 60))):  # pebbles: grey, small, round
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.8, 3.2) * scale
        grey = int(rng.uniform(110, 175))
        draw.ellipse((x - r, y - r * 0.8, x + r, y + r * 0.8), fill=(grey, grey - 6, grey - 14))
    for _ in range(int(rng.integers(0, 30))):  # dry straw: thin, straight, pale tan
        x, y = rng.uniform(0, size, 2)
        length = rng.uniform(8, 36) * scale
        theta = rng.uniform(0, math.pi)
        tone_s = rng.uniform(0.8, 1.05)
        color = (int(196 * tone_s), int(172 * tone_s), int(118 * tone_s))
        draw.line(
            (x, y, x + length * math.cos(theta), y + length * math.sin(theta)), fill=color, width=1
        )
    return np.asarray(image, dtype=np.float32).copy()


def _mix(rgb: np.ndarray, color: np.ndarray, weight: np.ndarray) -> None:
    """Blend toward `color` (an RGB triple or a per-pixel (h, w, 3) array) by `weight`."""
    rgb += (color - rgb) * weight[:, :, None]


def _paint_leaf(
    rgb: np.ndarray, geo: _Geometry, leaf: LeafParams, grades: np.ndarray, tex: np.ndarray
) -> None:
    """Paint leaf tissue and lesions into `rgb` (the leaf's own patch, float32)."""
    u, v, s, w = geo.u, geo.v, geo.s, geo.w
    av = np.abs(v)
    wsafe = np.maximum(w, 1e-3)
    t = v / wsafe
    a, b = leaf.half_length, leaf.half_width
    plan = np.random.default_rng(leaf.lesion_seed)
    h, wd = u.shape

    # Tissue: base colour, one side of the midrib a little brighter, darker rim, texture.
    shade = 1.0 + 0.07 * np.tanh(v / (0.35 * b)) + 0.05 * tex[:h, :wd]
    rgb[:] = np.asarray(leaf.color, dtype=np.float32)[None, None, :] * shade[:, :, None]
    period = max(5.0, a / 3.2)
    vein_coord = u - _VEIN_SLOPE * av
    phase = np.mod(vein_coord, period)
    vein_dist = np.minimum(phase, period - phase) / _VEIN_NORM
    _mix(rgb, _VEIN, 0.35 * np.clip(0.8 - vein_dist, 0, 1) * (av > 0.8))
    _mix(rgb, _MIDRIB, 0.65 * np.clip(1.1 - av, 0, 1) * (np.abs(s) < 0.93))

    # disease_1: yellow blotches, elongated along the leaf, mostly in the base half.
    g = int(grades[1])
    centers = [(-0.45, 0.0), (-0.05, 0.1), (-0.75, -0.1), (0.3, 0.0)]
    jitter = plan.uniform(-0.12, 0.12, (4, 2))
    if g:
        radius = _BLOTCH_RADIUS[g] * b
        weight = np.zeros_like(u)
        for k in range(_BLOTCH_COUNT[g]):
            cs, ct = centers[k][0] + jitter[k, 0], centers[k][1] + jitter[k, 1]
            cu, cv = cs * a, ct * b * 0.5
            d = np.sqrt(((u - cu) / 1.7) ** 2 + (v - cv) ** 2)
            weight = np.maximum(weight, np.clip((radius - d) / (0.3 * radius), 0, 1))
        _mix(rgb, _YELLOW, 0.92 * weight)

    # disease_4: necrosis from the tip, then along the margins; wavy front, dark rim.
    g = int(grades[4])
    wave_phase = plan.uniform(0, 2 * math.pi, 2)
    if g:
        front = _NECROSIS_TIP[g] + 0.06 * np.sin(7.0 * t + wave_phase[0])
        depth = s - front  # > 0 inside
        margin = np.where(
            s > _NECROSIS_MARGIN_FROM[g],
            np.abs(t) - _NECROSIS_MARGIN[g] + 0.04 * np.sin(9.0 * s + wave_phase[1]),
            -10.0,
        )
        depth_px = np.maximum(depth * a, margin * wsafe)
        dead = np.clip(depth_px + 0.5, 0, 1)
        _mix(rgb, _NECROSIS * (0.92 + 0.12 * tex[:h, :wd, None]), dead)
        rim = np.clip(1.2 - np.abs(depth_px), 0, 1)
        _mix(rgb, _NECROSIS_EDGE, 0.8 * rim)

    # disease_2: white powdery patches with speckle.
    g = int(grades[2])
    centers2 = np.stack([plan.uniform(-0.75, 0.7, 7), plan.uniform(-0.6, 0.6, 7)], axis=1)
    if g:
        radius = max(2.2, _POWDER_RADIUS[g] * 2.0 * b)
        weight = np.zeros_like(u)
        for cs, ct in centers2[: _POWDER_COUNT[g]]:
            cu = cs * a
            cv = ct * b * (1.0 - cs * cs)
            d = np.sqrt((u - cu) ** 2 + (v - cv) ** 2)
            weight = np.maximum(weight, np.clip((radius - d) / (0.45 * radius), 0, 1))
        speckle = 0.55 + 0.45 * tex[h : 2 * h, :wd]
        # Capped opacity: yellowing/necrosis under the powder must still show.
        _mix(rgb, _POWDER, np.clip(weight * speckle, 0, 0.85))

    # disease_0: dark round spots with a lighter ring.
    g = int(grades[0])
    centers0 = np.stack([plan.uniform(-0.72, 0.72, 10), plan.uniform(-0.62, 0.62, 10)], axis=1)
    if g:
        r = max(1.7, 0.046 * 2 * a) * _SPOT_SCALE[g]
        core = np.zeros_like(u)
        ring = np.zeros_like(u)
        for cs, ct in centers0[: _SPOT_COUNT[g]]:
            cu = cs * a
            cv = ct * b * (1.0 - cs * cs)
            d = np.sqrt((u - cu) ** 2 + (v - cv) ** 2)
            core = np.maximum(core, np.clip(r - d + 0.5, 0, 1))
            ring = np.maximum(ring, np.clip(1.65 * r - d + 0.5, 0, 1))
        _mix(rgb, _SPOT_RING, 0.9 * ring)
        _mix(rgb, _SPOT_CORE, core)

    # disease_3: black streaks along the side veins.
    g = int(grades[3])
    k_lo, k_hi = -int(0.8 * a / period), int(0.55 * a / period)
    slots = [(k, side) for k in range(k_lo, k_hi + 1) for side in (-1.0, 1.0)]
    order = plan.permutation(len(slots))
    starts = plan.uniform(0.05, 0.3, len(slots))
    if g:
        width = _STREAK_WIDTH[g]
        weight = np.zeros_like(u)
        for idx in order[: _STREAK_COUNT[g]]:
            k, side = slots[idx]
            dist = np.abs(vein_coord - k * period) / _VEIN_NORM
            along = (v * side > 0) & (t * side > starts[idx]) & (t * side < 0.92)
            weight = np.maximum(weight, np.clip(width - dist + 0.5, 0, 1) * along)
        _mix(rgb, _STREAK, weight)

    # A darker rim after the lesions keeps the silhouette visible even when a
    # lesion (necrosis, yellowing) has the colour of soil or of another leaf.
    rgb *= (1.0 - 0.3 * np.clip(1.0 - (w - av) / 1.3, 0, 1))[:, :, None]


def render_layout(layout: Layout, grades: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render a photo: uint8 (size, size, 3). `grades` is (n_leaves, NUM_DISEASES).

    `rng` only drives the day's lighting and sensor noise; soil and leaves come
    from the layout, so a position looks the same every day apart from its lesions.
    """
    size = layout.image_size
    grades = np.asarray(grades).reshape(len(layout.leaves), NUM_DISEASES)
    bg_rng = np.random.default_rng(layout.background_seed)
    image = _soil(bg_rng, size)
    tex_size = int(MAX_LEAF_LENGTH * size / 256.0) * 2 + 16
    tex = bg_rng.random((2 * tex_size, tex_size), dtype=np.float32)
    for leaf, leaf_grades in zip(layout.leaves, grades, strict=True):
        geo = _geometry(leaf, size)
        h, wd = geo.alpha.shape
        window = image[geo.py0 : geo.py0 + h, geo.px0 : geo.px0 + wd]
        # Shadow: the leaf's silhouette shifted down-right darkens what lies below.
        o = _SHADOW_OFFSET
        shadow = np.zeros_like(geo.alpha)
        shadow[o:, o:] = geo.alpha[:-o, :-o]
        window *= (1.0 - 0.35 * shadow)[:, :, None]
        rgb = np.empty((h, wd, 3), dtype=np.float32)
        _paint_leaf(rgb, geo, leaf, leaf_grades, tex)
        window += (rgb - window) * geo.alpha[:, :, None]

    # Lighting of the day: brightness, contrast, colour temperature; then sensor noise.
    brightness = rng.uniform(0.78, 1.18)
    contrast = rng.uniform(0.85, 1.15)
    warmth = rng.uniform(-0.08, 0.08)
    mean = image.mean()
    image = (image - mean) * contrast + mean
    image *= brightness * np.array([1 + warmth, 1.0, 1 - warmth], dtype=np.float32)
    image += rng.normal(0.0, 2.5, image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def leaf_boxes(layout: Layout) -> list[tuple[float, float, float, float]]:
    return [_geometry(leaf, layout.image_size).box for leaf in layout.leaves]


def encode_png(pixels: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    # Level 1: photos are noisy and barely compress anyway; level 6 costs ~3x the time.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width`×`height` pixels and holds none: a decompression bomb's
    header, for testing that photos are refused before their pixels are decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
