"""Model cards and the registry of active model versions (docs/contracts.md, Models).

Layout, relative to the models folder (default: `<repo>/models`):

    registry.json                      {"active": {"<model_id>": "<version>", ...}}
    <model_id>/<version>/card.json     the model card (fields: see ModelCard)
    <model_id>/<version>/<weights>     the state_dict named by the card

This module must not import torch: Dagster loads it with the code location.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from farm_platform import config

REGISTRY_FILE = "registry.json"
CARD_FILE = "card.json"
TASKS = ("leaf_detector", "disease_grader")
DETECTOR_MODEL_ID = "leaf_detector"
DISEASE_TYPES = tuple(f"disease_{k}" for k in range(5))
# Ids and versions become path segments of crop URIs and table keys.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_ARCHITECTURE_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def grader_model_id(disease_type: str) -> str:
    return f"{disease_type}_grader"


class ModelRegistryError(ValueError):
    """A registry file, model card or weights file that cannot be used."""


class ModelCardError(ModelRegistryError):
    """A model card that is missing, not JSON, or has a missing / invalid field."""


class ModelNotFoundError(ModelRegistryError):
    """A model id or version the registry does not know."""


class ModelFileMissingError(ModelRegistryError):
    """A weights file named by a card is not on disk."""


class ModelChecksumError(ModelRegistryError):
    """A weights file whose sha256 differs from its card."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """One model version, as described by its `card.json`."""

    id: str
    version: str
    task: str
    disease_type: str | None
    grades: tuple[int, ...] | None
    input_size: tuple[int, int]
    architecture: str
    architecture_kwargs: Mapping[str, Any]
    weights: str
    sha256: str
    training: Mapping[str, Any]
    metrics: Mapping[str, Any]
    created_at: str
    # Where the card was read from; weights are resolved relative to it.
    directory: Path | None = field(default=None, compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def disease_name(self) -> str | None:
        """A grader's readable disease name (`disease_name` in its card), if it has one."""
        name = self.extra.get("disease_name")
        return name if isinstance(name, str) and name else None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str | Path = "<card>") -> ModelCard:
        """Validate a parsed card; errors name the file and the field."""

        def fail(name: str, why: str) -> ModelCardError:
            return ModelCardError(f"model card {source}: field {name!r} {why}")

        if not isinstance(data, Mapping):
            raise ModelCardError(f"model card {source}: expected a JSON object")

        def required(name: str, kind: type | tuple[type, ...]) -> Any:
            if name not in data:
                raise fail(name, "is missing")
            value = data[name]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                kind_name = getattr(kind, "__name__", None) or "/".join(k.__name__ for k in kind)
                raise fail(name, f"must be {kind_name}, got {value!r}")
            return value

        model_id = required("id", str)
        version = required("version", str)
        for name, value in (("id", model_id), ("version", version)):
            if not _NAME_PATTERN.match(value):
                raise fail(name, f"= {value!r} must be letters, digits, '_', '.' or '-'")
        task = required("task", str)
        if task not in TASKS:
            raise fail("task", f"= {task!r} must be one of {', '.join(TASKS)}")
        if "disease_type" not in data:
            raise fail("disease_type", "is missing (null for the detector)")
        disease_type = data["disease_type"]
        grades_value = data.get("grades")
        grades: tuple[int, ...] | None = None
        if task == "disease_grader":
            if disease_type not in DISEASE_TYPES:
                raise fail("disease_type", f"= {disease_type!r} must be one of disease_0..4")
            if model_id != grader_model_id(disease_type):
                raise fail("id", f"= {model_id!r} must be {grader_model_id(disease_type)!r}")
            if (
                not isinstance(grades_value, list)
                or not grades_value
                or not all(isinstance(g, int) and not isinstance(g, bool) for g in grades_value)
                or grades_value != list(range(len(grades_value)))
            ):
                raise fail("grades", f"= {grades_value!r} must be a list 0, 1, ..., n-1")
            grades = tuple(grades_value)
        else:
            if disease_type is not None:
                raise fail("disease_type", "must be null for a leaf_detector")
            if model_id != DETECTOR_MODEL_ID:
                raise fail("id", f"= {model_id!r} must be {DETECTOR_MODEL_ID!r}")
        size = required("input_size", list)
        if len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size
        ):
            raise fail("input_size", f"= {size!r} must be [height, width] positive integers")
        architecture = required("architecture", str)
        if not _ARCHITECTURE_PATTERN.match(architecture):
            raise fail("architecture", f"= {architecture!r} must look like 'package.module:Class'")
        kwargs = required("architecture_kwargs", dict)
        weights = required("weights", str)
        if not weights or "/" in weights or "\\" in weights or weights in (".", ".."):
            raise fail("weights", f"= {weights!r} must be a file name beside the card")
        sha = required("sha256", str)
        if not _SHA256_PATTERN.match(sha):
            raise fail("sha256", f"= {sha!r} must be 64 lowercase hex digits")
        training = required("training", dict)
        metrics = required("metrics", dict)
        created_at = required("created_at", str)
        try:
            dt.datetime.fromisoformat(created_at)
        except ValueError:
            raise fail("created_at", f"= {created_at!r} must be an ISO 8601 timestamp") from None
        known = {
            "id",
            "version",
            "task",
            "disease_type",
            "grades",
            "input_size",
            "architecture",
            "architecture_kwargs",
            "weights",
            "sha256",
            "training",
            "metrics",
            "created_at",
        }
        directory = Path(source).parent if isinstance(source, Path) else None
        return cls(
            id=model_id,
            version=version,
            task=task,
            disease_type=disease_type,
            grades=grades,
            input_size=(size[0], size[1]),
            architecture=architecture,
            architecture_kwargs=dict(kwargs),
            weights=weights,
            sha256=sha,
            training=dict(training),
            metrics=dict(metrics),
            created_at=created_at,
            directory=directory,
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def from_file(cls, path: Path) -> ModelCard:
        if not path.is_file():
            raise ModelCardError(f"model card {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelCardError(f"model card {path} is not valid JSON: {exc}") from None
        return cls.from_json(data, source=path)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        extra = data.pop("extra")
        data["grades"] = list(self.grades) if self.grades is not None else None
        data["input_size"] = list(self.input_size)
        return {**data, **extra}

    @property
    def num_grades(self) -> int:
        return len(self.grades or ())


class ModelRegistry:
    """The models folder: cards, weights and which version of each model is active."""

    def __init__(self, models_dir: Path | str | None = None) -> None:
        self.models_dir = Path(models_dir) if models_dir else config.models_dir()

    @property
    def registry_path(self) -> Path:
        return self.models_dir / REGISTRY_FILE

    def _read_registry(self) -> dict[str, Any]:
        path = self.registry_path
        if not path.is_file():
            raise ModelRegistryError(
                f"model registry {path} does not exist: run `python models/train.py` "
                "or point the registry at the models folder"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelRegistryError(f"model registry {path} is not valid JSON: {exc}") from None
        active = data.get("active") if isinstance(data, dict) else None
        if not isinstance(active, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in active.items()
        ):
            raise ModelRegistryError(
                f"model registry {path}: field 'active' must map model ids to version strings"
            )
        return data

    def active_versions(self) -> dict[str, str]:
        return dict(self._read_registry()["active"])

    def card(self, model_id: str, version: str) -> ModelCard:
        for name, value in (("model id", model_id), ("version", version)):
            if not _NAME_PATTERN.match(value or ""):
                raise ModelNotFoundError(f"bad {name} {value!r}")
        path = self.models_dir / model_id / version / CARD_FILE
        if not path.is_file():
            raise ModelNotFoundError(f"no model card for {model_id} {version}: {path} is missing")
        card = ModelCard.from_file(path)
        if (card.id, card.version) != (model_id, version):
            raise ModelCardError(
                f"model card {path}: id/version {card.id}/{card.version} do not match "
                f"its folder {model_id}/{version}"
            )
        return card

    def versions(self, model_id: str) -> list[str]:
        folder = self.models_dir / model_id
        if not folder.is_dir():
            return []
        return sorted(p.parent.name for p in folder.glob(f"*/{CARD_FILE}"))

    def active_card(self, model_id: str) -> ModelCard:
        active = self.active_versions()
        if model_id not in active:
            raise ModelNotFoundError(
                f"model registry {self.registry_path} has no active version of {model_id!r} "
                f"(known: {', '.join(sorted(active)) or 'none'})"
            )
        return self.card(model_id, active[model_id])

    def active_cards(self) -> dict[str, ModelCard]:
        return {model_id: self.card(model_id, v) for model_id, v in self.active_versions().items()}

    def detector(self) -> ModelCard:
        return self.active_card(DETECTOR_MODEL_ID)

    def grader_for(self, disease_type: str) -> ModelCard:
        if disease_type not in DISEASE_TYPES:
            raise ModelNotFoundError(
                f"unknown disease_type {disease_type!r}: expected one of {', '.join(DISEASE_TYPES)}"
            )
        return self.active_card(grader_model_id(disease_type))

    def weights_path(self, card: ModelCard) -> Path:
        directory = card.directory or self.models_dir / card.id / card.version
        return directory / card.weights

    def verify_weights(self, card: ModelCard) -> Path:
        """Check the weights file against the card's sha256; return its path."""
        path = self.weights_path(card)
        if not path.is_file():
            raise ModelFileMissingError(
                f"weights of {card.id} {card.version} are missing: {path} does not exist; "
                "run `python models/train.py` to train and write them"
            )
        actual = sha256_file(path)
        if actual != card.sha256:
            raise ModelChecksumError(
                f"weights of {card.id} {card.version} at {path} do not match the card: "
                f"expected sha256 {card.sha256}, actual sha256 {actual}"
            )
        return path

    def set_active(self, model_id: str, version: str) -> None:
        """Make `version` the live version of `model_id` (its card must exist and be valid)."""
        card = self.card(model_id, version)
        self.verify_weights(card)
        data = self._read_registry() if self.registry_path.exists() else {"active": {}}
        data["active"][model_id] = version
        data["active"] = dict(sorted(data["active"].items()))
        write_json_atomic(self.registry_path, data)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace a JSON file in one step so a concurrent reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        # mkstemp creates 0600 files; cards and the registry are meant to be shared and committed.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
