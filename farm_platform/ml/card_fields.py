"""A model card's fields, validated one by one (`ModelCard.from_json` in ml/registry.py
builds the card from what this returns). Every error names the field. No torch here:
Dagster reads cards with the code location.

Three kinds of card: a `state_dict` of one of the project's architectures; an exported
model (`onnx`, `torchscript`) beside its card; a model on an external Open Inference
Protocol server (`external_oip`), which has no file: its `sha256` is computed from what it
declares (server, tensors, contract), so a card that points elsewhere is another identity.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from farm_platform.ml.contract import EXTERNAL_OIP, Fail, parse_contract

TASKS = ("leaf_detector", "disease_grader")
DETECTOR_MODEL_ID = "leaf_detector"
DISEASE_TYPES = tuple(f"disease_{k}" for k in range(5))
# Ids and versions become path segments of crop URIs and table keys.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_ARCHITECTURE_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# What an external card's identity is computed from.
_EXTERNAL_IDENTITY = ("server", "input_size", "input", "output")


def grader_model_id(disease_type: str) -> str:
    return f"{disease_type}_grader"


def _required(data: Mapping[str, Any], name: str, kind: type, fail: Fail) -> Any:
    if name not in data:
        raise fail(name, "is missing")
    value = data[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise fail(name, f"must be {kind.__name__}, got {value!r}")
    return value


def _matching(
    data: Mapping[str, Any], name: str, pattern: re.Pattern[str], why: str, fail: Fail
) -> str:
    value: str = _required(data, name, str, fail)
    if not pattern.match(value):
        raise fail(name, f"= {value!r} {why}")
    return value


def _identity(data: Mapping[str, Any], fail: Fail) -> dict[str, Any]:
    """id, version, task, disease_type and grades, checked against each other."""
    model_id = _required(data, "id", str, fail)
    version = _required(data, "version", str, fail)
    for name, value in (("id", model_id), ("version", version)):
        if not NAME_PATTERN.match(value):
            raise fail(name, f"= {value!r} must be letters, digits, '_', '.' or '-'")
    task = _required(data, "task", str, fail)
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
    return {
        "id": model_id,
        "version": version,
        "task": task,
        "disease_type": disease_type,
        "grades": grades,
    }


def external_sha256(data: Mapping[str, Any]) -> str:
    """An external card's identity: the sha256 of what it declares, canonically written."""
    declared = {name: data.get(name) for name in _EXTERNAL_IDENTITY}
    canonical = json.dumps(declared, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _weights(data: Mapping[str, Any], contract: Any, fail: Fail) -> dict[str, Any]:
    """architecture, its kwargs, weights and sha256, as the card's format needs them."""
    if contract is None:
        architecture = _matching(
            data,
            "architecture",
            _ARCHITECTURE_PATTERN,
            "must look like 'package.module:Class'",
            fail,
        )
        kwargs = dict(_required(data, "architecture_kwargs", dict, fail))
    else:  # the exported file, or the server's model, is the architecture
        architecture = str(data.get("architecture", ""))
        kwargs = dict(data.get("architecture_kwargs") or {})
    if contract is not None and contract.format == EXTERNAL_OIP:
        sha = external_sha256(data)
        for name in ("weights", "sha256"):
            # A card written back (ModelCard.to_json) carries its computed sha256.
            if data.get(name) and not (name == "sha256" and data[name] == sha):
                raise fail(
                    name,
                    "must be left out: an external_oip model has no file here (its sha256 "
                    "is computed from the card's server, input_size, input and output)",
                )
        return {
            "architecture": architecture,
            "architecture_kwargs": kwargs,
            "weights": "",
            "sha256": sha,
        }
    weights = _required(data, "weights", str, fail)
    if not weights or "/" in weights or "\\" in weights or weights in (".", ".."):
        raise fail("weights", f"= {weights!r} must be a file name beside the card")
    sha = _matching(data, "sha256", _SHA256_PATTERN, "must be 64 lowercase hex digits", fail)
    return {
        "architecture": architecture,
        "architecture_kwargs": kwargs,
        "weights": weights,
        "sha256": sha,
    }


def card_fields(data: Mapping[str, Any], fail: Fail) -> dict[str, Any]:
    """The card's validated fields, by ModelCard's field names (`contract` included)."""
    identity = _identity(data, fail)
    size = _required(data, "input_size", list, fail)
    if len(size) != 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise fail("input_size", f"= {size!r} must be [height, width] positive integers")
    contract = parse_contract(data, identity["task"], identity["grades"], fail)
    weights = _weights(data, contract, fail)
    training = _required(data, "training", dict, fail)
    metrics = _required(data, "metrics", dict, fail)
    created_at = _required(data, "created_at", str, fail)
    try:
        dt.datetime.fromisoformat(created_at)
    except ValueError:
        raise fail("created_at", f"= {created_at!r} must be an ISO 8601 timestamp") from None
    return {
        **identity,
        **weights,
        "input_size": (size[0], size[1]),
        "training": dict(training),
        "metrics": dict(metrics),
        "created_at": created_at,
        "contract": contract,
    }
