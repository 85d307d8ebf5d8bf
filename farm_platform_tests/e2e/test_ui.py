"""The Dagster UI as a user reads it: the real webserver over a small graded farm, read
with headless Chromium. Each page asserts what a user must see (and must not)."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from dagster import DagsterInstance

from farm_platform.admin.instance import prepare_dagster_home
from farm_platform_dev.farm import grade_simulated_farm
from farm_platform_dev.simulate import FarmConfig
from farm_platform_dev.ui import Browser, webserver

pytestmark = pytest.mark.slow  # a browser and a webserver

# The trial ends today, so the partitions page holds only the farm's days.
START = dt.date.today() - dt.timedelta(days=1)
CONFIG = FarmConfig(positions=3, days=2, start_date=START, seed=3)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A graded farm on a real Dagster instance, the webserver on it, and a browser."""
    workdir = tmp_path_factory.mktemp("ui")
    home = workdir / "dagster"
    prepare_dagster_home(home)
    with DagsterInstance.from_config(str(home)) as instance:
        farm = grade_simulated_farm(CONFIG, workdir / "farm", instance)
        runs = [run.run_id for run in instance.get_runs() if run.tags.get("dagster/partition")]
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FARM_BUCKET": farm.bucket_url,
        "FARM_WAREHOUSE": farm.warehouse.url,
        "FARM_GCP_PROJECT": "farm-ui",
        "FARM_FIELD_MAP": str(farm.field_map),
        "FARM_TRIAL_START_DATE": START.isoformat(),
    }
    with webserver(environment, workdir / "webserver.log") as base, Browser() as browser:
        yield base, browser, runs


def test_the_lineage_graph_runs_from_the_models_to_the_reports(ui):
    base, browser, _ = ui
    text = browser.open(f"{base}/", click=["Lineage"])
    assert "Global asset lineage" in text
    for group in ("models", "inference", "images", "analytics", "reports"):
        assert group in text.split(), group


def test_the_image_assets_partitions_are_the_trials_days(ui):
    base, browser, _ = ui
    text = browser.open(f"{base}/assets/drone_images?view=partitions")
    assert "Materialized (2)" in text and "Missing (0)" in text and "Failed (0)" in text
    assert START.isoformat() in text and (START + dt.timedelta(days=1)).isoformat() in text


def test_a_grade_check_shows_its_day_passing(ui):
    base, browser, _ = ui
    # The checks are listed by name; the drift check (grader_drift) comes first, so the
    # day's grades_valid is opened by a click.
    text = browser.open(f"{base}/assets/disease_3_grades?view=checks", click=["grades_valid"])
    assert "grades_valid" in text and "severity_jump" in text
    assert "Passed" in text and "photos_failed" in text


def test_a_healthy_run_page_shows_no_false_error(ui):
    base, browser, runs = ui
    assert runs, "no run of a day partition to look at"
    text = browser.open(f"{base}/runs/{runs[-1]}")
    assert "Success" in text and "image_pipeline" in text
    assert "did not yield or return expected outputs" not in text


def test_a_dbt_assets_storage_names_the_warehouse(ui):
    base, browser, _ = ui
    text = browser.open(f"{base}/assets/treatment_effect")
    assert "warehouse.main.treatment_effect" in text  # the farm's warehouse.duckdb
    assert "memory.main" not in text


def test_the_schedule_page_says_which_day_it_reports(ui):
    base, browser, _ = ui
    text = browser.open(f"{base}/locations/farm_platform_analytics/schedules/daily_report_schedule")
    assert "daily_report_schedule" in text
    assert "the effectiveness report of the farm's yesterday" in text


def test_the_report_says_its_plotted_band_is_the_decisions(ui, tmp_path):
    """Issue 28: the effect plot drew the single-day band beside a headline that decided
    with the always-valid one; the page now says which band is which, as a reader sees it."""
    from report_support import report_data

    from farm_platform.report.render import render_report

    _, browser, _ = ui
    page = tmp_path / "effectiveness_report.html"
    page.write_text(render_report(report_data(ungraded=[])))
    text = browser.open(page.as_uri(), settle_ms=0)
    assert "Effect over time, with the interval the decision uses" in text
    assert "Shaded band: the always-valid 95 % interval the headline decides with" in text
    assert "each day's own 95 % interval, shown for reference, not a decision" in text
