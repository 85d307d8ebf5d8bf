"""Evaluation records, registered evaluation datasets and the activation gate (issue 42,
part 4).

- The registry (registry.json) names evaluation datasets under `evaluation_datasets`:
  `{"<name>": {"path": "<relative to the models folder>", "sha256": "<dataset sha256>"}}`
  (farm_platform/ml/datasets.py says what the sha256 covers). In a bucket the files live
  under the bucket's models folder and are read into the local cache, checked there.
- A version's evaluations are kept beside it, in `<model_id>/<version>/evaluations.json`
  (`{"evaluations": {"<dataset>": record}}`), not in registry.json: the card and weights
  of a version never change, its evaluations do (a new dataset), and registry.json is
  what every sensor and model server watches, so it changes only on (de)activation.
- `activate` refuses a version that is worse than the active one on any registered
  dataset by more than `FARM_GATE_TOLERANCE`, unless forced with a reason; every
  activation through it is appended to registry.json's `activations` log in the same
  write that switches the version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm_platform.ml.datasets import (
    DatasetError,
    DetectionDataset,
    GradeDataset,
    dataset_files,
    dataset_kind,
    dataset_root,
    dataset_sha256,
    open_dataset,
)
from farm_platform.ml.evaluation_records import EVALUATIONS_FILE, read_evaluations
from farm_platform.ml.model_store import BucketModelStore, default_cache_dir
from farm_platform.ml.registry import (
    REGISTRY_FILE,
    ModelCard,
    ModelRegistry,
    ModelRegistryError,
)

DATASETS_KEY = "evaluation_datasets"
DATASETS_FOLDER = "datasets"
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DatasetChecksumError(ModelRegistryError):
    """A registered dataset whose files no longer give the sha256 the registry names."""


class GateRefused(ModelRegistryError):
    """A version worse than the active one on a registered dataset, not forced."""


@dataclass(frozen=True)
class RegisteredDataset:
    name: str
    path: str  # relative to the models folder
    sha256: str

    @property
    def task(self) -> str:
        """Which models it evaluates: COCO detection sets the detector, the rest graders."""
        coco = Path(self.path).suffix.lower() == ".json"  # not a grade .csv or folder
        return "leaf_detector" if coco else "disease_grader"


def registered_datasets(registry: ModelRegistry) -> list[RegisteredDataset]:
    """The registry's evaluation datasets, each entry checked for form."""
    data = registry.read_json(REGISTRY_FILE) or {}
    entries = data.get(DATASETS_KEY, {})
    if not isinstance(entries, dict):
        raise ModelRegistryError(f"model registry: {DATASETS_KEY!r} must be an object")
    found = []
    for name, entry in sorted(entries.items()):
        path = entry.get("path") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not isinstance(sha, str) or len(sha) != 64:
            raise ModelRegistryError(
                f"model registry: {DATASETS_KEY}.{name} needs 'path' and a 64-digit 'sha256'"
            )
        if path.startswith("/") or ".." in path.split("/"):
            raise ModelRegistryError(
                f"model registry: {DATASETS_KEY}.{name} path {path!r} must lie inside the "
                "models folder (relative, no '..')"
            )
        found.append(RegisteredDataset(name, path, sha))
    return found


def register_dataset(registry: ModelRegistry, name: str, path: Path) -> RegisteredDataset:
    """Name the dataset at `path` in the registry, with its sha256. A local registry: `path`
    must lie inside the models folder; a bucket: its files are uploaded first, under
    `datasets/<name>/`."""
    if not _DATASET_NAME.match(name):
        raise ModelRegistryError(f"dataset name {name!r}: letters, digits, '_', '.' or '-'")
    dataset = open_dataset(path)
    if registry.in_bucket:
        relative = f"{DATASETS_FOLDER}/{name}" + (f"/{path.name}" if path.is_file() else "")
        entry = RegisteredDataset(name, relative, dataset_sha256(dataset))
        _upload(registry, entry, dataset)
    else:
        assert isinstance(registry.models_dir, Path)
        try:
            relative = path.resolve().relative_to(registry.models_dir.resolve()).as_posix()
        except ValueError:
            raise ModelRegistryError(
                f"dataset {path} is outside the models folder {registry.models_dir}: copy it "
                f"into {registry.models_dir / DATASETS_FOLDER} first"
            ) from None
        entry = RegisteredDataset(name, relative, dataset_sha256(dataset))
    _name_in_registry(registry, entry)
    return entry


def push_datasets(source: ModelRegistry, destination: ModelRegistry) -> list[str]:
    """Copy the registered datasets of `source` (a local models folder) that `destination`
    (e.g. a bucket) lacks or holds with other bytes, files first, then their registry entry;
    the names pushed."""
    theirs = {entry.name: entry for entry in registered_datasets(destination)}
    pushed = []
    for entry in registered_datasets(source):
        if theirs.get(entry.name) != entry:
            _upload(destination, entry, open_registered(source, entry))
            _name_in_registry(destination, entry)
            pushed.append(entry.name)
    return pushed


def _upload(
    registry: ModelRegistry, entry: RegisteredDataset, dataset: DetectionDataset | GradeDataset
) -> None:
    """The dataset's files to `entry.path`'s folder in the registry's store."""
    root = dataset_root(dataset)
    folder = entry.path if dataset.path.is_dir() else entry.path.rsplit("/", 1)[0]
    for file in dataset_files(dataset):
        relative = f"{folder}/{file.relative_to(root).as_posix()}"
        if isinstance(registry.store, BucketModelStore):
            registry.store.put_file(file, relative)
        else:
            target = registry.store.location(relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)


def _name_in_registry(registry: ModelRegistry, entry: RegisteredDataset) -> None:
    def change(data: dict[str, Any]) -> bool:
        data.setdefault(DATASETS_KEY, {})[entry.name] = {
            "path": entry.path,
            "sha256": entry.sha256,
        }
        return True

    registry.update_registry(change)


def open_registered(
    registry: ModelRegistry, entry: RegisteredDataset
) -> DetectionDataset | GradeDataset:
    """The registered dataset, its sha256 checked against the registry's."""
    if registry.in_bucket:
        local = _download(registry, entry)
    else:
        assert isinstance(registry.models_dir, Path)
        local = registry.models_dir / entry.path
    try:
        dataset = open_dataset(local)
    except DatasetError as exc:
        raise DatasetError(f"registered dataset {entry.name!r}: {exc}") from None
    actual = dataset_sha256(dataset)
    if actual != entry.sha256:
        raise DatasetChecksumError(
            f"registered dataset {entry.name!r} at {registry.store.location(entry.path)} does "
            f"not match the registry: expected sha256 {entry.sha256}, actual {actual}; restore "
            f"its files, or register it again with `farm-platform models register-dataset "
            f"{entry.name} PATH` if the change is meant"
        )
    return dataset


def _download(registry: ModelRegistry, entry: RegisteredDataset) -> Path:
    """A bucket dataset's index file and the images it names, into the local cache."""
    if Path(entry.path).suffix.lower() not in (".json", ".csv"):
        raise DatasetError(
            f"registered dataset {entry.name!r}: a bucket holds datasets with an index file "
            "(COCO .json or grade .csv), not grade folders"
        )
    store = registry.store
    base = store.cache_dir if isinstance(store, BucketModelStore) else default_cache_dir()
    cache = base / DATASETS_FOLDER / entry.sha256
    index = cache / Path(entry.path).name
    cache.mkdir(parents=True, exist_ok=True)
    _replace(index, registry.store.read_bytes(entry.path))
    folder = entry.path.rsplit("/", 1)[0]
    if dataset_kind(index) == "coco_detection":
        import json

        names = [image.get("file_name", "") for image in json.loads(index.read_bytes())["images"]]
    else:
        import csv

        with open(index, newline="", encoding="utf-8") as handle:
            names = [row.get("path") or "" for row in csv.DictReader(handle)]
    for name in sorted(set(names)):
        target = cache / name
        if not target.resolve().is_relative_to(cache.resolve()):
            raise DatasetError(f"registered dataset {entry.name!r}: {name!r} leaves its folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace(target, registry.store.read_bytes(f"{folder}/{name}"))
    return index


def _replace(target: Path, data: bytes) -> None:
    # Read afresh each time (a few hundred KB) and swapped in whole: a copy spoilt once is
    # never kept, and another process reading the same copy never sees half a file.
    part = target.with_name(f".{target.name}.{os.getpid()}")
    part.write_bytes(data)
    os.replace(part, target)


# --------------------------------------------------------------------------- records


def evaluate_and_record(
    registry: ModelRegistry,
    card: ModelCard,
    dataset: DetectionDataset | GradeDataset,
    name: str,
    shown_path: str,
) -> dict[str, Any]:
    """Evaluate `card` on `dataset` and store the record beside the version as `name`
    (`shown_path`: where the dataset is, as the user or the registry names it)."""
    from farm_platform.ml.evaluation import evaluate_model

    figures = evaluate_model(card, registry, dataset)
    record = {
        "dataset": name,
        "dataset_path": shown_path,
        "dataset_sha256": dataset_sha256(dataset),
        "model_sha256": card.sha256,
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **figures,
    }
    stored = read_evaluations(registry, card.id, card.version)
    stored[name] = record
    registry.store.write_json(
        f"{card.id}/{card.version}/{EVALUATIONS_FILE}", {"evaluations": stored}
    )
    return record


def adhoc_name(path: Path) -> str:
    """The record's name of a dataset evaluated by path: its file name and a short hash."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{path.name}@{digest}"


def registered_record(
    registry: ModelRegistry, card: ModelCard, entry: RegisteredDataset, fresh: bool = False
) -> dict[str, Any]:
    """The version's record on a registered dataset, whose files are checked against the
    registry's sha256 every time: the stored record if it was made with these weights on
    these bytes (and not `fresh`), else a new evaluation (stored)."""
    dataset = open_registered(registry, entry)
    stored = read_evaluations(registry, card.id, card.version).get(entry.name)
    if (
        not fresh
        and stored
        and stored.get("dataset_sha256") == entry.sha256
        and stored.get("model_sha256") == card.sha256
    ):
        return stored
    return evaluate_and_record(registry, card, dataset, entry.name, entry.path)


def evaluate_registered(
    registry: ModelRegistry, card: ModelCard, fresh: bool = True
) -> list[dict[str, Any]]:
    """`card` on every registered dataset of its task (what `models add` and `models
    evaluate` without --dataset run)."""
    return [
        registered_record(registry, card, entry, fresh)
        for entry in registered_datasets(registry)
        if entry.task == card.task
    ]
