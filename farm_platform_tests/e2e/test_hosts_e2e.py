"""The production topology across hosts (`farm-platform hosts up`, farm_platform_dev.hosts):
seven network namespaces with private folders, sharing only the bucket, Pub/Sub, PostgreSQL,
Redis and the model servers by address. A day is graded end to end on the worker hosts, and
the control host shows its rows, crops and step logs. Root only; minutes: marker `hosts`,
`make test-hosts` (not `make test`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from production_topology import CREDENTIALS, assert_graded_once

from farm_platform import config
from farm_platform.images.run_tags import PHOTOS_TAG
from farm_platform.resources.warehouse import WarehouseResource
from farm_platform_dev.daemon import wait_for_photos
from farm_platform_dev.hosts import (
    HOSTS,
    WORKER_HOSTS,
    Hosts,
    hosts_down,
    hosts_up,
    on_host,
    read_state,
)
from farm_platform_dev.hosts_ops import publish_field_map
from farm_platform_dev.simulate import DroneMessagePublisher, FarmConfig, write_farm

pytestmark = [
    pytest.mark.hosts,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None,
        reason="network namespaces need root, iproute2 and nsenter",
    ),
]
SETTINGS = {
    config.FARM_SENSOR_INTERVAL_SECONDS: "5",
    config.FARM_RUN_TIMEOUT_SECONDS: "300",
    config.FARM_RUN_MAX_PHOTOS: "3",
    config.FARM_RETRY_BACKOFF_SECONDS: "5",
}


class HostsTopology:
    """The running hosts, seen from this machine (the bridge's address) as an operator's
    laptop on the same network would."""

    def __init__(self, hosts: Hosts):
        self.hosts = hosts
        self.environment = {**hosts.environment("control"), **CREDENTIALS}
        self.warehouse = WarehouseResource(url=self.environment[config.FARM_WAREHOUSE])

    def simulate(self, farm: FarmConfig) -> int:
        publish_field_map(self.hosts, farm)
        with config.process_environment(self.environment):
            summary = write_farm(
                farm,
                self.hosts.stack.bucket_url(),
                None,
                DroneMessagePublisher(self.hosts.stack.project),
                truth_url=str(self.hosts.state_dir / "truth"),
            )
        return summary.images

    @contextlib.contextmanager
    def instance(self) -> Iterator[DagsterInstance]:
        with config.process_environment(self.environment):
            instance = DagsterInstance.from_config(str(self.hosts.dagster_home("control")))
            try:
                yield instance
            finally:
                instance.dispose()

    def on(self, host: str, code: str) -> str:
        """Run Python `code` on `host` (its namespaces, its settings); its stdout."""
        state = read_state(self.hosts.state_dir)
        assert state is not None
        environment = {**os.environ, **self.hosts.environment(host), **CREDENTIALS}
        result = subprocess.run(
            [*on_host(self.hosts, state, host), sys.executable, "-c", code],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def worker_log(self, host: str) -> str:
        return self.hosts.log(host, "worker-images").read_text(errors="replace")


@pytest.fixture(scope="module")
def topology() -> Iterator[HostsTopology]:
    # Not under pytest's tmp folders (0700): PostgreSQL runs as another user.
    state_dir = Path(tempfile.mkdtemp(prefix="farm-hosts-"))
    state_dir.chmod(0o755)
    try:
        with config.process_environment(CREDENTIALS):
            hosts = hosts_up(state_dir, quick_polling=True, settings=SETTINGS)
            yield HostsTopology(hosts)
    finally:
        hosts_down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


# On the control host: each run's captured step logs, through the instance's compute log
# manager (the bucket), as the UI reads them.
CAPTURED_LOGS = """
import json
from dagster import DagsterInstance
from dagster._core.events import DagsterEventType
sizes = {}
with DagsterInstance.get() as instance:
    manager = instance.compute_log_manager
    for record in instance.get_run_records():
        run_id = record.dagster_run.run_id
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.LOGS_CAPTURED):
            file_key = entry.dagster_event.logs_captured_data.file_key
            data = manager.get_log_data(manager.build_log_key_for_run(run_id, file_key))
            text = (data.stdout or b"") + (data.stderr or b"")
            sizes[run_id] = sizes.get(run_id, "") + text.decode(errors="replace")
print(json.dumps({"manager": type(manager).__name__, "logs": sizes}))
"""


def test_a_day_is_graded_across_the_hosts_and_control_shows_rows_crops_and_logs(topology):
    photos = topology.simulate(FarmConfig(positions=6, days=1, seed=45))
    with topology.instance() as instance:
        wait_for_photos(instance, topology.warehouse, photos, 600)
        runs = [
            record.dagster_run
            for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
            if PHOTOS_TAG in record.dagster_run.tags
        ]
    assert runs
    # Every image run was executed by a worker host's Celery worker, none on control.
    ran_on = {}
    for run in runs:
        task = f"[{run.tags['dagster-celery/task_id']}] succeeded"
        ran_on[run.run_id] = [host for host in WORKER_HOSTS if task in topology.worker_log(host)]
        assert len(ran_on[run.run_id]) == 1, (run.run_id, ran_on)
    assert_graded_once(topology, [str(FarmConfig(positions=6, days=1, seed=45).dates[0])], photos)
    # From control: the rows, the crops in the bucket, and each run's step logs.
    seen = json.loads(
        topology.on(
            "control",
            "import json, os\n"
            "from farm_platform.resources.warehouse import WarehouseResource\n"
            "from farm_platform.layout import bucket_filesystem\n"
            "warehouse = WarehouseResource(url=os.environ['FARM_WAREHOUSE'])\n"
            "uris = warehouse.query('SELECT crop_uri FROM leaf_crops')['crop_uri'].to_list()\n"
            "fs, _ = bucket_filesystem(os.environ['FARM_BUCKET'])\n"
            "print(json.dumps({'crops': len(uris), 'in_bucket': sum(map(fs.exists, uris))}))\n",
        ).splitlines()[-1]
    )
    assert seen["crops"] > 0 and seen["in_bucket"] == seen["crops"], seen
    logs = json.loads(topology.on("control", CAPTURED_LOGS).splitlines()[-1])
    assert logs["manager"] == "GCSComputeLogManager"
    for run in runs:
        assert run.run_id in logs["logs"], f"no captured logs of run {run.run_id}"
        assert "STEP_START" in logs["logs"][run.run_id] or "leaf_crops" in logs["logs"][run.run_id]
    # Each host's services listen on its own address only (never 0.0.0.0 or loopback).
    layout = topology.hosts.layout
    for host in HOSTS:
        assert layout.listening(host) <= {layout.address(host)}, host
    # Every host that opens the instance reaches PostgreSQL through its own PgBouncer.
    import yaml

    from farm_platform_dev.pooler import POOLER_PORT

    for host in ("control", *WORKER_HOSTS):
        instance_file = topology.hosts.dagster_home(host) / "dagster.yaml"
        postgres = yaml.safe_load(instance_file.read_text())["storage"]["postgres"]["postgres_db"]
        assert (postgres["hostname"], postgres["port"]) == (layout.address(host), POOLER_PORT)
        assert topology.hosts.environment(host)[config.FARM_WAREHOUSE].endswith(
            f"@{layout.address(host)}:{POOLER_PORT}/farm"
        )
    # Nothing of Dagster's storage on a worker's disk: the instance is PostgreSQL and the bucket.
    for host in WORKER_HOSTS:
        home = topology.hosts.dagster_home(host)
        assert sorted(p.name for p in home.iterdir()) == ["dagster.yaml"], host
