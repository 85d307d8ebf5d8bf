"""The analytics code location: one lineage graph, dbt on both warehouses, the report."""

import dataclasses
import datetime as dt
import html
import re
import subprocess
import sys

import polars as pl
import pytest
from dagster import AssetKey

from farm_platform.report.data import (
    ReportData,
    confusion_matrix,
    version_effect_comparison,
)
from farm_platform.report.headline import design_line, overall_answer, summary_lines
from farm_platform.report.render import render_report
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


def report_data(ungraded: list[str]) -> ReportData:
    day = dt.date(2026, 6, 3)
    effect = pl.DataFrame(
        {
            "disease_type": ["disease_0", "disease_1"],
            "date": [day, day],
            "days_since_start": [2, 2],
            "n_treated": [4, 4],
            "n_control": [4, 4],
            "effect": [-0.8, 0.05],
            "std_error": [0.1, 0.2],
            "df": [6.0, 6.0],
            "ci_low": [-1.05, -0.44],
            "ci_high": [-0.55, 0.54],
            "significant": [True, False],
        }
    )
    severity = pl.DataFrame(
        {
            "date": [day - dt.timedelta(days=d) for d in (2, 1, 0)] * 2,
            "area": ["control"] * 3 + ["treated"] * 3,
            "disease_type": ["disease_0"] * 6,
            "mean_grade": [2.0, 2.0, 2.1, 2.0, 1.6, 1.2],
        }
    )
    return ReportData(
        day=day,
        effect=effect,
        severity=severity,
        coverage=pl.DataFrame({"date": [day], "area": ["control"], "positions_missing": [1]}),
        ungraded=ungraded,
        models=pl.DataFrame({"model_id": ["disease_0_grader"], "version": ["v1"]}),
        agreement=pl.DataFrame(),
        design=design_row("randomised in blocks"),
    )


def design_row(design: str) -> dict:
    """The trial_design mart's row of a 8-position trial with that design."""
    blocked = "blocks" in design
    return {
        "design": design,
        "assignment": "randomised" if design.startswith("randomised") else "allocated",
        "randomisation_seed": 42 if design.startswith("randomised") else None,
        "blocks": 4 if blocked else 0,
        "positions": 8,
        "treated_positions": 4,
        "control_positions": 4,
    }


@pytest.mark.parametrize(
    ("design", "in_design_line", "in_call", "answer"),
    [
        (
            "randomised in blocks",
            "randomised within 4 blocks of neighbouring positions (seed 42)",
            "disease_0: treated heal faster: conclusive, valid",
            "In short: treated plants heal faster from disease_0; no conclusive answer yet for "
            "the other 1 disease.",
        ),
        (
            "randomised",
            "arms randomised (seed 42), no blocks",
            "disease_0: treated heal faster: conclusive, valid",
            "In short: treated plants heal faster from disease_0; no conclusive answer yet for "
            "the other 1 disease.",
        ),
        (
            "allocated (two areas)",
            "Design: two areas, control and treated allocated by hand (not randomised): the "
            "effect is the medicine plus any difference in progression between the two areas",
            "disease_0: the treated area heals faster than the control area: conclusive (that "
            "is the medicine plus any difference in progression between the two areas), valid",
            "In short: the treated area heals faster from disease_0 than the control area; that "
            "is the medicine plus any difference in progression between the two areas, which "
            "this design cannot tell apart; no conclusive answer yet for the other 1 disease.",
        ),
        (
            "allocated in blocks",
            "Design: 4 blocks, arms allocated by hand (not randomised): the effect is the "
            "medicine plus any difference between the positions chosen for each arm",
            "disease_0: the treated area heals faster than the control area: conclusive (that "
            "is the medicine plus any difference between the positions chosen for each arm)",
            "In short: the treated area heals faster from disease_0 than the control area; that "
            "is the medicine plus any difference between the positions chosen for each arm, "
            "which this design cannot tell apart; no conclusive answer yet for the other 1 "
            "disease.",
        ),
        (
            None,
            "Design: not recorded, taken as two areas, control and treated allocated by hand",
            "disease_0: the treated area heals faster than the control area: conclusive (that "
            "is the medicine plus any difference in progression between the two areas)",
            "In short: the treated area heals faster from disease_0 than the control area; that "
            "is the medicine plus any difference in progression between the two areas, which "
            "this design cannot tell apart; no conclusive answer yet for the other 1 disease.",
        ),
    ],
)
def test_the_headline_names_the_design_and_words_its_calls_by_it(
    design, in_design_line, in_call, answer
):
    data = dataclasses.replace(report_data([]), design=design_row(design) if design else None)
    line = design_line(data)
    assert in_design_line in line
    assert ("farm-platform trial design" in line) == (not (design or "").startswith("randomised"))
    assert summary_lines(data)[0].startswith(in_call)
    assert overall_answer(data) == answer
    page = render_report(data)
    # In the headline: after the one-sentence answer, before the per-disease decisions.
    assert page.index(answer) < page.index(html.escape(line)) < page.index("Decision per disease")


def test_the_effect_table_shows_the_blocked_estimator_and_its_blocks():
    data = report_data([])
    blocked = data.effect.with_columns(
        estimator=pl.Series(["within blocks", "welch"]),
        n_blocks=pl.Series([4, None], dtype=pl.Int64),
        n_outside_blocks=pl.Series([1, None], dtype=pl.Int64),
    )
    data = dataclasses.replace(data, effect=blocked)
    page = render_report(data)
    assert "<td>within blocks</td><td>4</td><td>1</td>" in page
    assert "<td>welch</td><td></td><td></td>" in page and "None" not in page
    line = summary_lines(data)[0]
    assert "; within 4 blocks (1 position(s) graded that day are in a block" in line
    one_block = blocked.with_columns(
        n_blocks=pl.lit(1, dtype=pl.Int64), ci_low=pl.lit(None, dtype=pl.Float64)
    )
    line = summary_lines(dataclasses.replace(data, effect=one_block))[0]
    assert line == (
        "disease_0: no conclusion on 2026-06-03: 1 block(s) with both arms graded since their "
        "first day; a blocked estimate needs at least 2 to build an interval"
    )


def test_report_is_self_contained_html_with_plots_and_effects():
    page = render_report(report_data(ungraded=["P003"]))
    image = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert image and len(image.group(1)) > 1000  # an embedded plot, not a link
    assert "http://" not in page and "https://" not in page
    assert "-0.800" in page and "[-1.050, -0.550]" in page
    assert "P003" in page and "no grades for 2026-06-03" in page  # says what is missing
    assert "disease_0_grader" in page


@pytest.mark.parametrize("ungraded", [[], ["P001", "P002"]])
def test_summary_names_direction_and_significance(ungraded):
    lines = summary_lines(report_data(ungraded))
    assert lines[0].startswith("disease_0: treated heal faster: conclusive")
    assert "Effect -0.800 grade after 2 days" in lines[0]
    assert "no significant difference" in lines[1]
    page = render_report(report_data(ungraded))
    assert ("no grades for" in page) == bool(ungraded)
    # One sentence at the top says the same as the headline's lines.
    answer = (
        "In short: treated plants heal faster from disease_0; "
        "no conclusive answer yet for the other 1 disease."
    )
    assert overall_answer(report_data(ungraded)) == answer
    assert f"<strong>{answer}</strong>" in page


def test_an_arm_without_positions_is_said_not_crashed_on():
    data = report_data(ungraded=[])
    no_treated = data.effect.with_columns(
        n_treated=pl.when(pl.col("disease_type") == "disease_1").then(0).otherwise(4),
        effect=pl.when(pl.col("disease_type") == "disease_1").then(None).otherwise(-0.8),
        ci_low=pl.when(pl.col("disease_type") == "disease_1").then(None).otherwise(-1.05),
        ci_high=pl.when(pl.col("disease_type") == "disease_1").then(None).otherwise(-0.55),
        significant=pl.when(pl.col("disease_type") == "disease_1").then(None).otherwise(True),
    )
    data = dataclasses.replace(data, effect=no_treated)
    lines = summary_lines(data)
    assert lines[0].startswith("disease_0: treated heal faster")
    assert lines[1] == (
        "disease_1: no estimate on 2026-06-03: no treated positions graded since their first day"
    )
    assert "disease_1" in render_report(data)  # the page renders too


def one_disease(data: ReportData, **values: object) -> ReportData:
    """`data` with disease_1's row of the effect replaced by `values` (others kept)."""
    row = data.effect.filter(pl.col("disease_type") == "disease_1").to_dicts()[0] | values
    effect = pl.concat(
        [
            data.effect.filter(pl.col("disease_type") != "disease_1"),
            pl.DataFrame([row], schema=data.effect.schema),
        ]
    )
    return dataclasses.replace(data, effect=effect)


def test_the_headline_uses_the_rule_valid_under_daily_looks():
    # Day 2, two diseases: the day's interval [-0.545, -0.055] excludes 0, but the
    # always-valid one (0.05 · 6/(π² · 4) spent, split over 2 diseases) does not.
    data = one_disease(
        report_data(ungraded=[]), effect=-0.3, ci_low=-0.545, ci_high=-0.055, significant=True
    )
    line = summary_lines(data)[1]
    assert line.startswith("disease_1: not conclusive yet")
    assert "treated heal faster" not in line
    low, high = re.search(r"always-valid 95 % interval \[([-+.\d]+), ([-+.\d]+)\]", line).groups()
    assert float(low) < -0.545 and float(high) > 0
    page = render_report(data)
    assert "valid under daily looks" in page
    # The references are what is implemented (issue 27): a union-bound spending sequence,
    # not the Lan–DeMets spending function, which the footnote says it is not.
    assert "Darling, D. A. &amp; Robbins" in page and "Holm, S. (1979)" in page
    assert "not the Lan–DeMets spending function" in page
    assert "sequential_significant" in page and "holm_significant" in page


@pytest.mark.parametrize(
    ("n_treated", "n_control", "said"),
    [(1, 4, "only one treated position"), (3, 1, "only one control position")],
)
def test_one_position_in_an_arm_shows_no_number(n_treated, n_control, said):
    # dbt computes a difference from one position, but no interval: nothing to decide on.
    data = one_disease(
        report_data(ungraded=[]),
        n_treated=n_treated,
        n_control=n_control,
        effect=-0.987,
        std_error=None,
        df=None,
        ci_low=None,
        ci_high=None,
        significant=False,
    )
    line = summary_lines(data)[1]
    assert line.startswith("disease_1: no conclusion on 2026-06-03") and said in line
    assert "0.987" not in line and "0.987" not in render_report(data)


def test_no_baseline_and_no_grades_are_said_in_words():
    data = report_data(ungraded=[])
    # disease_2 was graded, but on one day only: no change from a first day exists.
    severity = data.severity.with_columns(disease_type=pl.lit("disease_2"))
    lines = summary_lines(dataclasses.replace(data, severity=severity))
    assert lines[-1].startswith("disease_2: no estimate yet") and "baseline" in lines[-1]
    empty = dataclasses.replace(data, effect=data.effect.clear(), severity=data.severity.clear())
    assert summary_lines(empty) == ["No estimate yet: no grades."]
    assert "No estimate yet" in render_report(empty)


def test_few_positions_are_said_plainly():
    data = one_disease(
        report_data(ungraded=[]), n_treated=2, n_control=2, df=1.2, ci_low=-2.5, ci_high=2.6
    )
    line = summary_lines(data)[1]
    assert "Few positions (2 treated, 2 control)" in line
    assert "Welch df 1.2 is rounded down to 1" in line and "conservative" in line
    assert "Few positions" not in summary_lines(data)[0]  # df 6


def test_report_lists_the_partitions_held_back_by_data_quality_checks():
    data = report_data(ungraded=[])
    held = pl.DataFrame(
        {
            "date": [data.day],
            "position_id": ["P007"],
            "disease_type": ["disease_3"],
            "failed_checks": ["disease_3_grades/grades_valid"],
        }
    )
    page = render_report(dataclasses.replace(data, held_back=held))
    assert "1 photo × disease(s)" in page and "held back" in page
    assert "P007" in page and "disease_3_grades/grades_valid" in page
    clean = render_report(data)
    assert "Nothing was held back" in clean and "P007" not in clean


def test_version_comparison_shows_confusion_and_the_effect_under_each_version():
    data = report_data(ungraded=[])
    day = data.day
    confusion = pl.DataFrame(
        {
            "disease_type": ["disease_3"] * 3,
            "disease_model_id": ["disease_3_grader"] * 3,
            "version_a": ["v1"] * 3,
            "version_b": ["v2"] * 3,
            "grade_a": [0, 1, 1],
            "grade_b": [0, 1, 2],
            "n": [40, 30, 7],
        }
    )
    matrix = confusion_matrix(confusion)
    assert matrix.columns[-3:] == ["grade_b=0", "grade_b=1", "grade_b=2"]
    assert matrix.select("grade_a", "grade_b=0", "grade_b=1", "grade_b=2").rows() == [
        (0, 40, 0, 0),
        (1, 0, 30, 7),
    ]
    # v2 graded only up to the day before: compared on the latest date both graded.
    dates = [day - dt.timedelta(days=1), day, day - dt.timedelta(days=1)]
    effects = pl.DataFrame(
        {
            "disease_type": ["disease_3"] * 3 + ["disease_0"],
            "disease_model_id": ["disease_3_grader"] * 3 + ["disease_0_grader"],
            "disease_model_version": ["v1", "v1", "v2", "v1"],
            "version_active": [True, True, False, True],
            "date": [*dates, day],
            "first_date": [day - dt.timedelta(days=2)] * 4,
            "n_treated": [4] * 4,
            "n_control": [4] * 4,
            "effect": [-0.5, -0.7, -0.25, -0.9],
            "ci_low": [-0.9, -1.1, -0.6, -1.2],
            "ci_high": [-0.1, -0.3, 0.1, -0.6],
            "significant": [True, True, False, True],
        }
    )
    compared = version_effect_comparison(effects)
    assert compared.select("disease_model_version", "date", "effect").rows() == [
        ("v1", dates[0], -0.5),
        ("v2", dates[0], -0.25),
    ]  # disease_0 has one version: nothing to compare
    page = render_report(dataclasses.replace(data, confusion=confusion, version_effects=effects))
    assert "Confusion of grades" in page and "grade_b=2" in page
    assert "-0.250" in page and "Treatment effect under each version" in page


def table_after(page: str, heading: str) -> str:
    """The HTML between `heading` and the next <h2>."""
    start = page.index(heading)
    end = page.find("<h2>", start + len(heading))
    return page[start : end if end != -1 else len(page)]


def test_the_report_reads_as_words_for_a_reader():
    """Rows by date then disease, readable disease names beside disease_k, decisions as
    yes/no, empty cells (not None), one sentence where there is nothing to compare, and a
    plot of the effect with its interval and a map of the field."""
    data = report_data(ungraded=[])
    day = data.day
    earlier = data.effect.with_columns(date=pl.lit(day - dt.timedelta(days=1)))
    field = pl.DataFrame(
        {
            "position_id": ["P000", "P001", "P002"],
            "area": ["control", "treated", "treated"],
            "latitude": [40.0, 40.001, 40.002],
            "longitude": [-88.0, -88.001, -88.002],
            "mean_grade": [2.1, 0.9, None],
        }
    )
    data = ReportData(
        **{
            **data.__dict__,
            # Unordered on purpose: later day first, diseases reversed.
            "effect": pl.concat([data.effect, earlier]).reverse(),
            "coverage": pl.DataFrame(
                {"date": [day], "area": ["control"], "missing_positions": [None]},
                schema={"date": pl.Date, "area": pl.String, "missing_positions": pl.String},
            ),
            "disease_names": {"disease_0": "brown spot", "disease_1": "yellow blotch"},
            "field": field,
        }
    )
    page = render_report(data)
    over_time = table_after(page, "<h2>Effect over time</h2>")
    cells = re.findall(r"<tr><td>(disease_\d)</td><td>([^<]*)</td><td>([^<]*)</td>", over_time)
    assert cells == [
        ("disease_0", "brown spot", str(day - dt.timedelta(days=1))),
        ("disease_1", "yellow blotch", str(day - dt.timedelta(days=1))),
        ("disease_0", "brown spot", str(day)),
        ("disease_1", "yellow blotch", str(day)),
    ]
    assert "<td>yes</td>" in over_time and "<td>no</td>" in over_time
    assert "True" not in page and "False" not in page and "None" not in page
    assert summary_lines(data)[0].startswith("disease_0 (brown spot): treated heal faster")
    assert "Only one version of each grader has graded these leaves" in page
    assert "no rows" not in table_after(page, "<h2>Model version comparison</h2>")
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert images == [
        "effect per day with its intervals, per disease",
        "mean grade per day and area",
        "positions by latitude and longitude, coloured by mean grade",
    ]


def test_severity_plots_cover_a_bounded_window_whatever_the_trial_length():
    from farm_platform.report.plots import (
        PLOT_OVERVIEW_POINTS,
        PLOT_RECENT_DAYS,
        severity_plot_frames,
    )

    first = dt.date(2026, 1, 1)
    days = [first + dt.timedelta(days=d) for d in range(360)]
    keys = [(area, disease) for area in ("control", "treated") for disease in ("d0", "d1")]
    severity = pl.DataFrame(
        {
            "date": [day for day in days for _ in keys],
            "area": [area for _ in days for area, _ in keys],
            "disease_type": [disease for _ in days for _, disease in keys],
            # A different value every day, so a wrong bin shows in its mean.
            "mean_grade": [
                3 - i / 200 + (0.5 if a == "treated" else 0) for i in range(360) for a, _ in keys
            ],
        }
    )
    recent, overview = severity_plot_frames(severity)
    for (area, disease), frame in recent.group_by("area", "disease_type"):
        assert frame["date"].to_list() == days[-PLOT_RECENT_DAYS:], (area, disease)
    assert overview is not None
    for (area, _disease), frame in overview.group_by("area", "disease_type"):
        assert frame.height <= PLOT_OVERVIEW_POINTS
        assert frame["date"].min() == first
        # 360 days in bins of 6: the first bin is the mean of days 0..5, computed here.
        offset = 0.5 if area == "treated" else 0
        expected = sum(3 - i / 200 + offset for i in range(6)) / 6
        assert abs(frame.sort("date")["mean_grade"][0] - expected) < 1e-12
    # A trial shorter than the window is plotted day by day, with no overview.
    short = severity.filter(pl.col("date") < first + dt.timedelta(days=20))
    recent, overview = severity_plot_frames(short)
    assert overview is None and recent.height == short.height
    # The page renders the long trial's severity plot beside its other plots.
    page = render_report(dataclasses.replace(report_data(ungraded=[]), severity=severity))
    assert '<img alt="mean grade per day and area" src="data:image/png;base64,' in page


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


def test_the_effect_plots_band_is_the_interval_the_decision_uses():
    """Issue 28: the plot drew the single-day band, below 0, beside a headline that said
    "not conclusive" from the always-valid interval."""
    from farm_platform.report.plots import effect_bands
    from farm_platform.report.render import EFFECT_PLOT_CAPTION

    day = dt.date(2026, 6, 3)
    effects = pl.DataFrame(
        {
            "disease_type": ["disease_0"] * 3,
            "date": [day - dt.timedelta(days=d) for d in (2, 1, 0)],
            "effect": [None, -0.3, -0.4],
            "ci_low": [None, -0.5, -0.6],
            "ci_high": [None, -0.1, -0.2],
            "sequential_ci_low": [None, -0.9, -0.8],
            "sequential_ci_high": [None, 0.3, 0.0],
        }
    )
    bands = effect_bands(effects)
    assert bands["date"].to_list() == [day - dt.timedelta(days=1), day]  # no interval, no point
    assert bands["band_low"].to_list() == [-0.9, -0.8]
    assert bands["band_high"].to_list() == [0.3, 0.0]
    assert bands["day_low"].to_list() == [-0.5, -0.6]
    page = render_report(report_data(ungraded=[]))
    assert EFFECT_PLOT_CAPTION in page
    assert "band: the always-valid 95 % interval the headline decides with" in page.lower()


@pytest.mark.parametrize("days", [1, 3, 20, 200])
def test_plot_ticks_fall_on_whole_days_a_few_of_them(days):
    """Issue 26: ticks at half days ("Jun-02 12:00") and a locator warning over short trials."""
    from farm_platform.report.plots import _date_axis, _pyplot

    plt, mdates = _pyplot()
    figure, axis = plt.subplots()
    dates = [dt.date(2026, 6, 1) + dt.timedelta(days=d) for d in range(days)]
    axis.plot(dates, range(days))
    _date_axis(axis, mdates, dates)
    ticks = [mdates.num2date(tick).replace(tzinfo=None) for tick in axis.get_xticks()]
    plt.close(figure)
    assert 1 <= len(ticks) <= 9
    assert all(tick.hour == tick.minute == 0 for tick in ticks)
    assert dates[0] <= ticks[0].date() and ticks[-1].date() <= dates[-1]
    if days > 56:
        assert {tick.weekday() for tick in ticks} == {0}  # Mondays over long trials
