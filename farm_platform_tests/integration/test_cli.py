"""`farm-platform` as a new user meets it, run as the real command in a subprocess: each
expected failure is one line naming the problem and what to do, with a non-zero exit, and
no command rewrites the tracked field map."""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm_platform.cli import build_parser
from farm_platform.config import DEFAULT_FIELD_MAP_PATH
from farm_platform_dev.processes import free_port

COMMAND = str(Path(sys.executable).with_name("farm-platform"))


def farm_platform(*args: str, cwd: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    """The command with only `environment` (and PATH, HOME) set, as on a fresh shell."""
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd)}
    return subprocess.run(
        [COMMAND, *args],
        cwd=cwd,
        env={**base, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


DATES = ["--from", "2026-06-01", "--to", "2026-06-02"]


@pytest.mark.parametrize(
    ("args", "environment", "expected"),
    [
        (["simulate"], {}, "simulate: FARM_BUCKET is not set: pass --bucket"),
        (
            ["simulate"],
            {"FARM_BUCKET": "farm-images"},
            "FARM_BUCKET='farm-images' has no scheme: use gs://farm-images",
        ),
        (["simulate"], {"FARM_BUCKET": "s3://farm"}, "only gs:// (Cloud Storage"),
        (["models", "stale"], {}, "models: DAGSTER_HOME is not set: export it"),
        (
            ["backfill", "--assets", "disease_3_grades", *DATES],
            {},
            "backfill: DAGSTER_HOME is not set",
        ),
        (["reconcile", *DATES], {}, "reconcile: FARM_BUCKET is not set"),
        (["dlq", "list"], {}, "dlq: FARM_GCP_PROJECT is not set: or pass --project"),
        (["replay", "--since", "2026-06-01"], {}, "replay: FARM_GCP_PROJECT is not set"),
        (["stack", "env"], {}, "stack: No local stack is running"),
        (
            ["replay", "--since", "2026-06-01", "--subscription", "../../x", "--project", "p"],
            {},
            "replay: --subscription '../../x' is not a Pub/Sub subscription name",
        ),
        (
            ["dlq", "list", "--subscription", "projects/other/subscriptions/s", "--project", "p"],
            {},
            "is a full path: give the subscription's short name, and --project",
        ),
        (
            ["reconcile", "--from", "0001-01-01", "--to", "9999-12-31"],
            {"FARM_BUCKET": "gs://farm", "FARM_WAREHOUSE": "duckdb:///w.duckdb"},
            "is 3652059 days: reconcile at most 366 at a time",
        ),
        (
            ["reconcile", "--from", "2026-06-05", "--to", "2026-06-01"],
            {"FARM_BUCKET": "gs://farm", "FARM_WAREHOUSE": "duckdb:///w.duckdb"},
            "reconcile: --to 2026-06-01 is before --from 2026-06-05",
        ),
    ],
)
def test_a_missing_or_malformed_setting_is_one_line(tmp_path, args, environment, expected):
    line = one_line_error(farm_platform(*args, cwd=tmp_path, **environment))
    assert line.startswith("farm-platform ") and expected in line, line
    assert not (tmp_path / "farm-images").exists(), "a bare bucket name became a local folder"


@pytest.mark.parametrize("option", ["--days", "--positions"])
def test_an_empty_farm_is_refused(tmp_path, option):
    result = farm_platform("simulate", option, "0", cwd=tmp_path, FARM_BUCKET=tmp_path.as_uri())
    assert result.returncode == 2
    assert f"argument {option}: 0 must be at least 1" in result.stderr.splitlines()[-1]
    assert not list(tmp_path.rglob("*.png"))


def test_stack_commands_point_at_the_demos_stack_when_none_runs_at_the_default(tmp_path):
    """Issue 28: after `demo --keep`, `stack env` said no stack ran and `stack down` said
    nothing was running (exit 0) while the demo's emulators ran under .farm/demo/stack."""
    demo_stack = tmp_path / ".farm" / "demo" / "stack"
    started = farm_platform("stack", "up", "--state-dir", str(demo_stack), cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    try:
        line = one_line_error(farm_platform("stack", "env", cwd=tmp_path))
        assert f"No local stack is running in {tmp_path / '.farm' / 'stack'}" in line
        assert f"add `--state-dir {demo_stack}` to the command" in line
        down = farm_platform("stack", "down", cwd=tmp_path)
        assert down.returncode == 0, down.stderr
        assert f"--state-dir {demo_stack}" in down.stdout
        # The hint is the command that works.
        found = farm_platform("stack", "env", "--state-dir", str(demo_stack), cwd=tmp_path)
        assert found.returncode == 0 and "PUBSUB_EMULATOR_HOST" in found.stdout, found.stderr
    finally:
        stopped = farm_platform("stack", "down", "--state-dir", str(demo_stack), cwd=tmp_path)
    assert stopped.stdout.strip() == "local stack stopped", stopped.stderr
    # With nothing running anywhere, the answer says how to start one.
    line = one_line_error(farm_platform("stack", "env", cwd=tmp_path))
    assert line.endswith("start one with `farm-platform stack up`.")


def test_a_stack_that_is_down_is_one_line_not_half_a_minute_of_retries(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    result = farm_platform(
        "simulate",
        cwd=tmp_path,
        FARM_BUCKET="gs://farm-images",
        STORAGE_EMULATOR_HOST=down,
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    )
    line = one_line_error(result)
    assert f"the GCS emulator at {down} does not answer" in line
    assert "farm-platform stack up" in line


@pytest.mark.slow
def test_reconcile_and_replay_with_their_service_down_are_one_line(tmp_path):
    """Issue 28: reconcile printed 46 tracebacks over 38 s with the storage emulator down,
    replay a RetryError after 57 s with Pub/Sub down."""
    (tmp_path / "positions.csv").write_text(DEFAULT_FIELD_MAP_PATH.read_text())
    (tmp_path / "dagster").mkdir()
    storage_down = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(
        farm_platform(
            "reconcile",
            *DATES,
            cwd=tmp_path,
            FARM_BUCKET="gs://farm-images",
            FARM_WAREHOUSE=f"duckdb:///{tmp_path / 'w.duckdb'}",
            FARM_GCP_PROJECT="farm-local",
            FARM_FIELD_MAP=str(tmp_path / "positions.csv"),
            DAGSTER_HOME=str(tmp_path / "dagster"),
            STORAGE_EMULATOR_HOST=storage_down,
            GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
        )
    )
    assert line.startswith(f"farm-platform reconcile: the GCS emulator at {storage_down}"), line
    pubsub_down = f"127.0.0.1:{free_port()}"
    line = one_line_error(
        farm_platform(
            "replay",
            "--since",
            "2026-06-01",
            "--project",
            "p",
            cwd=tmp_path,
            PUBSUB_EMULATOR_HOST=pubsub_down,
        )
    )
    assert line.startswith("farm-platform replay: Pub/Sub did not answer seek"), line


def test_a_bucket_that_does_not_exist_is_one_line(tmp_path, local_stack):
    environment = {**local_stack.environment(), "FARM_BUCKET": "gs://nope"}
    line = one_line_error(farm_platform("simulate", cwd=tmp_path, **environment))
    assert "bucket gs://nope does not exist" in line


def test_simulate_never_rewrites_the_tracked_field_map(tmp_path):
    tracked = hashlib.sha256(DEFAULT_FIELD_MAP_PATH.read_bytes()).hexdigest()
    bucket = (tmp_path / "bucket").as_uri()
    result = farm_platform(
        "simulate", "--positions", "2", "--days", "1", cwd=tmp_path, FARM_BUCKET=bucket
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(DEFAULT_FIELD_MAP_PATH.read_bytes()).hexdigest() == tracked
    own = tmp_path / ".farm" / "positions.csv"
    assert own.read_text().count("\n") == 3  # header and two positions
    assert f"export FARM_FIELD_MAP={own}" in result.stdout


def test_a_dagster_home_without_dagster_yaml_gets_the_shipped_one(tmp_path):
    home = tmp_path / "dagster"
    home.mkdir()
    result = farm_platform("models", "stale", cwd=tmp_path, DAGSTER_HOME=str(home))
    assert result.returncode == 0, result.stderr
    assert "run_monitoring" in (home / "dagster.yaml").read_text()
    assert "No dagster.yaml found" not in result.stdout + result.stderr


def test_every_command_and_option_says_what_it_is_for():
    def undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, subparser in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{path} {name}")
                    missing += undocumented(subparser, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert undocumented(build_parser(), "farm-platform") == []
