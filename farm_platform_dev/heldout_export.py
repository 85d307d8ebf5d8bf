"""Held-out photos of the project's two renderers, exported as labelled datasets in the forms
a team's own data comes in (farm_platform/ml/datasets.py), so that the shipped models'
figures come from `farm-platform models evaluate` like anyone's
(`farm-platform export-heldout OUT`):

    OUT/leaves/annotations.json   COCO detection: photos/<n>.png, one box per leaf
    OUT/grades/grades.csv         path, disease, grade, photo_size: crops/<n>_<leaf>.png

The seeds are the held-out ones of `models/evaluate.py` (training never uses them).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RENDERERS = ("eval", "training")
# models/evaluate.py's held-out seeds: HELDOUT_SEED (training renderer), EVAL_HELDOUT_SEED.
HELDOUT_SEEDS = {"training": 2000, "eval": 7100}
LEAF_COUNT_BINS = ((0, 5), (6, 12), (13, 20))


@dataclass(frozen=True)
class Exported:
    coco: Path
    grades: Path
    photos: int
    leaves: int
    crops: int


def _photos(
    renderer: str, seed: int, count: int, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pixels, boxes (n, 4) x0 y0 x1 y1, grades (n, 5)) per photo."""
    if renderer == "eval":
        from farm_platform_dev.eval_render import render_eval_images

        yield from render_eval_images(seed, count, size)
        return
    from farm_platform.ml.pixels import decode_png
    from farm_platform_dev.simulate import render_training_images

    for sim in render_training_images(seed, count, size):
        boxes = [[lf.x0, lf.y0, lf.x1, lf.y1] for lf in sim.leaves]
        grades = [lf.grades for lf in sim.leaves]
        yield (
            decode_png(sim.png),
            np.array(boxes, np.float64).reshape(-1, 4),
            np.array(grades, np.int64).reshape(-1, 5),
        )


def _count_bin(leaves: int) -> str:
    return next(f"{lo}-{hi}" for lo, hi in LEAF_COUNT_BINS if lo <= leaves <= hi)


def export_heldout(
    out: Path,
    renderer: str = "eval",
    count: int = 8,
    sizes: Sequence[int] = (128, 256),
    seed: int | None = None,
    crops_from: int | None = None,
) -> Exported:
    """`count` photos per size into OUT/leaves (COCO) and the true-box crops of the first
    `crops_from` photos per size (default all) into OUT/grades (CSV, all five diseases)."""
    from PIL import Image

    from farm_platform.ml.pixels import cut_crop

    if renderer not in RENDERERS:
        raise ValueError(f"renderer {renderer!r} must be one of {', '.join(RENDERERS)}")
    seed = HELDOUT_SEEDS[renderer] if seed is None else seed
    leaves_dir, grades_dir = out / "leaves", out / "grades"
    for folder in (leaves_dir / "photos", grades_dir / "crops"):
        folder.mkdir(parents=True, exist_ok=False)
    images, annotations, grade_rows = [], [], []
    for size in sizes:
        for i, (pixels, boxes, grades) in enumerate(_photos(renderer, seed, count, size)):
            image_id = len(images) + 1
            name = f"photos/{size}_{i:04d}.jpg"
            # JPEG, as a team's photos come; quality 92 keeps the renderer's own artefacts.
            Image.fromarray(pixels).save(leaves_dir / name, quality=92)
            images.append(
                {
                    "id": image_id,
                    "file_name": name,
                    "width": int(pixels.shape[1]),
                    "height": int(pixels.shape[0]),
                    "photo_size": size,
                    "leaves": _count_bin(len(boxes)),
                }
            )
            for leaf, (box, leaf_grades) in enumerate(zip(boxes, grades, strict=True)):
                x0, y0, x1, y1 = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
                if crops_from is not None and i >= crops_from:
                    continue
                crop = f"crops/{size}_{i:04d}_{leaf:02d}.png"
                Image.fromarray(np.ascontiguousarray(cut_crop(pixels, box))).save(
                    grades_dir / crop, optimize=True
                )
                grade_rows += [
                    {"path": crop, "disease": f"disease_{k}", "grade": int(g), "photo_size": size}
                    for k, g in enumerate(leaf_grades)
                ]
    coco = {
        "info": {"description": f"{renderer} renderer, held-out seed {seed}, sizes {list(sizes)}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "leaf"}],
    }
    (leaves_dir / "annotations.json").write_text(json.dumps(coco, indent=1) + "\n")
    with open(grades_dir / "grades.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "disease", "grade", "photo_size"])
        writer.writeheader()
        writer.writerows(grade_rows)
    return Exported(
        leaves_dir / "annotations.json",
        grades_dir / "grades.csv",
        len(images),
        len(annotations),
        len(grade_rows) // 5,
    )


def add_heldout_command(commands: Any) -> None:
    """`farm-platform export-heldout OUT`: the renderers' held-out photos as datasets."""
    export = commands.add_parser(
        "export-heldout",
        help="render held-out photos as a COCO detection set and a grade CSV",
    )
    export.add_argument("out", type=Path, help="a new folder: OUT/leaves and OUT/grades")
    export.add_argument(
        "--renderer",
        choices=("eval", "training"),
        default="eval",
        help="eval: the evaluation family no model was trained on; training: the simulator",
    )
    export.add_argument("--count", type=int, default=8, help="photos per size")
    export.add_argument("--sizes", default="128,256", help="photo sizes, comma-separated")
    export.add_argument("--seed", type=int, default=None, help="default: the held-out seed")
    export.add_argument(
        "--crops-from", type=int, default=None, help="grade crops of the first N photos per size"
    )
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    done = export_heldout(args.out, args.renderer, args.count, sizes, args.seed, args.crops_from)
    print(f"{done.photos} photos, {done.leaves} leaves: {done.coco}")
    print(f"{done.crops} crops x 5 diseases: {done.grades}")
    return 0
