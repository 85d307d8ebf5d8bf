"""What the tests of models in a bucket share (test_models_bucket.py, and
test_model_evaluation_gate.py's new bucket): a new bucket, a retrained version, the bucket's
objects, and the model assets and grades of a run.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_model_versions import new_version

from farm_platform.config import REPO_MODELS_DIR
from farm_platform.ml import model_store
from farm_platform_dev.emulators import create_bucket
from farm_platform_dev.stack import StackInfo


def new_bucket(stack: StackInfo) -> str:
    """A new, empty bucket of models on the stack's GCS emulator; its name."""
    bucket = f"models-{uuid.uuid4().hex[:10]}"
    create_bucket(stack.project, stack.storage_host, bucket)
    return bucket


def retrained_version(tmp_path: Path, version: str = "v2") -> Path:
    """A new version of the disease_3 grader with weights of its own (v1's, nudged), so that
    its sha256 is not one the cache already holds."""
    torch = pytest.importorskip("torch")
    from farm_platform.ml.registry import sha256_file

    folder = new_version(REPO_MODELS_DIR, tmp_path, version=version)
    state = torch.load(folder / "weights.pt", weights_only=True)
    name = next(key for key, value in state.items() if value.is_floating_point())
    state[name] = state[name] + 1e-3
    torch.save(state, folder / "weights.pt")
    card = json.loads((folder / "card.json").read_text())
    card["sha256"] = sha256_file(folder / "weights.pt")
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    return folder


def objects(url: str) -> dict[str, str]:
    """Every object under `url`: its path below it and its generation."""
    store = model_store.BucketModelStore(url)
    return {
        key.removeprefix(store.path + "/"): str(store.fs.info(key)["generation"])
        for key in store.fs.find(store.path)
    }


def record_model_assets(instance: Any, selection: Any, resources: dict[str, Any]) -> None:
    """The run the registry sensor asks for: the model assets it names, materialized."""
    from dagster import materialize

    from farm_platform.images.registered_models import registered_models

    result = materialize(
        [registered_models], selection=selection, instance=instance, resources=resources
    )
    assert result.success


def graded_versions(resources: dict[str, Any], disease: str) -> list[tuple[str, str]]:
    frame = resources["warehouse"].query(
        "SELECT DISTINCT dagster_run_id, disease_model_version FROM disease_grades"
        " WHERE disease_type = %s ORDER BY disease_model_version",
        [disease],
    )
    return list(zip(frame["dagster_run_id"], frame["disease_model_version"], strict=True))
