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
from dataclasses import dataclass

from farm_platform import config, config_values
from farm_platform.admin.evaluation import (
    GateRefused,
    registered_datasets,
    registered_record,
)
from farm_platform.ml.registry import ModelRegistry


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
    tolerance = (
        config_values.gate_tolerance(config.value(config.FARM_GATE_TOLERANCE))
        if tolerance is None
        else tolerance
    )
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
