"""The report's page: the model version comparison, tables a reader can read, and the plots
(a bounded severity window, the decision's effect band, whole-day ticks).
"""

import dataclasses
import datetime as dt
import re

import polars as pl
import pytest
from report_support import report_data

from farm_platform.report.data import (
    ReportData,
    confusion_matrix,
    version_effect_comparison,
)
from farm_platform.report.headline import summary_lines
from farm_platform.report.render import render_report


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
