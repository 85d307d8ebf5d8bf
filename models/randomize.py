"""Domain randomization of training photos (issue 25): what a real drone photo does to the
training renderer's clean ones, drawn at random per photo.

Applied by `models/train.py --randomized-images N` to photos of the *training* renderer
(`farm_platform_dev/simulate`, through `evaluate.render_photo`), at the photo's own size
before it is scaled to the detector's input, as a camera would. Nothing here is taken from
the evaluation family (`farm_platform_dev/eval_render.py`): its code, parameters and seeds
stay unseen by training, so its figures measure generalization, not memory.

The factors, each with its own probability (`FACTORS`): a zoom into a window that cuts no
leaf (`zoom`: the leaves outside it are dropped with their boxes), then in
`randomize_photo` soft cast shadows, dead leaf-shaped and straw residue on top (not leaves:
the detector must learn to leave them), a lighting gradient and vignetting, a colour cast
and gamma, defocus or motion blur, shot and read noise, and a JPEG round trip. These leave
the boxes and grades as they are: residue and shadows cover at most a small part of a
leaf, as in a field.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Residue colours: dead tissue and straw, never green.
RESIDUE_COLOURS = np.array(
    [[120, 90, 55], [150, 120, 80], [95, 75, 50], [170, 150, 110], [110, 100, 90]], np.float64
)


def _lighting(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    h, w, _ = x.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    xx, yy = xx / max(w - 1, 1) - 0.5, yy / max(h - 1, 1) - 0.5
    field = np.ones((h, w))
    if rng.random() < 0.7:  # a gradient across the photo (sun angle, cloud edge)
        angle = rng.uniform(0, 2 * math.pi)
        field *= 1 + rng.uniform(0.1, 0.6) * (xx * math.cos(angle) + yy * math.sin(angle))
    if rng.random() < 0.5:  # vignetting
        field *= 1 - rng.uniform(0.1, 0.5) * (xx**2 + yy**2) * 2
    gains = rng.normal(1.0, 0.12, 3)  # colour cast
    x = x * field[..., None] * gains
    gamma = rng.uniform(0.7, 1.4)
    return 255.0 * np.clip(x / 255.0, 0, 1) ** gamma


def _shadows(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    h, w, _ = x.shape
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        radius = rng.uniform(0.08, 0.3) * min(w, h)
        corners = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, corners))
        radii = radius * rng.uniform(0.4, 1.3, corners)
        points = [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)
        ]
        draw.polygon(points, fill=255)
    soft = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.01, 0.04) * min(w, h)))
    depth = rng.uniform(0.25, 0.55)
    return x * (1 - depth * np.asarray(soft, np.float64)[..., None] / 255.0)


def _residue(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Dead leaf fragments (pointed, leaf-sized or smaller) and straw strokes."""
    h, w, _ = x.shape
    image = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    scale = min(w, h)
    for _ in range(int(rng.integers(2, 9))):
        colour = RESIDUE_COLOURS[rng.integers(len(RESIDUE_COLOURS))] * rng.uniform(0.8, 1.15)
        fill = (*np.clip(colour, 0, 255).astype(int).tolist(), int(rng.integers(180, 256)))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, math.pi)
        if rng.random() < 0.5:  # a fragment: a pointed lens, often torn (fewer points)
            length = rng.uniform(0.03, 0.12) * scale
            width = length * rng.uniform(0.2, 0.5)
            s = np.linspace(-1, 1, 12)
            half = width * (1 - s**2) ** rng.uniform(0.6, 1.2)
            side = rng.uniform(0.3, 1.0)
            outline = [(u * length, v) for u, v in zip(s, half * side, strict=True)]
            outline += [(u * length, -v) for u, v in zip(s[::-1], half[::-1], strict=True)]
            points = [
                (
                    cx + u * math.cos(angle) - v * math.sin(angle),
                    cy + u * math.sin(angle) + v * math.cos(angle),
                )
                for u, v in outline
            ]
            draw.polygon(points, fill=fill)
        else:  # straw: a thin stroke
            length = rng.uniform(0.05, 0.2) * scale
            dx, dy = length * math.cos(angle) / 2, length * math.sin(angle) / 2
            draw.line(
                [(cx - dx, cy - dy), (cx + dx, cy + dy)],
                fill=fill,
                width=max(1, int(rng.uniform(0.004, 0.012) * scale)),
            )
    composed = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
    return np.asarray(composed, np.float64)


def _blur(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    image = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    scale = min(x.shape[:2]) / 256
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6) * scale))
    else:  # motion: a short line kernel at a random angle
        size = 5
        length = rng.uniform(1.5, 4.0) * max(scale, 0.5)
        angle = rng.uniform(0, math.pi)
        kernel = np.zeros((size, size))
        for t in np.linspace(-length / 2, length / 2, 9):
            i = int(round(size // 2 + t * math.sin(angle)))
            j = int(round(size // 2 + t * math.cos(angle)))
            if 0 <= i < size and 0 <= j < size:
                kernel[i, j] += 1
        kernel /= kernel.sum()
        image = image.filter(ImageFilter.Kernel((size, size), kernel.ravel().tolist(), 1))
    return np.asarray(image, np.float64)


def _noise(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    shot = rng.uniform(0, 1.2)  # grey levels per sqrt(level)
    read = rng.uniform(0, 10)
    return x + rng.normal(0, 1, x.shape) * np.sqrt(read**2 + shot**2 * np.clip(x, 0, 255))


def _jpeg(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=int(rng.integers(30, 91))
    )
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.float64)


def zoom(
    rng: np.random.Generator, pixels: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square window of 55-95 % of the photo that cuts no leaf (tried a few times; else
    the whole photo): leaves larger relative to the frame, as from a lower flight. Returns
    the window's pixels, the boxes inside it (shifted) and which leaves they are."""
    size = pixels.shape[0]
    everything = np.ones(len(boxes), bool)
    for _ in range(12):
        side = int(size * rng.uniform(0.55, 0.95))
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
        inside = (
            (boxes[:, 0] >= x0)
            & (boxes[:, 1] >= y0)
            & (boxes[:, 2] <= x0 + side)
            & (boxes[:, 3] <= y0 + side)
        )
        outside = (
            (boxes[:, 2] <= x0)
            | (boxes[:, 0] >= x0 + side)
            | (boxes[:, 3] <= y0)
            | (boxes[:, 1] >= y0 + side)
        )
        if np.all(inside | outside):
            window = pixels[y0 : y0 + side, x0 : x0 + side]
            return window, boxes[inside] - np.array([x0, y0, x0, y0]), inside
    return pixels, boxes, everything


def randomize_photo(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """One photo (H, W, 3 uint8) as a camera in a field might have taken it."""
    x = pixels.astype(np.float64)
    if rng.random() < 0.5:
        x = _shadows(rng, x)
    if rng.random() < 0.5:
        x = _residue(rng, x)
    x = _lighting(rng, x)
    if rng.random() < 0.6:
        x = _blur(rng, x)
    if rng.random() < 0.8:
        x = _noise(rng, x)
    if rng.random() < 0.6:
        x = _jpeg(rng, x)
    return np.clip(x, 0, 255).round().astype(np.uint8)


FACTORS = (
    "zoom p=0.4 (a window of 55-95 % of the photo that cuts no leaf, scaled up); "
    "shadows p=0.5 (1-3 soft polygons, darkening 25-55 %); residue p=0.5 (2-8 dead leaf "
    "fragments or straw strokes on top); lighting always (gradient p=0.7 up to +-30 %, "
    "vignetting p=0.5, per-channel gain N(1, 0.12), gamma U(0.7, 1.4)); blur p=0.6 "
    "(gaussian sigma 0.3-1.6 px at 256 px, or motion 1.5-4 px); noise p=0.8 (read U(0, 10), "
    "shot U(0, 1.2) per sqrt(level)); JPEG round trip p=0.6 (quality 30-90)"
)
