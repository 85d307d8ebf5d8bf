"""The Kubernetes deployment, offline (deploy/README.md): the run pods.

dagster-k8s builds the Job of an image run from its tags (FARM_RUN_K8S_CONFIG) and the
launcher's settings in deploy/helm/values.yaml; the network policies decide which pods reach
the webservers and the model server. No cluster, no helm.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
from deploy_support import (
    DEPLOY,
    GPU_RUN_CONFIG,
    IMAGE,
    INFERENCE_SERVICE,
    K8S_VERSION,
    NAMESPACE,
    RELEASE,
    load_all,
    snake,
    values,
)

from farm_platform import config

# ------------------------------------------------------------------ FARM_RUN_K8S_CONFIG


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("{not json", "is not valid JSON"),
        ('["container_config"]', "must be a JSON object"),
        ('{"container_confg": {}}', "unknown key(s) container_confg"),
        ('{"container_config": {"resources": {"limits": {"nvidia.com/gpu": "one"}}}}', "GPUs"),
    ],
)
def test_a_malformed_run_k8s_config_names_the_variable(raw, says):
    from farm_platform.images.run_tags import image_run_k8s_tags

    with pytest.raises(config.ConfigError) as error:
        image_run_k8s_tags(raw)
    message = str(error.value)
    assert config.FARM_RUN_K8S_CONFIG in message and says in message
    assert "\n" not in message


def test_the_accepted_keys_are_dagster_k8s_own():
    from dagster_k8s.job import USER_DEFINED_K8S_JOB_CONFIG_SCHEMA

    from farm_platform.images.run_tags import RUN_K8S_CONFIG_KEYS

    assert set(RUN_K8S_CONFIG_KEYS) == set(USER_DEFINED_K8S_JOB_CONFIG_SCHEMA.fields)


def test_sensor_runs_carry_the_k8s_tag_and_gpu_runs_the_device_tag():
    from farm_platform.images.sensors import claim_run_request
    from farm_platform.ingest.arrivals import Claim
    from farm_platform.resources.ingest_policy import IngestPolicyResource

    claim = Claim("photos:2026-06-01:1", dt.date(2026, 6, 1), ("P000", "P001"))
    plain = claim_run_request(claim, IngestPolicyResource()).tags
    assert "dagster-k8s/config" not in plain and "farm/device" not in plain

    gpu = IngestPolicyResource(run_k8s_config=json.dumps(GPU_RUN_CONFIG))
    tags = claim_run_request(claim, gpu).tags
    assert json.loads(tags["dagster-k8s/config"]) == GPU_RUN_CONFIG
    assert tags["farm/device"] == "gpu"
    assert tags["dagster/max_retries"] == "0"

    cpu_only = copy.deepcopy(GPU_RUN_CONFIG)
    del cpu_only["container_config"]["resources"]["limits"]["nvidia.com/gpu"]
    tags = claim_run_request(claim, IngestPolicyResource(run_k8s_config=json.dumps(cpu_only))).tags
    assert "dagster-k8s/config" in tags and "farm/device" not in tags


def test_backfill_runs_carry_the_k8s_tags(monkeypatch):
    from dagster import AssetKey, DagsterInstance

    from farm_platform.admin import backfill

    monkeypatch.setenv(config.FARM_RUN_K8S_CONFIG, json.dumps(GPU_RUN_CONFIG))
    # Which days have photos is the backfill's own concern; here only its tags matter.
    monkeypatch.setattr(backfill, "target_partitions", lambda *_: (["2026-06-01"], 0))
    with DagsterInstance.ephemeral() as instance:
        launched = backfill.launch_backfill(
            instance, [AssetKey("disease_3_grades")], dt.date(2026, 6, 1), dt.date(2026, 6, 1)
        )
        tags = instance.get_backfill(launched.backfill_id).tags
    assert json.loads(tags["dagster-k8s/config"]) == GPU_RUN_CONFIG
    assert tags["farm/device"] == "gpu"


# ------------------------------------------------------------------ the run pod's Job


def rendered_run_launcher_config() -> dict[str, Any]:
    """`run_launcher.config` of the dagster.yaml the chart renders from our values (the
    chart's templates/helpers/instance/_run-launcher.tpl, K8sRunLauncher branch)."""
    ours = values()
    launcher = ours["runLauncher"]["config"]["k8sRunLauncher"]
    rendered = {
        "load_incluster_config": launcher["loadInclusterConfig"],
        "job_namespace": NAMESPACE,
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": ours["global"]["serviceAccountName"],
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": ours["global"]["postgresqlSecretName"],
        "env_config_maps": [item["name"] for item in launcher["envConfigMaps"]],
        "env_secrets": [item["name"] for item in launcher["envSecrets"]],
        "resources": launcher["resources"],
        "run_k8s_config": {
            snake(key): value for key, value in launcher.get("runK8sConfig", {}).items()
        },
    }
    return rendered


def run_job(monkeypatch: pytest.MonkeyPatch, tags: dict[str, str]) -> dict[str, Any]:
    """The Job K8sRunLauncher would create for a run with `tags`, as a manifest dict: the
    launcher built from the rendered config, then the steps of its launch_run."""
    import dagster_k8s.launcher
    from dagster import DagsterRun
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        construct_dagster_k8s_job,
        get_job_name_from_run_id,
        get_user_defined_k8s_config,
    )

    # The launcher loads the in-cluster credentials when built; there is no cluster here.
    monkeypatch.setattr(dagster_k8s.launcher, "load_kubernetes_config", lambda **_: None)
    processed = process_config(K8sRunLauncher.config_type(), rendered_run_launcher_config())
    assert processed.success, processed.errors
    launcher = K8sRunLauncher(**processed.value)

    run = DagsterRun(
        job_name="__ASSET_JOB", run_id="0f3c2a9e-1d4b-4c6e-9a7f-2b8d5e6c1a00", tags=tags
    )
    assert get_user_defined_k8s_config(run.tags).container_config == (
        GPU_RUN_CONFIG["container_config"] if "dagster-k8s/config" in tags else {}
    )
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    job_name = get_job_name_from_run_id(run.run_id)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=IMAGE, run_launcher=launcher),
        args=["dagster", "api", "execute_run", "{}"],
        job_name=job_name,
        pod_name=job_name,
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": run.job_name}],
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def gpu_run_tags(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    from farm_platform.images.sensors import claim_run_request
    from farm_platform.ingest.arrivals import Claim
    from farm_platform.resources.ingest_policy import IngestPolicyResource

    claim = Claim("photos:2026-06-01:1", dt.date(2026, 6, 1), ("P000",))
    policy = IngestPolicyResource(run_k8s_config=json.dumps(GPU_RUN_CONFIG))
    return dict(claim_run_request(claim, policy).tags)


def test_a_gpu_image_run_gets_a_gpu_pod_on_the_gpu_pool(monkeypatch):
    job = run_job(monkeypatch, gpu_run_tags(monkeypatch))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["resources"] == GPU_RUN_CONFIG["container_config"]["resources"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["serviceAccountName"] == "farm-dagster"
    # The settings and secrets every run reads, and Dagster's own database password.
    assert container["envFrom"] == [
        {"configMapRef": {"name": "farm-platform-env"}},
        {"secretRef": {"name": "farm-platform-secrets"}},
    ]
    env = {item["name"]: item for item in container["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "dagster-postgresql-secret",
        "key": "postgresql-password",
    }
    assert env["DAGSTER_HOME"]["value"] == "/opt/dagster/dagster_home"
    # Kubernetes never restarts a failed run pod: Dagster and requeue_failed_photos retry.
    assert job["spec"]["backoffLimit"] == 0
    assert (
        values()["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["jobSpecConfig"][
            "backoffLimit"
        ]
        == 0
    )
    assert kubernetes_validate.validate(job, K8S_VERSION, strict=True) is not None


def test_a_report_run_keeps_the_launchers_small_pod(monkeypatch):
    job = run_job(monkeypatch, {"dagster/partition": "2026-06-01"})
    pod = job["spec"]["template"]["spec"]
    launcher = values()["runLauncher"]["config"]["k8sRunLauncher"]
    assert pod["containers"][0]["resources"] == launcher["resources"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert job["spec"]["backoffLimit"] == 0


def test_strict_validation_rejects_a_misspelled_field(monkeypatch):
    job = run_job(monkeypatch, gpu_run_tags(monkeypatch))
    job["spec"]["template"]["spec"]["nodeSelectr"] = job["spec"]["template"]["spec"].pop(
        "nodeSelector"
    )
    with pytest.raises(kubernetes_validate.ValidationError, match="nodeSelectr"):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


# Labels the chart puts on its pods (templates/helpers/_helpers.tpl, selectorLabels).
CHART_POD_LABELS = {"app.kubernetes.io/name": "dagster", "app.kubernetes.io/instance": RELEASE}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector's matchLabels and `In` expressions (all this project uses)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(
        expression["operator"] == "In" and labels.get(expression["key"]) in expression["values"]
        for expression in selector.get("matchExpressions", [])
    )


def test_only_the_load_balancer_reaches_the_webservers(monkeypatch):
    policies = {
        doc["metadata"]["name"]: doc for doc in load_all(DEPLOY / "k8s/network-policies.yaml")
    }
    policy = policies["dagster-webserver-from-load-balancer"]["spec"]
    for component in ("dagster-webserver", "dagster-webserver-read-only"):
        assert selects(policy["podSelector"], {**CHART_POD_LABELS, "component": component})
    assert not selects(policy["podSelector"], {**CHART_POD_LABELS, "component": "dagster-daemon"})
    (rule,) = policy["ingress"]
    assert all(set(source) == {"ipBlock"} for source in rule["from"])  # no pod, no namespace


def test_only_run_pods_may_reach_the_model_server(monkeypatch):
    job = run_job(monkeypatch, gpu_run_tags(monkeypatch))
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    policies = {
        doc["metadata"]["name"]: doc for doc in load_all(DEPLOY / "k8s/network-policies.yaml")
    }
    model_policy = policies["farm-models-from-run-pods"]["spec"]
    (rule,) = model_policy["ingress"]
    (source,) = rule["from"]
    selector = source["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    # The chart's labels of a code server pod (which must not reach the model server).
    code_server = {
        **CHART_POD_LABELS,
        "component": "user-deployments",
        "deployment": "farm-platform",
    }
    assert not selector.items() <= code_server.items()
    (service,) = load_all(INFERENCE_SERVICE)
    assert model_policy["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": service["metadata"]["name"]
    }
    grpc_port = service["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"]
    assert rule["ports"] == [{"protocol": "TCP", "port": grpc_port}]
