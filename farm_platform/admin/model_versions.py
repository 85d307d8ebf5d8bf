"""Model versions by hand: add (validate + register), list, activate, and what is stale.

`add_model` is atomic: the folder is copied to a staging folder inside the models folder,
validated there (card, weights' sha256, the model loads and a dummy forward pass gives the
output shape its card promises; for an ONNX or TorchScript card, its declared contract on a
probe batch, ml/probe.py) and only then renamed into `<models>/<id>/<version>/` in one
step. A refused model leaves the models folder exactly as it was.

`stale_partitions` asks Dagster itself (`CachingStaleStatusResolver`, what the UI uses)
whether each materialized partition of the image assets is stale: a grade partition whose
recorded input data version of its model asset differs from the model asset's current
data version (= the active model version) is stale.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm_platform.admin.configured import configured_registry
from farm_platform.ml.registry import (
    CARD_FILE,
    PRECISION_RECORD,
    ModelCard,
    ModelRegistry,
    ModelRegistryError,
)

if TYPE_CHECKING:
    from dagster import AssetKey, DagsterInstance

STAGING_PREFIX = ".staging-"


class ModelValidationError(ModelRegistryError):
    """A model that loads but does not behave as its card says (e.g. wrong output shape)."""


class ModelExistsError(ModelRegistryError):
    """The registry already holds a model with this id and version."""


# --------------------------------------------------------------------------- validation


def check_model_runs(card: ModelCard, registry: ModelRegistry) -> str:
    """Load the model of a registered-layout card and run a dummy forward pass (an ONNX or
    TorchScript card: check its declared contract on a probe batch).

    Returns a short description of the output shapes; raises ModelRegistryError (or a
    subclass) saying what is wrong.
    """
    if card.contract is not None:
        from farm_platform.ml.probe import probe_exported

        return probe_exported(card, registry)
    import torch

    from farm_platform.ml import inference

    height, width = card.input_size
    if card.task == "disease_grader":
        num_grades = card.num_grades
        model = inference.load_grader(card, registry)
        batch = 2
        with torch.inference_mode():
            output = model(torch.rand(batch, 3, height, width))
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != (batch, num_grades):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise ModelValidationError(
                f"model {card.id} {card.version}: a dummy batch of {batch} crops of "
                f"{height}x{width} gave output shape {shape}, expected ({batch}, {num_grades}) "
                f"(one logit per grade {list(card.grades or ())})"
            )
        if not torch.isfinite(output).all():
            raise ModelValidationError(
                f"model {card.id} {card.version}: the dummy forward pass gave non-finite logits"
            )
        return f"output {tuple(output.shape)} for a batch of {batch} {height}x{width} crops"
    model = inference.load_detector(card, registry)
    stride = getattr(model, "stride", 4)
    with torch.inference_mode():
        output = model(torch.rand(1, 3, height, width))
    expected = [(1, c, height // stride, width // stride) for c in (1, 2, 2)]
    shapes = (
        [tuple(t.shape) for t in output]
        if isinstance(output, tuple) and all(isinstance(t, torch.Tensor) for t in output)
        else None
    )
    if shapes != expected:
        raise ModelValidationError(
            f"model {card.id} {card.version}: a dummy {height}x{width} image gave outputs "
            f"{shapes}, expected heat-map, size and offset maps {expected}"
        )
    with torch.inference_mode():
        model.decode(*output)
    return f"outputs {shapes} for one {height}x{width} image"


@dataclass(frozen=True)
class AddedModel:
    card: ModelCard
    path: Path | str
    activated: bool
    check: str


def add_model(
    source: Path | str, registry: ModelRegistry | None = None, activate: bool = False
) -> AddedModel:
    """Validate the model folder `source` (card.json + weights) and register it.

    Nothing in the models folder changes unless every check passes. In a bucket the version
    is validated in a local staging folder, then uploaded: weights first, the card last and
    only if no card is there (a version exists once its card does), and registry.json, with
    `activate`, after both (docs/models.md, "Models in a bucket")."""
    registry = registry or configured_registry()
    source = Path(source)
    if not source.is_dir():
        raise ModelRegistryError(f"{source} is not a folder with {CARD_FILE} and the weights")
    card = ModelCard.from_file(source / CARD_FILE)
    add = _add_to_bucket if registry.in_bucket else _add_to_folder
    destination, check = add(source, card, registry)
    if activate:
        registry.set_active(card.id, card.version)
    return AddedModel(registry.card(card.id, card.version), destination, activate, check)


def _validate_staged(source: Path, card: ModelCard, staging: Path) -> tuple[Path, str]:
    """Copy `source` to `staging/<id>/<version>/`, check card, sha256 and a forward pass;
    the staged folder and what the forward pass gave."""
    staged = staging / card.id / card.version
    staged.parent.mkdir(parents=True)
    shutil.copytree(source, staged, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    staged_registry = ModelRegistry(staging)
    staged_card = staged_registry.card(card.id, card.version)
    staged_registry.verify_weights(staged_card)
    return staged, check_model_runs(staged_card, staged_registry)


def _add_to_folder(source: Path, card: ModelCard, registry: ModelRegistry) -> tuple[Path, str]:
    assert isinstance(registry.models_dir, Path)
    destination = registry.models_dir / card.id / card.version
    if destination.exists():
        raise _exists(card, destination)
    registry.models_dir.mkdir(parents=True, exist_ok=True)
    # Staging inside the models folder: the final rename stays on one filesystem (atomic).
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=registry.models_dir))
    try:
        staged, check = _validate_staged(source, card, staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            staged.rename(destination)  # fails if someone registered it meanwhile
        except OSError as exc:
            raise ModelExistsError(f"cannot register {destination}: {exc}") from None
        destination.chmod(0o755)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination, check


def _add_to_bucket(source: Path, card: ModelCard, registry: ModelRegistry) -> tuple[str, str]:
    folder = f"{card.id}/{card.version}"
    destination = str(registry.store.location(folder))
    if registry.store.exists(f"{folder}/{CARD_FILE}"):
        raise _exists(card, destination)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
    try:
        staged, check = _validate_staged(source, card, staging)
        files = sorted(p for p in staged.rglob("*") if p.is_file() and p.name != CARD_FILE)
        for path in files:  # weights (and anything beside them) first
            registry.store.put_file(path, f"{folder}/{path.relative_to(staged).as_posix()}")
        try:
            registry.store.put_file(staged / CARD_FILE, f"{folder}/{CARD_FILE}", create_only=True)
        except FileExistsError:
            raise ModelExistsError(
                f"cannot register {destination}: its card appeared meanwhile"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination, check


def _exists(card: ModelCard, destination: Path | str) -> ModelExistsError:
    return ModelExistsError(
        f"{card.id} {card.version} is already registered at {destination}: "
        "give the new model another version"
    )


@dataclass(frozen=True)
class PushedModels:
    added: list[AddedModel]
    already_there: list[str]  # "<id> <version>" the destination held, same sha256
    active: dict[str, str]


def push_models(source: Path | str, registry: ModelRegistry | None = None) -> PushedModels:
    """Make the models folder of `registry` (typically a bucket) hold every version of the
    local models folder `source` and its active versions: each missing version is added as
    `add_model` adds it (validated, weights before card), the bfloat16 record and the
    registered evaluation datasets (files, then their registry entry) are copied, and
    then the active versions are set in one registry write. A version the destination holds
    with other weights is refused (versions are immutable). Running it again changes
    nothing."""
    registry = registry or configured_registry()
    local = ModelRegistry(Path(source))
    active = local.active_versions()
    present = set(registry.model_versions())
    added, already = [], []
    for model_id, version in local.model_versions():
        card = local.card(model_id, version)
        if (model_id, version) in present:
            theirs = registry.card(model_id, version)
            if theirs.sha256 != card.sha256:
                raise ModelExistsError(
                    f"{model_id} {version} is already registered at {registry.models_dir} with "
                    f"other weights (sha256 {theirs.sha256}, here {card.sha256}): versions "
                    "are immutable; give the new model another version"
                )
            already.append(f"{model_id} {version}")
            continue
        assert card.directory is not None  # a local folder's card knows its folder
        added.append(add_model(card.directory, registry))
    precision = local.read_json(PRECISION_RECORD)
    if precision is not None and registry.read_json(PRECISION_RECORD) != precision:
        registry.store.write_json(PRECISION_RECORD, precision)
    from farm_platform.admin.evaluation import push_datasets  # the gate's datasets go along

    push_datasets(local, registry)
    registry.set_active_versions(active)
    return PushedModels(added, already, active)


# --------------------------------------------------------------------------- list / activate


@dataclass(frozen=True)
class ModelVersionRow:
    model_id: str
    version: str
    active: bool
    sha256: str
    created_at: str
    summary: str
    # Why the version cannot be used as it is (bad card, weights missing or not matching
    # the card's sha256); "" when it is sound.
    problem: str = ""


def _metric_summary(card: ModelCard) -> str:
    heldout = card.metrics.get("heldout") if isinstance(card.metrics, Mapping) else None
    if isinstance(heldout, Mapping):
        detected = heldout.get("detected_boxes")
        # Labelled as what they are: the card's own figures, taken when the version was
        # trained (models/EVALUATION.md's table re-measures the graders on the active
        # detector's crops).
        if isinstance(detected, Mapping) and "exact" in detected:
            return f"card: held-out exact grade {detected['exact']:.3f}"
        if "f1" in heldout:
            return f"card: held-out F1 {heldout['f1']:.3f}"
    return ""


def _format_label(card: ModelCard) -> str:
    return "" if card.contract is None else f"[{card.format}]"


def list_models(registry: ModelRegistry | None = None) -> list[ModelVersionRow]:
    registry = registry or configured_registry()
    active = registry.active_versions()
    registered = registry.model_versions()
    model_ids = sorted(set(active) | {model_id for model_id, _ in registered})
    rows = []
    for model_id in model_ids:
        for version in sorted(v for m, v in registered if m == model_id):
            is_active = active.get(model_id) == version
            # A corrupted version is listed with the reason, never skipped and never fatal:
            # a list that hides or crashes on a broken active model is how it goes unseen.
            try:
                card = registry.card(model_id, version)
            except ModelRegistryError as exc:
                rows.append(ModelVersionRow(model_id, version, is_active, "", "", "", str(exc)))
                continue
            try:
                registry.verify_weights(card)
                problem = ""
            except ModelRegistryError as exc:
                problem = str(exc)
            rows.append(
                ModelVersionRow(
                    model_id,
                    version,
                    is_active,
                    card.sha256,
                    card.created_at,
                    " ".join(filter(None, (_format_label(card), _metric_summary(card)))),
                    problem,
                )
            )
    return rows


def activate_model(model_id: str, version: str, registry: ModelRegistry | None = None) -> str:
    """Make `version` live; returns the previously active version (or '')."""
    registry = registry or configured_registry()
    previous = registry.active_versions().get(model_id, "")
    registry.set_active(model_id, version)
    return previous


# --------------------------------------------------------------------------- staleness


def _loading_context(instance: DagsterInstance) -> Any:
    from dagster._core.loader import LoadingContext

    class _InstanceLoadingContext(LoadingContext):
        def __init__(self) -> None:
            self._loaders: dict[type, Any] = {}

        @property
        def instance(self) -> DagsterInstance:
            return instance

        @property
        def loaders(self) -> dict[type, Any]:
            return self._loaders

    return _InstanceLoadingContext()


@dataclass(frozen=True)
class StalePartition:
    asset_key: AssetKey
    partition_key: str
    causes: tuple[str, ...]


def stale_partitions(
    instance: DagsterInstance,
    asset_keys: Iterable[AssetKey] | None = None,
    asset_graph: Any = None,
) -> dict[AssetKey, list[StalePartition]]:
    """Per partitioned asset of the image location: its materialized partitions that are stale.

    A partition is stale when Dagster says so (a direct cause: an input's data version
    changed since it was materialized) or when the same partition of an upstream asset is
    stale (a new detector makes `leaf_crops` stale and with it every grade; the UI lists
    the direct causes on `leaf_crops` and "stale" downstream is this transitive closure).
    """
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus

    from farm_platform.admin.configured import configured_day_partitions
    from farm_platform.images.graph import image_asset_graph

    graph = asset_graph or image_asset_graph(configured_day_partitions())
    resolver = CachingStaleStatusResolver(instance, graph, _loading_context(instance))
    partitioned = [key for key in graph.toposorted_asset_keys if graph.get(key).is_partitioned]
    wanted = set(asset_keys) if asset_keys is not None else set(partitioned)
    unknown = wanted - set(partitioned)
    if unknown:
        raise ValueError(
            "not a partitioned asset of the image code location: "
            + ", ".join(sorted(k.to_user_string() for k in unknown))
        )
    stale: dict[AssetKey, dict[str, StalePartition]] = {}
    for key in partitioned:  # topological: parents' results are known first
        parents = [p for p in graph.get(key).parent_keys if p in stale]
        found: dict[str, StalePartition] = {}
        for partition in sorted(instance.get_materialized_partitions(key)):
            causes = [
                f"{cause.key.asset_key.to_user_string()}"
                + (f"[{cause.key.partition_key}]" if cause.key.partition_key else "")
                + f" {cause.reason}"
                for cause in resolver.get_stale_root_causes(key, partition)
            ]
            if resolver.get_status(key, partition) != StaleStatus.STALE:
                causes = []
            causes += [
                f"{parent.to_user_string()}[{partition}] is stale"
                for parent in parents
                if partition in stale[parent]
            ]
            if causes:
                found[partition] = StalePartition(key, partition, tuple(causes))
        stale[key] = found
    return {
        key: list(found.values()) for key, found in stale.items() if key in wanted and found
    } | {key: [] for key in wanted if not stale.get(key)}


def stale_summary(stale: Mapping[AssetKey, Sequence[StalePartition]]) -> dict[str, int]:
    return {key.to_user_string(): len(parts) for key, parts in sorted(stale.items())}
