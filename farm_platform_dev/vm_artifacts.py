"""The production topology's deploy artifacts (deploy/vm/: the instance's dagster.yaml, the
workspace, the Celery workers), filled in for this machine. `stack up --production` starts
from them, as a team deploying on virtual machines does; only the `${...}` placeholders,
what differs per machine, are filled in here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from farm_platform.admin.instance import QUICK_POLLING
from farm_platform.config import REPO_ROOT
from farm_platform_dev.emulators import StackError

VM_ARTIFACTS = REPO_ROOT / "deploy" / "vm"
INSTANCE = VM_ARTIFACTS / "dagster.yaml"
WORKSPACE = VM_ARTIFACTS / "workspace.yaml"
WORKERS = VM_ARTIFACTS / "workers.yaml"
LOCALHOST = "127.0.0.1"

# Tests and benchmarks wait on the launcher's lost-worker check too: 10 s, not 60 s.
QUICK_LAUNCHER = {"lost_worker_grace_seconds: 60.0": "lost_worker_grace_seconds: 10.0"}


# ${NAME}, NAME in capitals: what differs per machine. Nothing else in the files is touched.
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def render(artifact: Path, **values: Any) -> str:
    """`artifact` with its `${NAME}` placeholders filled in; every one must be given."""

    def value(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise StackError(f"{artifact}: no value for the placeholder {match.group(0)}")
        return str(values[match.group(1)])

    return PLACEHOLDER.sub(value, artifact.read_text())


def instance_config(
    pg_port: int,
    max_concurrent_runs: int,
    runs_per_day: int,
    quick_polling: bool = False,
    pg_host: str = LOCALHOST,
    *,
    bucket: str,
) -> str:
    """deploy/vm/dagster.yaml for this machine, its compute logs in `bucket` (FARM_BUCKET,
    gs://NAME); `quick_polling`: the run queue, run monitoring and the launcher's
    lost-worker check poll as tests wait on them."""
    if runs_per_day < 1:
        raise ValueError(f"runs_per_day must be at least 1, not {runs_per_day}")
    text = render(
        INSTANCE,
        MAX_CONCURRENT_RUNS=max_concurrent_runs,
        RUNS_PER_DAY=runs_per_day,
        PG_HOST=pg_host,
        PG_PORT=pg_port,
        COMPUTE_LOG_BUCKET=gcs_bucket_name(bucket),
    )
    for shipped, quick in {**QUICK_POLLING, **QUICK_LAUNCHER}.items() if quick_polling else ():
        if shipped not in text:
            raise AssertionError(f"{INSTANCE} no longer says {shipped!r}")
        text = text.replace(shipped, quick)
    return text


def gcs_bucket_name(bucket_url: str) -> str:
    """NAME of `gs://NAME`: Dagster's GCS compute log manager takes a bucket's name."""
    if not bucket_url.startswith("gs://") or not bucket_url[5:].strip("/"):
        raise StackError(
            f"the production topology keeps compute logs in a GCS bucket: FARM_BUCKET must be "
            f"gs://NAME (the emulator stack's or a real one), not {bucket_url!r}"
        )
    return bucket_url[5:].strip("/").split("/", 1)[0]


def workspace_config(code_server_ports: dict[str, int], host: str = LOCALHOST) -> str:
    """deploy/vm/workspace.yaml pointing at the code servers on `host`."""
    return render(
        WORKSPACE,
        CODE_SERVER_HOST=host,
        IMAGES_CODE_SERVER_PORT=code_server_ports["farm_platform"],
        ANALYTICS_CODE_SERVER_PORT=code_server_ports["farm_platform_analytics"],
    )


def worker_arguments(queue: str, images_concurrency: int) -> list[str]:
    """`celery` arguments of the worker of `queue`, as deploy/vm/workers.yaml says."""
    import yaml

    workers = yaml.safe_load(render(WORKERS, IMAGES_CONCURRENCY=images_concurrency))
    if queue not in workers["queues"]:
        raise StackError(f"{WORKERS} has no worker for the queue {queue!r}")
    concurrency = str(workers["queues"][queue]["concurrency"])
    args = ["-A", workers["app"], "worker", "-Q", queue, "-n", f"{queue}@%h", "-c", concurrency]
    return [*args, *workers["options"]]
