"""A model version's stored evaluations and activation record, as `models list`, the model
assets in the UI and the report show them. Read-only, so that the code locations can show
them without the operator commands that write them (farm_platform.admin.evaluation and
farm_platform.admin.activation_gate)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from farm_platform.ml.registry import ACTIVATIONS_KEY, REGISTRY_FILE, ModelRegistry

EVALUATIONS_FILE = "evaluations.json"


def read_evaluations(registry: ModelRegistry, model_id: str, version: str) -> dict[str, Any]:
    """{dataset: record} of a version (empty when it has none)."""
    stored = registry.read_json(f"{model_id}/{version}/{EVALUATIONS_FILE}") or {}
    return dict(stored.get("evaluations", {}))


def last_activation(registry: ModelRegistry, model_id: str, version: str) -> dict[str, Any]:
    """The latest gated activation of this version ({} when there is none)."""
    log = (registry.read_json(REGISTRY_FILE) or {}).get(ACTIVATIONS_KEY, [])
    mine = [a for a in log if a.get("model_id") == model_id and a.get("version") == version]
    return mine[-1] if mine else {}


def summarize(overall: Mapping[str, Any]) -> str:
    """One line of a record's overall figures."""
    if "crops" in overall:
        if not overall["crops"]:
            return "no crops of this disease"
        return (
            f"exact {overall['exact']:.3f}  within-one {overall['within_one']:.3f}  "
            f"({overall['crops']} crops)"
        )

    def shown(key: str) -> str:
        value = overall.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    return (
        f"AP {shown('ap')}  AP50 {shown('ap50')}  F1@0.5 {shown('f1')}  count error "
        f"{shown('count_error')} (|{shown('abs_count_error')}|) ({overall['photos']} photos)"
    )


def version_notes(registry: ModelRegistry, model_id: str, version: str) -> list[str]:
    """What `models list` prints under a version: its evaluations and a forced activation."""
    notes = [
        f"eval {name}: {summarize(record.get('overall', {}))}"
        for name, record in sorted(read_evaluations(registry, model_id, version).items())
    ]
    activation = last_activation(registry, model_id, version)
    if activation.get("forced"):
        notes.append(
            f"FORCED active {activation.get('at')} by {activation.get('by') or '?'} over "
            f"{len(activation.get('regressions', []))} regression(s): "
            f"{activation.get('reason')!r}"
        )
    return notes


def asset_metadata(registry: ModelRegistry, model_id: str, version: str) -> dict[str, Any]:
    """The model asset's metadata in the UI: overall figures per dataset, the activation."""
    evaluations = {
        name: record.get("overall", {})
        for name, record in read_evaluations(registry, model_id, version).items()
    }
    return {
        "evaluations": evaluations,
        "activation": last_activation(registry, model_id, version),
    }
