"""The Kubernetes deployment, offline (deploy/README.md): KServe and the plain manifests.

KServe's models read the InferenceService, and every plain manifest is validated strictly
against Kubernetes 1.30's schema. No cluster, no helm.
"""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
from deploy_support import (
    DEPLOY,
    INFERENCE_SERVICE,
    K8S_VERSION,
    NAMESPACE,
    RELEASE,
    REPO,
    load_all,
    values,
)

from farm_platform import config
from farm_platform.config_values import webserver_allowed_origins

# ------------------------------------------------------------------ KServe and plain manifests


def kserve_model(data: Any, klass: str) -> Any:
    """`data` as KServe's (and, nested, Kubernetes') model classes, by their OpenAPI types:
    a key a class does not have is left out, so a misspelled field changes the result."""
    import kserve.models

    if data is None:
        return None
    if klass.startswith("list["):
        return [kserve_model(item, klass[5:-1]) for item in data]
    # kubernetes writes dict(str, str), kserve dict[str, str].
    if klass.startswith(("dict(", "dict[")):
        inner = re.match(r"dict[(\[][^,]*, (.*)[)\]]$", klass).group(1)
        return {key: kserve_model(value, inner) for key, value in data.items()}
    if klass in {"str", "int", "float", "bool", "object", "datetime", "date"}:
        return data
    model = getattr(kserve.models, klass, None) or getattr(kubernetes.client.models, klass)
    return model(
        **{
            attribute: kserve_model(data[key], model.openapi_types[attribute])
            for attribute, key in model.attribute_map.items()
            if key in data
        }
    )


def as_inference_service(doc: dict[str, Any]) -> dict[str, Any]:
    import kserve

    service = kserve_model(doc, "V1beta1InferenceService")
    assert isinstance(service, kserve.V1beta1InferenceService)
    return kubernetes.client.ApiClient().sanitize_for_serialization(service)


def test_the_inference_service_is_kserves_own_and_serves_the_bucket_on_gpus():
    (doc,) = load_all(INFERENCE_SERVICE)
    assert as_inference_service(doc) == doc
    predictor = doc["spec"]["predictor"]
    assert doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert 1 <= predictor["minReplicas"] < predictor["maxReplicas"]
    assert predictor["scaleMetric"] == "cpu" and 0 < predictor["scaleTarget"] <= 100
    (container,) = predictor["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    # The server reads the bucket itself and follows its registry: no storage-initializer
    # copy, which would be a snapshot taken at the pod's start.
    assert re.fullmatch(r"gs://[^/]+/models", env[config.FARM_MODELS_DIR])
    assert "STORAGE_URI" not in env and "storageUri" not in json.dumps(doc)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["command"] == ["farm-platform", "models", "serve"]


def test_every_pod_reads_the_models_from_the_bucket_and_the_image_bakes_none_in():
    (service,) = load_all(INFERENCE_SERVICE)
    (container,) = service["spec"]["predictor"]["containers"]
    served = {item["name"]: item.get("value") for item in container["env"]}
    (configmap,) = load_all(DEPLOY / "k8s" / "configmap-env.yaml")
    # Sensors, runs and model servers: one registry, so one active version everywhere.
    assert configmap["data"][config.FARM_MODELS_DIR] == served[config.FARM_MODELS_DIR]
    assert config.parse_models_dir(served[config.FARM_MODELS_DIR]) == "gs://BUCKET/models"
    copies = [
        line.split()[1:-1]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    ]
    from_models = [source for sources in copies for source in sources if "models" in source]
    assert from_models and all(source.endswith(".py") for source in from_models), copies


def test_a_misspelled_inference_service_field_is_caught():
    (doc,) = load_all(INFERENCE_SERVICE)
    doc["spec"]["predictor"]["minReplica"] = doc["spec"]["predictor"].pop("minReplicas")
    assert as_inference_service(doc) != doc


def test_the_model_servers_ports_are_the_clis_flags():
    from farm_platform.cli import build_parser

    (doc,) = load_all(INFERENCE_SERVICE)
    (container,) = doc["spec"]["predictor"]["containers"]
    parsed = build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert parsed.host == "0.0.0.0"  # the pod's address; locally the default is loopback
    assert parsed.grpc_port == container["ports"][0]["containerPort"]
    assert parsed.port == container["readinessProbe"]["httpGet"]["port"]


# What kubernetes-validate cannot check (CRDs): the fields their controllers require.
CRD_REQUIRED = {
    "BackendConfig": lambda spec: (
        spec["iap"]["enabled"] is True and bool(spec["iap"]["oauthclientCredentials"]["secretName"])
    ),
    "ManagedCertificate": lambda spec: 1 <= len(spec["domains"]) <= 100,
}


def plain_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.relative_to(DEPLOY)}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in load_all(path)
    ]


def test_every_manifest_is_valid_kubernetes():
    kinds = set()
    for name, doc in plain_manifests():
        kinds.add(doc["kind"])
        assert doc["metadata"]["namespace"] == NAMESPACE, name
        if doc["kind"] in CRD_REQUIRED:
            assert CRD_REQUIRED[doc["kind"]](doc["spec"]), name
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {"ServiceAccount", "ConfigMap", "NetworkPolicy", "Ingress"} <= kinds
    assert {"BackendConfig", "ManagedCertificate"} <= kinds


def test_the_charts_pods_reach_postgresql_through_the_pooler_in_session_mode():
    """The chart's postgresqlHost/port is the pooler's Service, and the pooler's settings are
    deploy/vm/pgbouncer.ini's: session mode, its reset query, its retry."""
    import configparser

    docs = {doc["kind"]: doc for doc in load_all(DEPLOY / "k8s" / "pgbouncer.yaml")}
    service, postgresql = docs["Service"], values()["postgresql"]
    assert postgresql["postgresqlHost"].split(".")[:2] == [service["metadata"]["name"], NAMESPACE]
    assert postgresql["service"]["port"] == service["spec"]["ports"][0]["port"]
    cluster, vm = configparser.ConfigParser(), configparser.ConfigParser(interpolation=None)
    cluster.read_string(docs["ConfigMap"]["data"]["pgbouncer.ini"])
    vm.read(DEPLOY / "vm" / "pgbouncer.ini")
    for setting in ("pool_mode", "server_reset_query", "server_login_retry"):
        assert cluster["pgbouncer"][setting] == vm["pgbouncer"][setting], setting
    assert cluster["pgbouncer"]["pool_mode"] == "session"
    # The pods reach the pooler across the cluster's network: SCRAM, not the VMs' md5.
    assert cluster["pgbouncer"]["auth_type"] == "scram-sha-256"
    assert str(cluster["pgbouncer"]["listen_port"]) == str(service["spec"]["ports"][0]["port"])


def test_strict_validation_catches_a_misspelled_network_policy_field():
    (doc, *_) = load_all(DEPLOY / "k8s/network-policies.yaml")
    doc["spec"]["podSelectr"] = doc["spec"].pop("podSelector")
    with pytest.raises(kubernetes_validate.ValidationError, match="podSelectr"):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_ingress_sends_each_host_to_a_webserver_behind_iap():
    docs = {doc["kind"]: doc for _, doc in plain_manifests()}
    ingress = docs["Ingress"]
    backends = {
        rule["host"]: rule["http"]["paths"][0]["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
    }
    assert sorted(backends.values()) == [
        f"{RELEASE}-dagster-webserver",
        f"{RELEASE}-dagster-webserver-read-only",
    ]
    annotations = values()["dagsterWebserver"]["service"]["annotations"]
    backend_config = json.loads(annotations["cloud.google.com/backend-config"])["default"]
    assert backend_config == docs["BackendConfig"]["metadata"]["name"]
    assert ingress["metadata"]["annotations"]["kubernetes.io/ingress.allow-http"] == "false"


def test_both_webservers_are_guarded_and_take_changes_only_from_the_iap_hosts(monkeypatch):
    """Issue 40.4 on the cluster: the chart's only command for both webservers is
    `dagster-webserver ...`; in the project's image that name is the guarded launcher
    (test_webserver_guard runs the same script), and the origins it takes changes from
    are the hosts IAP serves the UI at."""
    import os

    lines = (REPO / "Dockerfile").read_text().splitlines()
    install = next(i for i, line in enumerate(lines) if "pip install -e" in line)
    script = DEPLOY / "docker" / "dagster-webserver"
    # After pip's own dagster-webserver, which it replaces.
    assert (
        lines.index(f"COPY {script.relative_to(REPO)} /usr/local/bin/dagster-webserver") > install
    )
    assert (
        script.read_text().splitlines()[-1] == 'exec python -m farm_platform.webserver_guard "$@"'
    )
    assert os.access(script, os.X_OK)
    webserver = values()["dagsterWebserver"]
    assert webserver["enableReadOnly"] is True
    env = {item["name"]: item["value"] for item in webserver["env"]}
    allowed = webserver_allowed_origins(env[config.FARM_WEBSERVER_ALLOWED_ORIGINS])
    ingress = next(doc for _, doc in plain_manifests() if doc["kind"] == "Ingress")
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert allowed == {f"https://{host}" for host in hosts}


def test_service_accounts_use_workload_identity_and_no_key_file():
    accounts = [doc for _, doc in plain_manifests() if doc["kind"] == "ServiceAccount"]
    names = {doc["metadata"]["name"] for doc in accounts}
    assert values()["global"]["serviceAccountName"] in names
    (service,) = load_all(INFERENCE_SERVICE)
    assert service["spec"]["predictor"]["serviceAccountName"] in names
    for doc in accounts:
        assert doc["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
            ".iam.gserviceaccount.com"
        )
    every_file = "\n".join(path.read_text() for path in DEPLOY.rglob("*.yaml"))
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in every_file
    assert "private_key" not in every_file


def test_the_celery_launcher_fails_a_started_run_whose_worker_does_not_run_it(monkeypatch):
    """FarmCeleryRunLauncher: a task Celery says STARTED counts as running only while its
    worker lists it among its active tasks; missing past the grace (or the worker silent),
    the run's worker is reported dead; a broker it cannot reach gives no verdict."""
    from types import SimpleNamespace

    from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
    from dagster_celery.launcher import CeleryRunLauncher

    from farm_platform.launcher.celery_launcher import FarmCeleryRunLauncher

    run = SimpleNamespace(run_id="r1", tags={"dagster-celery/task_id": "t1"})
    active: dict[str, Any] = {"images@vm": [{"id": "t1"}]}

    class Inspect:
        def active(self):
            if active is None:
                raise ConnectionError("broker down")
            return active

    def launcher(grace: float) -> FarmCeleryRunLauncher:
        made = FarmCeleryRunLauncher(
            lost_worker_grace_seconds=grace, default_queue="images", broker="redis://x:1/0"
        )
        made.celery = SimpleNamespace(
            AsyncResult=lambda task_id: SimpleNamespace(info={"hostname": "images@vm"}),
            control=SimpleNamespace(inspect=lambda destination, timeout: Inspect()),
        )
        return made

    running = CheckRunHealthResult(WorkerStatus.RUNNING)  # the task's state: STARTED
    monkeypatch.setattr(CeleryRunLauncher, "check_run_worker_health", lambda self, run: running)
    assert launcher(0).check_run_worker_health(run).status == WorkerStatus.RUNNING
    active = {"images@vm": [{"id": "another task"}]}  # a restarted worker of that name
    assert launcher(3600).check_run_worker_health(run).status == WorkerStatus.RUNNING
    dead = launcher(0).check_run_worker_health(run)
    assert dead.status == WorkerStatus.FAILED and "the worker died" in dead.msg
    active = {}  # no answer
    assert launcher(0).check_run_worker_health(run).status == WorkerStatus.FAILED
    active = None  # the broker is down
    assert launcher(0).check_run_worker_health(run).status == WorkerStatus.RUNNING
