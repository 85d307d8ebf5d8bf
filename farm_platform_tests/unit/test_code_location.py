"""The code location loads the way `dagster dev` and the daemon load it."""

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
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=location_env,
    )
    assert result.stdout.strip() == "[]"


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


def test_a_model_newer_than_the_dbt_manifest_makes_it_stale(tmp_path):
    """After a `git pull` that adds a dbt model, the analytics location re-parses rather
    than load a manifest whose runs fail on the model it does not know."""
    import os
    import time

    from farm_platform.analytics.dbt_env import (
        dbt_project_copy,
        manifest_is_stale,
        parse_dbt_project,
    )
    from farm_platform.config import field_map_path

    project_dir = dbt_project_copy(field_map_path(), tmp_path / "dbt_project")
    assert manifest_is_stale(project_dir)  # no manifest yet
    parse_dbt_project(project_dir)
    assert not manifest_is_stale(project_dir)

    pulled = project_dir / "models" / "marts" / "pulled_model.sql"
    pulled.write_text("select 1 as one\n")
    later = time.time() + 5
    os.utime(pulled, (later, later))
    assert manifest_is_stale(project_dir)
    parse_dbt_project(project_dir)
    manifest = (project_dir / "target" / "manifest.json").read_text()
    assert "model.farm.pulled_model" in manifest
