"""The gate before a version goes live (issue 42, part 4), and what `models list` and the
model assets show of evaluations and forced activations.

A version is refused when, on any registered evaluation dataset of its task, one of the
gated figures (ml/evaluation.py: DETECTOR_GATED, GRADER_GATED; all higher-is-better shares)
is lower than the active version's by more than `FARM_GATE_TOLERANCE`. Both versions are
evaluated on the dataset if their stored record is missing or stale.
"""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from farm_platform import config
from farm_platform.admin.evaluation import (
    GateRefused,
    read_evaluations,
    registered_datasets,
    registered_record,
)
from farm_platform.ml.registry import ACTIVATIONS_KEY, REGISTRY_FILE, ModelRegistry


@dataclass(frozen=True)
class Regression:
    dataset: str
    metric: str
    active: float
    candidate: float

    def describe(self, active_version: str, version: str) -> str:
        return (
            f"dataset {self.dataset!r}: {self.metric} {self.candidate:.4f} ({version}) < "
            f"{self.active:.4f} ({active_version})"
        )


@dataclass(frozen=True)
class Activation:
    previous: str
    regressions: list[Regression]
    forced: bool


def gate_regressions(
    registry: ModelRegistry, model_id: str, version: str, tolerance: float
) -> list[Regression]:
    """Where `version` is worse than the active version by more than `tolerance`."""
    from farm_platform.ml.evaluation import DETECTOR_GATED, GRADER_GATED

    active_version = registry.active_versions().get(model_id)
    if active_version is None or active_version == version:
        return []
    candidate = registry.card(model_id, version)
    active = registry.card(model_id, active_version)
    gated = DETECTOR_GATED if candidate.task == "leaf_detector" else GRADER_GATED
    found = []
    for entry in registered_datasets(registry):
        if entry.task != candidate.task:
            continue
        new = registered_record(registry, candidate, entry)["overall"]
        old = registered_record(registry, active, entry)["overall"]
        for metric in gated:
            a, c = old.get(metric), new.get(metric)
            if a is not None and c is not None and c < a - tolerance:
                found.append(Regression(entry.name, metric, a, c))
    return found


def activate(
    registry: ModelRegistry,
    model_id: str,
    version: str,
    force: bool = False,
    reason: str | None = None,
    tolerance: float | None = None,
) -> Activation:
    """Make `version` live if the gate lets it (or `force` with a `reason`); the activation
    and, forced, its reason and what it overrode go into registry.json in the same write."""
    if force and not (reason or "").strip():
        raise GateRefused('--force needs --reason "why this version goes live all the same"')
    tolerance = config.gate_tolerance() if tolerance is None else tolerance
    previous = registry.active_versions().get(model_id, "")
    card = registry.card(model_id, version)  # an unknown version fails here, not later
    if previous == version:
        registry.verify_weights(card)
        return Activation(previous, [], False)  # already live: nothing to gate or record
    regressions = gate_regressions(registry, model_id, version, tolerance)
    if regressions and not force:
        lines = "; ".join(r.describe(previous, version) for r in regressions)
        raise GateRefused(
            f"refused: {model_id} {version} is worse than the active {previous} by more than "
            f"{config.FARM_GATE_TOLERANCE}={tolerance} on {lines}. Activate it all the same "
            f'with --force --reason "..."'
        )
    record = {
        "model_id": model_id,
        "version": version,
        "previous": previous,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "by": _user(),
        "forced": bool(force and regressions),
        "reason": reason or "",
        "tolerance": tolerance,
        "regressions": [r.__dict__ for r in regressions],
    }
    registry.set_active_versions({model_id: version}, record=record)
    return Activation(previous, regressions, bool(force and regressions))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


# --------------------------------------------------------------------------- shown


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
