"""The analytics code location: one lineage graph, dbt's tests as asset checks, the morning
schedule, and the field map the `positions` asset gives dbt.
"""

import datetime as dt
import subprocess
import sys

import polars as pl
from dagster import AssetKey

from farm_platform.resources.warehouse import WarehouseResource


def test_one_lineage_graph_from_drone_images_to_the_report(location_env):
    from farm_platform.analytics.definitions import defs as analytics
    from farm_platform.images.definitions import defs as images

    edges: dict[AssetKey, set[AssetKey]] = {}
    for defs in (images, analytics):
        graph = defs.resolve_asset_graph()
        for key in graph.get_all_asset_keys():
            edges.setdefault(key, set()).update(graph.get(key).parent_keys)

    def ancestors(key: AssetKey) -> set[AssetKey]:
        seen, todo = set(), [key]
        while todo:
            for parent in edges.get(todo.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return seen

    upstream = ancestors(AssetKey("effectiveness_report"))
    for key in ("drone_images", "leaf_crops", "leaf_detector_model", "model_versions", "positions"):
        assert AssetKey(key) in upstream, key
    for k in range(5):
        assert AssetKey(f"disease_{k}_grades") in upstream
        assert AssetKey(f"disease_{k}_model") in upstream
    assert AssetKey("treatment_effect") in edges[AssetKey("effectiveness_report")]


def test_dbt_tests_are_asset_checks(location_env):
    from farm_platform.analytics.definitions import defs as analytics

    checks = {key.name for key in analytics.resolve_asset_graph().asset_check_keys}
    assert any("accepted_values" in name for name in checks)
    assert any("not_null" in name for name in checks)


def test_the_morning_schedule_reports_the_farms_yesterday_and_says_so(location_env):
    from dagster import build_schedule_context

    from farm_platform.analytics.definitions import defs as analytics
    from farm_platform.analytics.definitions import trial_calendar

    schedule = analytics.resolve_schedule_def("daily_report_schedule")
    assert schedule.execution_timezone == trial_calendar.timezone
    assert "yesterday" in schedule.description  # the UI's schedule page names the day
    morning = dt.datetime(2026, 6, 3, 6, 0, tzinfo=dt.UTC)
    [request] = schedule.evaluate_tick(
        build_schedule_context(
            scheduled_execution_time=morning, repository_def=analytics.get_repository_def()
        )
    ).run_requests
    assert request.partition_key == "2026-06-02"
    assert request.run_key == "2026-06-02"  # one report run per day, however often it ticks
    assert request.tags["dagster-celery/queue"] == "analytics"


def test_the_image_code_location_does_not_import_dbt(location_env):
    probe = "import sys, farm_platform.images.definitions; print('dbt' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=location_env
    )
    assert result.stdout.strip() == "False"


def test_the_positions_asset_gives_dbt_the_configured_field_map(tmp_path, monkeypatch):
    """A field map (FARM_FIELD_MAP) with 12 positions, 8 of them the shipped map's ids in
    the other arm: the `positions` asset writes it to the warehouse and stg_positions, which
    the dbt assets build from that source, is that map, not the shipped file."""
    from dagster import AssetSelection, materialize
    from dagster_dbt import DbtCliResource

    from farm_platform.analytics.dbt_env import (
        DBT_EXECUTABLE,
        dbt_profiles_dir,
        warehouse_relation_prefix,
    )
    from farm_platform.analytics.dbt_models import build_dbt_models
    from farm_platform.analytics.dbt_project import farm_dbt_project
    from farm_platform.analytics.positions import positions
    from farm_platform.config import DEFAULT_FIELD_MAP_PATH
    from farm_platform.resources.field_map import FieldMapResource, read_field_map
    from farm_platform.resources.trial_calendar import TrialCalendarResource

    tracked = pl.read_csv(DEFAULT_FIELD_MAP_PATH)
    swapped = tracked.with_columns(
        area=pl.when(pl.col("area") == "control")
        .then(pl.lit("treated"))
        .otherwise(pl.lit("control"))
    ).with_columns(dose_ml_per_sqft=pl.when(pl.col("area") == "treated").then(120.0).otherwise(0.0))
    extra = pl.DataFrame(
        {
            "position_id": [f"Q{i:03d}" for i in range(4)],
            "area": ["control", "treated"] * 2,
            "latitude": [51.99] * 4,
            "longitude": [5.67 + i / 1000 for i in range(4)],
            "dose_ml_per_sqft": [0.0, 120.0] * 2,
        }
    )
    field_map = tmp_path / "positions.csv"
    pl.concat([swapped, extra]).write_csv(field_map)
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    # Only the tests of the selected models: the relationships tests from the grade
    # tables read models this build does not select.
    monkeypatch.setenv("DBT_INDIRECT_SELECTION", "cautious")

    dbt_models = build_dbt_models(warehouse_relation_prefix(url))
    result = materialize(
        [positions, dbt_models],
        resources={
            "dbt": DbtCliResource(
                project_dir=farm_dbt_project,
                profiles_dir=str(dbt_profiles_dir(url)),
                dbt_executable=DBT_EXECUTABLE,
            ),
            "warehouse": WarehouseResource(url=url),
            "field_map": FieldMapResource(path=str(field_map)),
            "trial_calendar": TrialCalendarResource(),
        },
        selection=AssetSelection.assets("positions", "stg_positions"),
    )
    assert result.success
    loaded = WarehouseResource(url=url).query(
        "SELECT position_id, area FROM stg_positions ORDER BY position_id"
    )
    expected = sorted((p.position_id, p.area) for p in read_field_map(field_map).values())
    assert loaded.rows() == expected
    assert loaded.height == 12
    # The lineage: the models read the `positions` asset; their storage is this warehouse's.
    stg = dbt_models.specs_by_key[AssetKey("stg_positions")]
    assert AssetKey("positions") in {dep.asset_key for dep in stg.deps}
    assert stg.metadata["dagster/table_name"] == "warehouse.main.stg_positions"
