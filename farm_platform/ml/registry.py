"""Model cards and the registry of active model versions (docs/contracts.md, Models).

Layout, relative to the models folder (default: `<repo>/models`):

    registry.json                      {"active": {"<model_id>": "<version>", ...}}
    <model_id>/<version>/card.json     the model card (fields: see ModelCard)
    <model_id>/<version>/<weights>     the file named by the card: a state_dict, or an
                                       ONNX / TorchScript export (ml/contract.py)

This module must not import torch: Dagster loads it with the code location.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from farm_platform import config
from farm_platform.ml.card_fields import (
    DETECTOR_MODEL_ID,
    DISEASE_TYPES,
    NAME_PATTERN,
    card_fields,
    grader_model_id,
)
from farm_platform.ml.contract import EXTERNAL_OIP, ExternalServer, ModelContract
from farm_platform.ml.model_store import (
    BucketModelStore,
    RegistryConflict,
    WeightsMismatch,
    open_store,
)
from farm_platform.ml.model_store import (  # imported from here by models/*.py and tests
    sha256_file as sha256_file,
)
from farm_platform.ml.model_store import (
    write_json_atomic as write_json_atomic,
)

REGISTRY_FILE = "registry.json"
# registry.json's log of activations made through the gate (farm_platform/admin/evaluation.py).
ACTIVATIONS_KEY = "activations"
CARD_FILE = "card.json"
# Written by `python models/evaluate.py --compare-bfloat16`, next to registry.json.
PRECISION_RECORD = "precision.json"


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
    # An onnx / torchscript / external_oip card's declared input and output (its "format",
    # "input", "output" and, external, "server", kept in `extra`); None for a state_dict card.
    contract: ModelContract | None = field(default=None, compare=False)

    @property
    def format(self) -> str:
        return self.contract.format if self.contract is not None else "state_dict"

    @property
    def external(self) -> ExternalServer | None:
        """Where an external_oip card's model runs; None for a model with a file here."""
        return self.contract.server if self.contract is not None else None

    @property
    def disease_name(self) -> str | None:
        """A grader's readable disease name (`disease_name` in its card), if it has one."""
        name = self.extra.get("disease_name")
        return name if isinstance(name, str) and name else None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str | Path = "<card>") -> ModelCard:
        """Validate a parsed card (ml/card_fields.py); errors name the file and the field."""

        def fail(name: str, why: str) -> ModelCardError:
            return ModelCardError(f"model card {source}: field {name!r} {why}")

        if not isinstance(data, Mapping):
            raise ModelCardError(f"model card {source}: expected a JSON object")
        parsed = card_fields(data, fail)
        known = {f.name for f in fields(cls)} - {"directory", "extra", "contract"}
        return cls(
            **parsed,
            directory=Path(source).parent if isinstance(source, Path) else None,
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def from_file(cls, path: Path) -> ModelCard:
        if not path.is_file():
            raise ModelCardError(f"model card {path} does not exist")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ModelCardError(f"model card {path} is not valid JSON: {exc}") from None
        return cls.from_bytes(raw, source=path)

    @classmethod
    def from_bytes(cls, raw: bytes, source: str | Path) -> ModelCard:
        """A card from its file's bytes; `source` (a path, or an object's URL) names it."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelCardError(f"model card {source} is not valid JSON: {exc}") from None
        return cls.from_json(data, source=source)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        data.pop("contract")
        extra = data.pop("extra")
        data["grades"] = list(self.grades) if self.grades is not None else None
        data["input_size"] = list(self.input_size)
        return {**data, **extra}

    @property
    def num_grades(self) -> int:
        return len(self.grades or ())


class ModelRegistry:
    """The models folder: cards, weights and which version of each model is active.

    `models_dir` is a local folder (a Path) or a bucket folder (`gs://BUCKET/models`, a str;
    `farm_platform.ml.model_store` says how it is read and written); weights read from a
    bucket are kept in `cache_dir` (None: the user's cache folder). Dagster code has both
    from its `models` resource; commands from `admin.registry.configured_registry`
    (FARM_MODELS_DIR, FARM_MODELS_CACHE)."""

    def __init__(self, models_dir: Path | str, cache_dir: Path | str | None = None) -> None:
        self.models_dir: Path | str = config.parse_models_dir(models_dir)
        self.store = open_store(self.models_dir, Path(cache_dir) if cache_dir else None)

    @property
    def in_bucket(self) -> bool:
        return isinstance(self.store, BucketModelStore)

    @property
    def registry_path(self) -> Path | str:
        return self.store.location(REGISTRY_FILE)

    def _parse_registry(self, raw: bytes) -> dict[str, Any]:
        path = self.registry_path
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelRegistryError(f"model registry {path} is not valid JSON: {exc}") from None
        active = data.get("active") if isinstance(data, dict) else None
        if not isinstance(active, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in active.items()
        ):
            raise ModelRegistryError(
                f"model registry {path}: field 'active' must map model ids to version strings"
            )
        return data

    def _read_registry_generation(self) -> tuple[dict[str, Any], str]:
        """The registry and the generation it was read at (read together)."""
        try:
            raw, generation = self.store.read_with_generation(REGISTRY_FILE)
        except (FileNotFoundError, IsADirectoryError):
            raise ModelRegistryError(
                f"model registry {self.registry_path} does not exist: run `python "
                "models/train.py` or point the registry at the models folder"
            ) from None
        except OSError as exc:
            raise ModelRegistryError(f"model registry {self.registry_path}: {exc}") from None
        return self._parse_registry(raw), generation

    def _read_registry(self) -> dict[str, Any]:
        return self._read_registry_generation()[0]

    def generation(self) -> str | None:
        """The registry object's generation (a bucket's; for a local file a stand-in that
        changes whenever it is replaced), None when there is none."""
        return self.store.generation(REGISTRY_FILE)

    def active_versions_at(self) -> tuple[dict[str, str], str]:
        """The active versions and the registry generation they were read at."""
        data, generation = self._read_registry_generation()
        return dict(data["active"]), generation

    def active_versions(self) -> dict[str, str]:
        return dict(self._read_registry()["active"])

    def card(self, model_id: str, version: str) -> ModelCard:
        for name, value in (("model id", model_id), ("version", version)):
            if not NAME_PATTERN.match(value or ""):
                raise ModelNotFoundError(f"bad {name} {value!r}")
        relative = f"{model_id}/{version}/{CARD_FILE}"
        path = self.store.location(relative)
        try:
            raw = self.store.read_bytes(relative)
        except (FileNotFoundError, IsADirectoryError):
            raise ModelNotFoundError(
                f"no model card for {model_id} {version}: {path} is missing"
            ) from None
        card = ModelCard.from_bytes(raw, source=path)
        if (card.id, card.version) != (model_id, version):
            raise ModelCardError(
                f"model card {path}: id/version {card.id}/{card.version} do not match "
                f"its folder {model_id}/{version}"
            )
        return card

    def model_versions(self) -> list[tuple[str, str]]:
        """(model_id, version) of every registered version (each has a card)."""
        return self.store.card_paths()

    def versions(self, model_id: str) -> list[str]:
        return sorted(v for m, v in self.model_versions() if m == model_id)

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

    def weights_path(self, card: ModelCard) -> Path | str:
        """Where the card's weights are: a local path, or their object's URL in a bucket."""
        if card.directory is not None:
            return card.directory / card.weights
        return self.store.location(f"{card.id}/{card.version}/{card.weights}")

    def verify_weights(self, card: ModelCard) -> Path | None:
        """Check the weights file against the card's sha256; return its local path (for a
        bucket: the copy in the local cache, downloaded if the cache lacks it). None for an
        external_oip card: it has no file (`models add` checks it against its server)."""
        if card.format == EXTERNAL_OIP:
            return None
        path = self.weights_path(card)
        if isinstance(path, Path):
            if not path.is_file():
                raise ModelFileMissingError(
                    f"weights of {card.id} {card.version} are missing: {path} does not exist; "
                    "run `python models/train.py` to train and write them"
                )
            actual = sha256_file(path)
        else:
            relative = f"{card.id}/{card.version}/{card.weights}"
            try:
                return self.store.weights_file(relative, card.sha256)
            except FileNotFoundError:
                raise ModelFileMissingError(
                    f"weights of {card.id} {card.version} are missing: {path} does not exist; "
                    "upload the version again with `farm-platform models add`"
                ) from None
            except WeightsMismatch as exc:
                actual = exc.actual
        if actual != card.sha256:
            raise ModelChecksumError(
                f"weights of {card.id} {card.version} at {path} do not match the card: "
                f"expected sha256 {card.sha256}, actual sha256 {actual}"
            )
        return path

    def set_active(self, model_id: str, version: str) -> None:
        """Make `version` the live version of `model_id` (its card must exist and be valid)."""
        self.set_active_versions({model_id: version})

    def set_active_versions(
        self, versions: Mapping[str, str], record: Mapping[str, Any] | None = None
    ) -> None:
        """Make each `version` the live one of its model, in one write of registry.json,
        after checking every card and its weights. `record` (who, why: a forced activation's
        reason) is appended to the registry's `activations` log in that same write."""
        for model_id, version in versions.items():
            self.verify_weights(self.card(model_id, version))

        def change(data: dict[str, Any]) -> bool:
            if record is None and all(data["active"].get(m) == v for m, v in versions.items()):
                return False  # already so: no new generation for the watchers to read
            data["active"].update(versions)
            data["active"] = dict(sorted(data["active"].items()))
            if record is not None:
                data.setdefault(ACTIVATIONS_KEY, []).append(dict(record))
            return True

        self.update_registry(change)

    def update_registry(self, change: Callable[[dict[str, Any]], bool]) -> None:
        """Apply `change` (True: it changed something) to registry.json and write it. In a
        bucket the write is made only over the generation that was read, so a concurrent
        writer is never lost: on a conflict the registry is read again and `change` applied
        to it again."""
        for _ in range(_WRITE_ATTEMPTS):
            if self.store.generation(REGISTRY_FILE) is None:
                data: dict[str, Any] = {"active": {}}
                generation = "0"  # only if there is still none
            else:
                data, generation = self._read_registry_generation()
            if not change(data) and generation != "0":
                return
            try:
                self.store.write_json(REGISTRY_FILE, data, if_generation=generation)
                return
            except RegistryConflict:
                continue
        raise ModelRegistryError(
            f"model registry {self.registry_path} kept changing while being written "
            f"({_WRITE_ATTEMPTS} tries): try again"
        )

    def read_json(self, relative: str) -> Any | None:
        """Another JSON file of the models folder (e.g. precision.json); None if absent."""
        try:
            raw = self.store.read_bytes(relative)
        except FileNotFoundError:
            return None
        return json.loads(raw)


# Writers racing for registry.json: each conflict costs one read and one write.
_WRITE_ATTEMPTS = 10
