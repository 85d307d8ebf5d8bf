"""The code location loads the way `dagster dev` and the daemon load it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LOCATION_ENV

REPO = Path(__file__).resolve().parents[2]


# `dagster definitions validate -w` starts a gRPC code server per location, one after the
# other (~9 s): out of process, so `make test` runs these, not the fast tier. The fast tier
# still loads both locations (the tests below).
validates_with_code_servers = pytest.mark.slow


def validate_workspace(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            Path(sys.executable).with_name("dagster"),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_probe(probe: str, environment: dict[str, str]) -> str:
    """What `python -c probe` prints, run in a fresh interpreter with `environment`."""
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=environment,
    )
    return result.stdout.strip()


@validates_with_code_servers
def test_workspace_validates_with_dagster_cli(tmp_path):
    result = validate_workspace(
        {"DAGSTER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **LOCATION_ENV}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Validation successful for code location farm_platform" in result.stderr + result.stdout


@validates_with_code_servers
def test_a_code_location_without_its_settings_names_what_is_missing(tmp_path):
    environment = {"DAGSTER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **LOCATION_ENV}
    del environment["FARM_WAREHOUSE"]
    result = validate_workspace(environment)
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "code location farm_platform needs FARM_WAREHOUSE set" in output
    assert "code location farm_platform_analytics needs FARM_WAREHOUSE set" in output


def test_loading_the_code_location_does_not_import_heavy_libraries(location_env):
    probe = (
        "import sys, farm_platform.images.definitions as d;"
        "d.defs.resolve_asset_graph();"
        "print(sorted(m for m in ('torch', 'great_expectations', 'dbt') if m in sys.modules))"
    )
    assert run_probe(probe, location_env) == "[]"


def test_the_definitions_read_every_setting_once_into_resources_and_definitions(location_env):
    """What the launchpad shows: text settings as EnvVar (a token never as its value),
    numbers read at load; the day partitions and the sensors' interval built at load."""
    probe = (
        "import json, farm_platform.images.definitions as d; r = d.defs.resources;"
        "i, p = r['inference'], r['ingest_policy'];"
        "print(json.dumps({'mode': [type(i.mode).__name__, i.mode.env_var_name],"
        "'token': i.oip_token.env_var_name, 'max': p.run_max_photos, 'chunk': p.run_chunk_photos,"
        "'start': d.days.start.date().isoformat(), 'tz': str(d.days.timezone),"
        "'intervals': sorted(s.minimum_interval_seconds for s in d.defs.sensors)}))"
    )
    settings = {
        "FARM_INFERENCE": "oip",
        "FARM_OIP_URL": "grpc://models:9000",
        "FARM_OIP_TOKEN": "s3cret",
        "FARM_RUN_MAX_PHOTOS": "7",
        "FARM_RUN_CHUNK_PHOTOS": "3",
        "FARM_TRIAL_START_DATE": "2026-03-01",
        "FARM_TRIAL_TIMEZONE": "Australia/Brisbane",
        "FARM_SENSOR_INTERVAL_SECONDS": "20",
    }
    loaded = json.loads(run_probe(probe, {**location_env, **settings}).splitlines()[-1])
    assert loaded == {
        "mode": ["EnvVar", "FARM_INFERENCE"],
        "token": "FARM_OIP_TOKEN",
        "max": 7,
        "chunk": 3,
        "start": "2026-03-01",
        "tz": "Australia/Brisbane",
        "intervals": [20, 20, 60],
    }


def test_a_malformed_number_fails_the_load_naming_its_variable(monkeypatch):
    from farm_platform.config import ConfigError
    from farm_platform.resources.environment import environment_fields
    from farm_platform.resources.ingest_policy import IngestPolicyResource

    monkeypatch.setenv("FARM_RUN_MAX_PHOTOS", "lots")
    with pytest.raises(ConfigError, match="FARM_RUN_MAX_PHOTOS='lots' is not a number"):
        environment_fields(IngestPolicyResource)


def test_asset_graph_has_models_upstream_of_grades(location_env):
    from dagster import AssetKey

    from farm_platform.images.definitions import defs

    graph = defs.resolve_asset_graph()
    for k in range(5):
        parents = graph.get(AssetKey(f"disease_{k}_grades")).parent_keys
        assert parents == {AssetKey("leaf_crops"), AssetKey(f"disease_{k}_model")}
    assert graph.get(AssetKey("leaf_crops")).parent_keys == {
        AssetKey("drone_images"),
        AssetKey("leaf_detector_model"),
    }
