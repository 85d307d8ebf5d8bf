"""An evaluation renderer family that training never sees (issue 25).

Written apart from `dev/simulate` (whose source the model cards fingerprint, and whose
photos every model was trained on) and sharing none of its code: other leaf geometry,
other soil, other lesions, other optics. Models are measured on it to learn how they do
on photos unlike their training data (`models/evaluate.py --renderer eval`), and its
hardest photos drive the drift checks' tests.

A photo (numpy + PIL only, deterministic in its `numpy.random.Generator`):

* soil: one of several palettes (dark loam, grey silt, red clay, pale sand) with
  multi-octave value noise, dry cracks, clods, stones, straw stubble and dead-leaf
  fragments (brown, leaf-shaped, not leaves);
* leaves: tapered outlines (a rounded base and a pointed tip, each with its own
  exponent), some lobed or serrated, bent along a curved midrib, with arching side
  veins; placed so that up to `MAX_OCCLUSION` of a leaf may be hidden by later ones;
* each leaf casts a soft shadow along the photo's sun direction, longer for leaves
  higher above the ground, on the soil and on the leaves below it;
* lighting: a gradient across the photo, vignetting, a colour cast and a gamma;
* optics: defocus or motion blur, shot and read noise, then a real JPEG round trip
  (quality 30-85, 4:2:0 chroma).

Lesions (grade g in 0..3 sets how much of a leaf's fixed lesion plan is drawn):

* disease_0: angular dark olive spots bounded like vein-limited lesions, yellow halo;
* disease_1: mosaic mottling, pale yellow-green patches over the whole blade;
* disease_2: grey downy mould patches, fuzzy, denser near the margin;
* disease_3: purple-black necrosis along the midrib, then the side veins;
* disease_4: marginal scorch, a brown band inward from the whole margin.

Ground truth is the same kind as the training renderer's: per leaf the tight pixel box
(x1/y1 exclusive) of its whole silhouette (coverage >= 0.5, hidden parts included) and
its five grades.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from farm_platform_dev.eval_leaves import EvalLeaf, LeafPatch, place_leaves

NUM_DISEASES = 5
# Seeds of this family: evaluation only. Training uses the simulator's 1000.., 4000..;
# the training renderer's evaluations 2000, 3000, 5000, 6000.
EVAL_SEED = 7000

_SOILS = (
    (72.0, 52.0, 38.0),  # dark loam
    (118.0, 110.0, 98.0),  # grey silt
    (150.0, 82.0, 56.0),  # red clay
    (178.0, 156.0, 118.0),  # pale sand
)
_SPOT = np.array([46.0, 52.0, 26.0], np.float32)
_HALO = np.array([196.0, 192.0, 72.0], np.float32)
_MOTTLE = np.array([206.0, 214.0, 110.0], np.float32)
_MOULD = np.array([178.0, 176.0, 172.0], np.float32)
_VEIN_ROT = np.array([64.0, 28.0, 52.0], np.float32)
_SCORCH = np.array([150.0, 98.0, 50.0], np.float32)
_SCORCH_EDGE = np.array([70.0, 44.0, 24.0], np.float32)

_SPOTS = (0, 3, 7, 13)
_MOTTLE_SHARE = (0.0, 0.2, 0.4, 0.65)
_MOULD_PATCHES = (0, 2, 4, 6)
_VEIN_ROT_REACH = (0.0, 0.35, 0.7, 1.0)  # share of the midrib, from the base
_SCORCH_DEPTH = (0.0, 0.16, 0.32, 0.52)  # share of the local half-width


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    image = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image) - 0.5


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
    palette = np.array(_SOILS[int(rng.integers(len(_SOILS)))], np.float32)
    palette *= rng.uniform(0.85, 1.15, 3).astype(np.float32)
    rough = sum(
        amp * _value_noise(rng, size, cells)
        for amp, cells in ((0.35, 3), (0.22, 9), (0.14, 27), (0.1, max(8, size // 3)))
    )
    ground = palette[None, None, :] * (1.0 + rough)[:, :, None]
    image = Image.fromarray(np.clip(ground, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    k = size / 256.0
    dark = tuple(int(c * 0.55) for c in palette)
    for _ in range(int(rng.integers(0, 6))):  # dry cracks: jagged dark polylines
        x, y = rng.uniform(0, size, 2)
        points = [(x, y)]
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(4, 12))):
            heading += rng.normal(0, 0.6)
            x, y = x + 7 * k * math.cos(heading), y + 7 * k * math.sin(heading)
            points.append((x, y))
        draw.line(points, fill=dark, width=max(1, int(k)))
    for _ in range(int(rng.integers(5, 40))):  # clods and stones
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(1.0, 5.0) * k
        tone = rng.uniform(0.5, 1.5)
        fill = tuple(int(min(255, c * tone)) for c in palette)
        draw.ellipse((x - r, y - r * rng.uniform(0.5, 1), x + r, y + r), fill=fill)
    for _ in range(int(rng.integers(0, 25))):  # straw stubble: short thick pale strokes
        x, y = rng.uniform(0, size, 2)
        length = rng.uniform(6, 22) * k
        theta = rng.uniform(0, math.pi)
        tone = rng.uniform(0.75, 1.0)
        draw.line(
            (x, y, x + length * math.cos(theta), y + length * math.sin(theta)),
            fill=(int(214 * tone), int(190 * tone), int(128 * tone)),
            width=max(1, int(round(rng.uniform(1, 2.5) * k))),
        )
    for _ in range(int(rng.integers(0, 5))):  # dead-leaf fragments: brown, leaf-shaped
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(4, 12) * k
        theta = rng.uniform(0, 2 * math.pi)
        corners = [
            (x + r * f * math.cos(theta + a), y + r * f * math.sin(theta + a))
            for a, f in ((0, 1.0), (2.2, 0.45), (math.pi, 0.9), (4.1, 0.4))
        ]
        tone = rng.uniform(0.7, 1.1)
        draw.polygon(corners, fill=(int(128 * tone), int(92 * tone), int(52 * tone)))
    return np.asarray(image, np.float32).copy()


def _blend(rgb: np.ndarray, color: np.ndarray, weight: np.ndarray) -> None:
    rgb += (color - rgb) * np.clip(weight, 0.0, 1.0)[:, :, None]


def _leaf_pixels(leaf: EvalLeaf, patch: LeafPatch, grades: np.ndarray, size: int) -> np.ndarray:
    plan = np.random.default_rng(leaf.plan_seed)
    s, t, w, d = patch.s, patch.t, patch.w, patch.d
    at = np.abs(t)
    h, wd = s.shape
    grain = plan.random((h, wd)).astype(np.float32)
    color = np.asarray(leaf.color, np.float32)
    # Tissue: lighter toward the base, a sheen on one half, fine grain.
    shade = 1.0 - 0.12 * s + 0.06 * np.sign(t) * (1.0 - at) + 0.06 * (grain - 0.5)
    rgb = color[None, None, :] * shade[:, :, None]
    # Midrib and arching side veins (curving toward the tip), both lighter.
    pale = np.minimum(color * 1.45 + 20.0, 255.0)
    _blend(rgb, pale, 0.7 * np.clip(1.2 - np.abs(t * w), 0, 1) * (np.abs(s) < 0.95))
    veins = 4.0 + 3.0 * plan.random()
    phase = np.mod(veins * (s - 0.35 * at**1.5), 1.0)
    near = np.minimum(phase, 1.0 - phase) * leaf.half_length * 2.0 / veins
    _blend(rgb, pale, 0.35 * np.clip(1.0 - near, 0, 1) * (at > 0.12) * (at < 0.9))

    g = int(grades[1])  # mosaic mottling over the blade
    if g:
        mottle = np.asarray(
            Image.fromarray(plan.random((6, 6)).astype(np.float32), mode="F").resize(
                (wd, h), Image.Resampling.BICUBIC
            )
        )
        cut = np.quantile(mottle[patch.alpha > 0.5], 1.0 - _MOTTLE_SHARE[g]) if d.max() > 0 else 1
        _blend(rgb, _MOTTLE, 0.85 * np.clip((mottle - cut) * 12.0 + 0.5, 0, 1))

    g = int(grades[4])  # marginal scorch: a band inward from the margin
    if g:
        band = _SCORCH_DEPTH[g] * np.maximum(w, 1.0) * (1.0 + 0.25 * np.sin(11.0 * s + 3.0 * t))
        inward = band - d
        _blend(rgb, _SCORCH, np.clip(inward + 0.5, 0, 1))
        _blend(rgb, _SCORCH_EDGE, 0.7 * np.clip(1.0 - np.abs(inward), 0, 1))

    g = int(grades[2])  # grey downy mould, fuzzy, nearer the margin
    centres = np.stack(
        [plan.uniform(-0.8, 0.8, 6), plan.choice([-1, 1], 6) * plan.uniform(0.3, 0.8, 6)], 1
    )
    if g:
        radius = max(1.5, 0.22 * leaf.half_width * (1 + 0.3 * g))
        weight = np.zeros_like(s)
        for cs, ct in centres[: _MOULD_PATCHES[g]]:
            dist = np.hypot((s - cs) * leaf.half_length, (t - ct) * w)
            weight = np.maximum(weight, np.clip(1.0 - dist / radius, 0, 1))
        _blend(rgb, _MOULD, 0.8 * weight * (0.5 + 0.5 * grain))

    g = int(grades[3])  # necrosis along the midrib, then the side veins
    if g:
        reach = -1.0 + 2.0 * _VEIN_ROT_REACH[g]
        rot = np.clip(1.6 - np.abs(t * w), 0, 1) * (s < reach)
        if g == 3:
            rot = np.maximum(rot, np.clip(1.3 - near, 0, 1) * (at < 0.8))
        _blend(rgb, _VEIN_ROT, rot)

    g = int(grades[0])  # angular spots with a yellow halo
    spots = np.stack([plan.uniform(-0.85, 0.85, 13), plan.uniform(-0.75, 0.75, 13)], 1)
    if g:
        r = max(1.2, 0.045 * leaf.half_length * 2.0) * (1.0 + 0.15 * g)
        core = np.zeros_like(s)
        halo = np.zeros_like(s)
        for cs, ct in spots[: _SPOTS[g]]:
            du = (s - cs) * leaf.half_length
            dv = (t - ct) * w
            angular = np.maximum(np.abs(du + dv), np.abs(du - dv)) / math.sqrt(2.0)
            core = np.maximum(core, np.clip(r - angular + 0.5, 0, 1))
            halo = np.maximum(halo, np.clip(1.8 * r - angular + 0.5, 0, 1))
        _blend(rgb, _HALO, 0.6 * halo)
        _blend(rgb, _SPOT, core)
    return rgb


def _shadow(patch: LeafPatch, dx: float, dy: float, size: int) -> tuple[int, int, np.ndarray]:
    """The leaf's soft shadow on the ground: its silhouette shifted and blurred."""
    pad = int(abs(dx) + abs(dy)) + 4
    h, w = patch.alpha.shape
    canvas = np.zeros((h + 2 * pad, w + 2 * pad), np.float32)
    ox, oy = pad + int(round(dx)), pad + int(round(dy))
    canvas[oy : oy + h, ox : ox + w] = patch.alpha
    blurred = Image.fromarray((canvas * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1.0 + 0.5 * math.hypot(dx, dy))
    )
    return patch.x0 - pad, patch.y0 - pad, np.asarray(blurred, np.float32) / 255.0


def _paste(
    image: np.ndarray, x0: int, y0: int, layer: np.ndarray
) -> tuple[slice, slice, np.ndarray]:
    size = image.shape[0]
    h, w = layer.shape[:2]
    ix0, iy0 = max(0, x0), max(0, y0)
    ix1, iy1 = min(size, x0 + w), min(size, y0 + h)
    return slice(iy0, iy1), slice(ix0, ix1), layer[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]


def _optics(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    phi = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(-0.3, 0.3) * (xx * math.cos(phi) + yy * math.sin(phi)) * 2.0
    light *= 1.0 - rng.uniform(0.0, 0.35) * (xx * xx + yy * yy) * 2.0
    cast = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    image = image * light[:, :, None] * cast[None, None, :] * rng.uniform(0.75, 1.2)
    image = 255.0 * (np.clip(image, 0, 255) / 255.0) ** rng.uniform(0.8, 1.25)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if rng.random() < 0.6:  # defocus
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.4) * size / 256.0))
    else:  # motion: the average of copies shifted along the flight direction
        steps = int(rng.integers(2, 6))
        heading = rng.uniform(0, 2 * math.pi)
        arr = np.asarray(pil, np.float32)
        acc = np.zeros_like(arr)
        for i in range(steps):
            shift = (i - (steps - 1) / 2) * size / 256.0
            acc += np.roll(
                arr,
                (int(round(shift * math.sin(heading))), int(round(shift * math.cos(heading)))),
                (0, 1),
            )
        pil = Image.fromarray(np.clip(acc / steps, 0, 255).astype(np.uint8))
    arr = np.asarray(pil, np.float32)
    arr = arr + np.sqrt(arr) * rng.uniform(0.2, 0.9) * rng.standard_normal(arr.shape, np.float32)
    arr = arr + rng.uniform(1.0, 6.0) * rng.standard_normal(arr.shape, np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=int(rng.integers(30, 86)), subsampling=2
    )
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).copy()


def paint_photo(
    placed: list[tuple[EvalLeaf, LeafPatch, tuple[float, float, float, float]]],
    grades: np.ndarray,
    size: int,
    ground_rng: np.random.Generator,
    day_rng: np.random.Generator,
) -> np.ndarray:
    """Paint placed leaves with their grades: soil from `ground_rng` (a position's soil is
    the same every day), sun, light and optics from `day_rng`."""
    image = _ground(ground_rng, size)
    sun = day_rng.uniform(0, 2 * math.pi)
    darkness = day_rng.uniform(0.3, 0.6)
    for (leaf, patch, _), leaf_grades in zip(placed, grades, strict=True):
        sx, sy, shade = _shadow(
            patch, leaf.height * math.cos(sun), leaf.height * math.sin(sun), size
        )
        rows, cols, layer = _paste(image, sx, sy, shade)
        image[rows, cols] *= (1.0 - darkness * layer)[:, :, None]
        rgb = _leaf_pixels(leaf, patch, leaf_grades, size)
        h, w = patch.alpha.shape
        window = image[patch.y0 : patch.y0 + h, patch.x0 : patch.x0 + w]
        window += (rgb - window) * patch.alpha[:, :, None]
    return _optics(day_rng, image)


def render_eval_photo(
    rng: np.random.Generator, n_leaves: int, size: int, severity: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One photo of `size` px: pixels (size, size, 3) uint8, true boxes (n, 4) float and
    grades (n, 5) int, as `models/evaluate.py` expects of a renderer.

    `severity` g puts every disease of every leaf at grade g; None draws each grade
    uniformly from 0..3 with a quarter of the leaves wholly healthy."""
    placed = place_leaves(rng, n_leaves, size)
    n = len(placed)
    if severity is None:
        grades = rng.integers(0, 4, (n, NUM_DISEASES))
        grades[rng.random(n) < 0.25] = 0
    else:
        grades = np.full((n, NUM_DISEASES), int(severity), np.int64)
    pixels = paint_photo(placed, grades, size, rng, rng)
    boxes = np.array([box for _, _, box in placed], np.float64).reshape(-1, 4)
    return pixels, boxes, np.asarray(grades, np.int64).reshape(-1, NUM_DISEASES)


def render_eval_images(
    seed: int,
    count: int,
    size: int = 256,
    severity: int | None = None,
    leaves: tuple[int, int] = (0, 20),
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`count` independent photos; photo i depends only on (seed, size, severity, i)."""
    out = []
    for i in range(count):
        rng = np.random.default_rng(
            (int(seed), 0xE7A1, size, 9 if severity is None else severity, i)
        )
        out.append(
            render_eval_photo(rng, int(rng.integers(leaves[0], leaves[1] + 1)), size, severity)
        )
    return out


def eval_farm_photos(config: Any) -> Iterator[tuple[Any, bytes]]:
    """A simulated farm (`dev.simulate.FarmConfig`) drawn by this family: the same
    positions, days and disease dynamics (so the same true effect) as the training
    renderer's farm, each position's leaves placed once (a fixed view, like a drone on a
    fixed route) and painted each day with the day's true grades of its leaves in view;
    (key, PNG) per photo."""
    from farm_platform.layout import ImageKey
    from farm_platform_dev.simulate import dynamics
    from farm_platform_dev.simulate.farm import control_count, position_id
    from farm_platform_dev.simulate.render import encode_png

    n_control = control_count(config.positions)
    for index in range(config.positions):
        latents = dynamics.simulate_latents(
            config.seed, index, config.days, index >= n_control, config.effect
        )
        grades = dynamics.grades_from_latents(latents)  # (days, leaves, diseases)
        layout_rng = np.random.default_rng((EVAL_SEED, 0xFA12, config.seed, index))
        placed = place_leaves(layout_rng, latents.shape[1], config.image_size)
        ground_seed = int(layout_rng.integers(0, 2**31 - 1))
        for day, date in enumerate(config.dates):
            day_rng = np.random.default_rng((EVAL_SEED, 0xDA7, config.seed, index, day))
            pixels = paint_photo(
                placed,
                grades[day, : len(placed)],
                config.image_size,
                np.random.default_rng(ground_seed),
                day_rng,
            )
            yield ImageKey(position_id(index), date), encode_png(pixels)
