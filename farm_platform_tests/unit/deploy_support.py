"""What the deployment tests share (test_deploy_*.py): the deploy/ files, the chart's release
names, a GPU run's k8s config, and readers of the YAML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VALUES = DEPLOY / "helm" / "values.yaml"
INFERENCE_SERVICE = DEPLOY / "kserve" / "inference-service.yaml"
K8S_VERSION = "1.30"
# The chart's names for release `dagster` in namespace `farm` (deploy/README.md's helm command).
RELEASE = "dagster"
NAMESPACE = "farm"
IMAGE = "REGISTRY/farm-platform:TAG"

GPU_RUN_CONFIG = {
    "container_config": {
        "resources": {
            "limits": {"nvidia.com/gpu": "1", "memory": "16Gi"},
            "requests": {"cpu": "4", "memory": "16Gi"},
        }
    },
    "pod_spec_config": {
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
