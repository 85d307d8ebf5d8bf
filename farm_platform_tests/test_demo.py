"""`farm-platform demo --keep`: the command it prints to open the UI works as printed."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from farm_platform.dev.demo import run_demo
from farm_platform.dev.simulate import FarmConfig
from farm_platform.dev.stack import load_stack, stack_down

pytestmark = pytest.mark.slow


def test_demo_keep_prints_a_ui_command_that_works_as_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "demo"
    try:
        code = run_demo(FarmConfig(positions=4, days=2, seed=5), workdir, keep=True)
        out = capsys.readouterr().out
        assert code == 0, out[-3000:]
        lines = out.splitlines()
        heading = next(i for i, line in enumerate(lines) if line.endswith("on this demo with:"))
        printed = lines[heading + 1].strip()
        words = shlex.split(printed)
        assert words[0] == "env" and words[-3:-1] == ["dev", "-w"]
        environment = dict(word.split("=", 1) for word in words[1:] if "=" in word)
        for name in ("DAGSTER_HOME", "FARM_BUCKET", "FARM_WAREHOUSE", "FARM_FIELD_MAP"):
            assert name in environment, name
        # The stack the command points at is still up ...
        info = load_stack(workdir / "stack")
        assert environment["PUBSUB_EMULATOR_HOST"] == info.pubsub_host
        # ... and the printed environment loads both code locations, as `dagster dev` would.
        dagster = Path(words[-4])
        validate = subprocess.run(
            [str(dagster), "definitions", "validate", "-w", words[-1]],
            env={"PATH": os.environ["PATH"], **environment},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert validate.returncode == 0, validate.stderr[-3000:]
        assert dagster.parent == Path(sys.executable).parent
    finally:
        stack_down(workdir / "stack")
