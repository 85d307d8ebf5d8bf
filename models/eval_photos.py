"""The held-out photos the evaluation scores: rendered with seeds training never uses
(the training renderer or the evaluation family), per stratum, or saved to and loaded from
an .npz for a machine that cannot render them. `models/evaluate.py` runs them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from farm_platform.ml.inference import (
    decode_png,
)

HELDOUT_SEED = 2000
HELDOUT_COUNT = 300
STRATA_SEED = 3000  # never a training seed (training: 1000.., 4000..)
STRATA_PER_CELL = 16  # photos per (size, severity, leaf-count) cell
STRATA_SIZES = (256, 640)
RENDERERS = ("training", "eval")
# The evaluation family (farm_platform_dev/eval_render.py, issue 25): its own seeds, and
# every photo size of issue 25's targets.
EVAL_STRATA_SEED = 7000
EVAL_HELDOUT_SEED = 7100
EVAL_STRATA_SIZES = (96, 128, 256, 640)
STRATA_SEVERITIES = (0, 1, 2, 3)
LEAF_COUNT_BINS = ((0, 5), (6, 12), (13, 20))


@dataclass
class Heldout:
    images: list[np.ndarray]
    boxes: list[np.ndarray]  # (n, 4) float per image
    grades: list[np.ndarray]  # (n, 5) int per image
    pngs: list[bytes]


def render(seed: int, count: int, renderer: str = "training") -> Heldout:
    if renderer == "eval":
        return render_eval(seed, count)
    from farm_platform_dev.simulate import render_training_images

    data = Heldout([], [], [], [])
    for sim in render_training_images(seed, count):
        data.pngs.append(sim.png)
        data.images.append(decode_png(sim.png))
        data.boxes.append(
            np.array([[lf.x0, lf.y0, lf.x1, lf.y1] for lf in sim.leaves], np.float64).reshape(-1, 4)
        )
        data.grades.append(np.array([lf.grades for lf in sim.leaves], np.int64).reshape(-1, 5))
    return data


def save_heldout(data: Heldout, path: Path) -> None:
    """The photos (PNG bytes) and their truth in one .npz, for `load_heldout` on a machine
    that cannot render them (the simulator needs the whole platform installed; a lent GPU
    machine may have only torch)."""
    counts = np.array([len(boxes) for boxes in data.boxes], np.int64)
    np.savez_compressed(
        path,
        png_bytes=np.frombuffer(b"".join(data.pngs), np.uint8),
        png_lengths=np.array([len(png) for png in data.pngs], np.int64),
        leaf_counts=counts,
        boxes=np.concatenate([b.reshape(-1, 4) for b in data.boxes])
        if len(counts)
        else np.zeros((0, 4)),
        grades=np.concatenate([g.reshape(-1, 5) for g in data.grades])
        if len(counts)
        else np.zeros((0, 5), np.int64),
    )


def load_heldout(path: Path) -> Heldout:
    """The photos and truth `save_heldout` wrote."""
    with np.load(path) as saved:
        png_lengths, leaf_counts = saved["png_lengths"], saved["leaf_counts"]
        png_bytes = saved["png_bytes"].tobytes()
        boxes, grades = saved["boxes"], saved["grades"]

    def spans(lengths: np.ndarray) -> list[tuple[int, int]]:
        ends = np.cumsum(lengths)
        return list(zip((ends - lengths).tolist(), ends.tolist(), strict=True))

    pngs = [png_bytes[a:b] for a, b in spans(png_lengths)]
    leaves = spans(leaf_counts)
    return Heldout(
        images=[decode_png(png) for png in pngs],
        boxes=[boxes[a:b].astype(np.float64) for a, b in leaves],
        grades=[grades[a:b].astype(np.int64) for a, b in leaves],
        pngs=pngs,
    )


def render_eval(seed: int, count: int, size: int = 256) -> Heldout:
    """`count` photos of the evaluation family (0-20 leaves, grades drawn at random)."""
    from farm_platform_dev.eval_render import render_eval_images
    from farm_platform_dev.simulate.render import encode_png

    data = Heldout([], [], [], [])
    for pixels, boxes, grades in render_eval_images(seed, count, size):
        data.images.append(pixels)
        data.pngs.append(encode_png(pixels))
        data.boxes.append(boxes)
        data.grades.append(grades)
    return data


def render_photo(
    rng: np.random.Generator,
    n_leaves: int,
    size: int,
    severity: int | None,
    renderer: str = "training",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One photo of `size` px: pixels, true boxes (n, 4) and grades (n, 5).

    `severity` g puts every disease of every leaf at grade g (the heaviest lesions of that
    grade: spots, blotches, necrosis together); None draws each grade uniformly 0..3 as
    `render_training_images` does (without its healthy fifth). `renderer` "eval" draws it
    with the evaluation family instead (farm_platform_dev/eval_render.py)."""
    if renderer == "eval":
        from farm_platform_dev.eval_render import render_eval_photo

        return render_eval_photo(rng, n_leaves, size, severity)
    from farm_platform_dev.simulate import MAX_GRADE, NUM_DISEASES
    from farm_platform_dev.simulate import render as simulator

    layout = simulator.plan_layout(rng, n_leaves, size)
    n = len(layout.leaves)
    if severity is None:
        grades = rng.integers(0, MAX_GRADE + 1, (n, NUM_DISEASES))
    else:
        grades = np.full((n, NUM_DISEASES), severity, np.int64)
    pixels = simulator.render_layout(layout, grades, rng)
    boxes = np.array(simulator.leaf_boxes(layout), np.float64).reshape(-1, 4)
    return pixels, boxes, grades.reshape(-1, NUM_DISEASES)


@dataclass
class Stratified:
    data: Heldout
    strata: list[dict[str, Any]]  # per photo: size, severity, leaves (true count)


def count_bin(leaves: int) -> str:
    for low, high in LEAF_COUNT_BINS:
        if low <= leaves <= high:
            return f"{low}-{high}"
    raise ValueError(f"{leaves} leaves is outside every bin {LEAF_COUNT_BINS}")


def render_strata(
    seed: int = STRATA_SEED,
    per_cell: int = STRATA_PER_CELL,
    sizes: Sequence[int] = STRATA_SIZES,
    renderer: str = "training",
) -> Stratified:
    """`per_cell` photos for every photo size x severity x requested leaf-count bin.

    A crowded photo may fit fewer leaves than requested; its bin is that of the leaves
    actually placed (the true count)."""
    out = Stratified(Heldout([], [], [], []), [])
    for size in sizes:
        for severity in STRATA_SEVERITIES:
            for b, (low, high) in enumerate(LEAF_COUNT_BINS):
                for i in range(per_cell):
                    rng = np.random.default_rng((seed, size, severity, b, i))
                    pixels, boxes, grades = render_photo(
                        rng, int(rng.integers(low, high + 1)), size, severity, renderer
                    )
                    out.data.images.append(pixels)
                    out.data.boxes.append(boxes)
                    out.data.grades.append(grades)
                    out.strata.append({"size": size, "severity": severity, "leaves": len(boxes)})
    return out


def simulator_fingerprint() -> str:
    """sha256 over the simulator's source: the models are only as valid as the images."""
    import hashlib

    import farm_platform_dev.simulate as simulate

    digest = hashlib.sha256()
    for path in sorted(Path(simulate.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
