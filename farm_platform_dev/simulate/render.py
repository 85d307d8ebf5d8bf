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
from .lesions import frame, paint_lesions, paint_tissue

MIN_LEAF_LENGTH = 28.0  # long axis at 256 px, scaled with image size
MAX_LEAF_LENGTH = 70.0
MAX_OCCLUSION = 0.3
_PLACEMENT_ATTEMPTS = 120
_SHADOW_OFFSET = 2


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


def leaf_frame(
    cx: float, cy: float, angle: float, x0: int, x1: int, y0: int, y1: int
) -> tuple[np.ndarray, np.ndarray]:
    """The pixel centres of the window [x0, x1) x [y0, y1) in the frame of a leaf centred at
    (cx, cy) and turned by `angle`: (along its midrib, across it), in px; rows are y."""
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5 - cx
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5 - cy
    cos, sin = math.cos(angle), math.sin(angle)
    return xs[None, :] * cos + ys[:, None] * sin, -xs[None, :] * sin + ys[:, None] * cos


def solid_box(alpha: np.ndarray, x0: int, y0: int) -> tuple[float, float, float, float] | None:
    """The box (x0, y0, x1, y1) of a patch's pixels at least half covered, the patch's
    top-left pixel at (x0, y0); None where none is."""
    solid = alpha >= 0.5
    rows = np.flatnonzero(solid.any(axis=1))
    cols = np.flatnonzero(solid.any(axis=0))
    if len(rows) == 0:
        return None
    return (
        float(x0 + cols[0]),
        float(y0 + rows[0]),
        float(x0 + cols[-1] + 1),
        float(y0 + rows[-1] + 1),
    )


def _geometry(leaf: LeafParams, size: int) -> _Geometry:
    ext_x, ext_y = _extent(leaf.half_length, leaf.half_width, leaf.angle)
    pad = _SHADOW_OFFSET + 2
    px0 = max(0, int(math.floor(leaf.cx - ext_x)) - pad)
    px1 = min(size, int(math.ceil(leaf.cx + ext_x)) + pad)
    py0 = max(0, int(math.floor(leaf.cy - ext_y)) - pad)
    py1 = min(size, int(math.ceil(leaf.cy + ext_y)) + pad)
    u, v = leaf_frame(leaf.cx, leaf.cy, leaf.angle, px0, px1, py0, py1)
    s = u / leaf.half_length
    # Pointed ellipse, a little wider toward the base.
    w = leaf.half_width * np.clip(1.0 - s * s, 0.0, None) * (1.0 - 0.18 * s)
    alpha = np.clip(w - np.abs(v) + 0.5, 0.0, 1.0)
    alpha[np.abs(s) >= 1.0] = 0.0
    box = solid_box(alpha, px0, py0) or (float(px0), float(py0), float(px0 + 1), float(py0 + 1))
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


def _paint_leaf(
    rgb: np.ndarray, geo: _Geometry, leaf: LeafParams, grades: np.ndarray, tex: np.ndarray
) -> None:
    """Paint leaf tissue and lesions into `rgb` (the leaf's own patch, float32)."""
    leaf_frame = frame(geo.u, geo.v, geo.s, geo.w, leaf.half_length, leaf.half_width)
    plan = np.random.default_rng(leaf.lesion_seed)
    h, wd = leaf_frame.u.shape
    period, vein_coord = paint_tissue(rgb, leaf_frame, leaf.color, tex[:h, :wd])
    # Each lesion's random draws come in this order whatever the grades, so a leaf's lesions
    # stay where they were as its grades change from day to day.
    paint_lesions(rgb, leaf_frame, plan, grades, tex, period, vein_coord)
    # A darker rim after the lesions keeps the silhouette visible even when a
    # lesion (necrosis, yellowing) has the colour of soil or of another leaf.
    rgb *= (1.0 - 0.3 * np.clip(1.0 - (leaf_frame.w - leaf_frame.av) / 1.3, 0, 1))[:, :, None]


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
