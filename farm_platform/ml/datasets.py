"""Labelled data in the forms a team's datasets come in (issue 42, part 3).

- Leaves: a COCO detection JSON file (`images`, `annotations` with `bbox` = [x, y, w, h] in
  pixels, `categories`); each image's `file_name` is relative to the JSON file's folder.
  Any other scalar field of an image (e.g. `photo_size`) is a stratum.
- Grades: a CSV with columns `path` (an image or crop, relative to the CSV's folder),
  `disease` (`disease_0` .. `disease_4`, or a grader card's `disease_name`) and `grade`;
  optional `x0`, `y0`, `x1`, `y1` cut the crop out of a photo; any other column is a
  stratum.
- Grades: one folder per grade, `ROOT/<grade>/<image>`, or per disease and grade,
  `ROOT/<disease>/<grade>/<image>` (a folder without disease level grades whichever grader
  is evaluated on it).

A dataset's sha256 covers every byte it is made of: the sha256 of its manifest, one line
`<sha256 of the file>  <path relative to the dataset's folder>` per file (the index file
and every image it names), sorted by path. No torch here.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm_platform.ml.model_store import sha256_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
COCO_IMAGE_FIELDS = {
    "id",
    "file_name",
    "width",
    "height",
    "license",
    "coco_url",
    "flickr_url",
    "date_captured",
}
CSV_REQUIRED = ("path", "disease", "grade")
CSV_BOX = ("x0", "y0", "x1", "y1")
KINDS = ("coco_detection", "grade_csv", "grade_folders")


class DatasetError(ValueError):
    """A labelled dataset that cannot be read as one of the supported forms."""


@dataclass(frozen=True)
class DetectionDataset:
    """A COCO detection file: the parsed JSON and the leaf category evaluated."""

    path: Path
    coco: Mapping[str, Any]
    category_id: int
    # image id -> {stratum name: value}
    strata: Mapping[int, Mapping[str, Any]]

    @property
    def root(self) -> Path:
        return self.path.parent

    def image_path(self, image: Mapping[str, Any]) -> Path:
        return self.root / image["file_name"]


@dataclass(frozen=True)
class GradeRow:
    path: Path
    disease: str | None  # None: a folder without disease level (any grader)
    grade: int
    box: tuple[float, float, float, float] | None = None
    strata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GradeDataset:
    path: Path
    kind: str
    rows: tuple[GradeRow, ...]


def dataset_kind(path: Path) -> str:
    """Which form `path` is in: by its suffix, or a folder of grade folders."""
    if path.is_dir():
        return "grade_folders"
    if path.suffix.lower() == ".json":
        return "coco_detection"
    if path.suffix.lower() == ".csv":
        return "grade_csv"
    raise DatasetError(
        f"dataset {path}: expected a COCO detection .json file, a grade .csv file or a "
        "folder with one subfolder per grade"
    )


def open_dataset(path: Path) -> DetectionDataset | GradeDataset:
    """The labelled dataset at `path`, checked: every image it names exists."""
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    kind = dataset_kind(path)
    if kind == "coco_detection":
        return read_coco(path)
    if kind == "grade_csv":
        return read_grade_csv(path)
    return read_grade_folders(path)


def read_coco(path: Path) -> DetectionDataset:
    def fail(why: str) -> DatasetError:
        return DatasetError(f"COCO file {path}: {why}")

    try:
        coco = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"not valid JSON: {exc}") from None
    if not isinstance(coco, dict):
        raise fail("expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise fail(f"field {key!r} is missing or not a list")
    category_id = _leaf_category(coco["categories"], fail)
    image_ids: set[int] = set()
    strata: dict[int, dict[str, Any]] = {}
    for i, image in enumerate(coco["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int):
            raise fail(f"images[{i}] has no integer 'id'")
        name = image.get("file_name")
        if not isinstance(name, str) or not name:
            raise fail(f"images[{i}] (id {image['id']}) has no 'file_name'")
        if not (path.parent / name).is_file():
            raise fail(f"images[{i}] file_name {name!r}: {path.parent / name} does not exist")
        image_ids.add(image["id"])
        strata[image["id"]] = {
            k: v
            for k, v in image.items()
            if k not in COCO_IMAGE_FIELDS and isinstance(v, str | int | float | bool)
        }
    for i, annotation in enumerate(coco["annotations"]):
        box = annotation.get("bbox") if isinstance(annotation, dict) else None
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) for v in box)
            or box[2] <= 0
            or box[3] <= 0
        ):
            raise fail(f"annotations[{i}] 'bbox' = {box!r} must be [x, y, width, height] > 0")
        if annotation.get("image_id") not in image_ids:
            raise fail(f"annotations[{i}] image_id {annotation.get('image_id')!r} is no image")
        # pycocotools needs these; COCO files written by labelling tools do not all have them.
        annotation.setdefault("id", i + 1)
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", float(box[2] * box[3]))
    return DetectionDataset(path, coco, category_id, strata)


def _leaf_category(categories: list[Any], fail: Any) -> int:
    """The one category, or the one named `leaf`: the detector finds leaves only."""
    ids = [c["id"] for c in categories if isinstance(c, dict) and isinstance(c.get("id"), int)]
    if len(ids) == 1:
        return ids[0]
    leaf = [
        c["id"] for c in categories if isinstance(c, dict) and str(c.get("name")).lower() == "leaf"
    ]
    if len(leaf) == 1:
        return leaf[0]
    raise fail(
        f"{len(ids)} categories and {len(leaf)} named 'leaf': give one category, or name the "
        "leaf category 'leaf'"
    )


def read_grade_csv(path: Path) -> GradeDataset:
    def fail(line: int, why: str) -> DatasetError:
        return DatasetError(f"grade CSV {path}, line {line}: {why}")

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in CSV_REQUIRED if c not in columns]
        if missing:
            raise fail(1, f"columns {missing} are missing (need {', '.join(CSV_REQUIRED)})")
        boxed = [c for c in CSV_BOX if c in columns]
        if boxed and len(boxed) != 4:
            raise fail(1, f"box columns {boxed}: give all of {', '.join(CSV_BOX)} or none")
        extra = [c for c in columns if c not in CSV_REQUIRED and c not in CSV_BOX]
        rows = []
        for line, record in enumerate(reader, start=2):
            image = path.parent / (record["path"] or "")
            if not record["path"] or not image.is_file():
                raise fail(line, f"path {record['path']!r}: {image} does not exist")
            if not record["disease"]:
                raise fail(line, "disease is empty")
            try:
                grade = int(record["grade"])
                box = tuple(float(record[c]) for c in CSV_BOX) if boxed else None
            except (TypeError, ValueError):
                raise fail(line, "grade must be an integer and x0..y1 numbers") from None
            strata = {c: record[c] for c in extra if record[c] not in (None, "")}
            rows.append(GradeRow(image, record["disease"], grade, box, strata))  # type: ignore[arg-type]
    if not rows:
        raise fail(2, "no rows")
    return GradeDataset(path, "grade_csv", tuple(rows))


def read_grade_folders(path: Path) -> GradeDataset:
    _no_loose_images(path)
    rows = []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        if folder.name.isdigit():
            rows += _grade_folder(folder, None)
        else:
            _no_loose_images(folder)
            for grade_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
                if not grade_folder.name.isdigit():
                    raise DatasetError(
                        f"grade folders {path}: {grade_folder} is not named by a grade "
                        "(expected ROOT/<grade>/ or ROOT/<disease>/<grade>/)"
                    )
                rows += _grade_folder(grade_folder, folder.name)
    if not rows:
        raise DatasetError(
            f"grade folders {path}: no images in ROOT/<grade>/ or ROOT/<disease>/<grade>/"
        )
    return GradeDataset(path, "grade_folders", tuple(rows))


def _no_loose_images(folder: Path) -> None:
    """An image outside a grade folder has no grade: refused, not skipped."""
    loose = [p.name for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DatasetError(
            f"grade folders: {folder} holds {len(loose)} image(s) outside a grade folder "
            f"(e.g. {loose[0]!r}): move each into <grade>/ or <disease>/<grade>/"
        )


def _grade_folder(folder: Path, disease: str | None) -> list[GradeRow]:
    return [
        GradeRow(image, disease, int(folder.name))
        for image in sorted(folder.iterdir())
        if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES
    ]


# --------------------------------------------------------------------------- sha256


def dataset_root(dataset: DetectionDataset | GradeDataset) -> Path:
    return dataset.path if dataset.path.is_dir() else dataset.path.parent


def dataset_files(dataset: DetectionDataset | GradeDataset) -> list[Path]:
    """Every file the dataset is made of: its index file (if any) and its images."""
    if isinstance(dataset, DetectionDataset):
        images = [dataset.image_path(image) for image in dataset.coco["images"]]
    else:
        images = [row.path for row in dataset.rows]
    index = [dataset.path] if dataset.path.is_file() else []
    return sorted(set(index + images))


def dataset_sha256(dataset: DetectionDataset | GradeDataset) -> str:
    """sha256 of the dataset's manifest (the module's docstring says what that is)."""
    root = dataset_root(dataset)
    manifest = "".join(
        f"{sha256_file(path)}  {path.relative_to(root).as_posix()}\n"
        for path in dataset_files(dataset)
    )
    return hashlib.sha256(manifest.encode()).hexdigest()
