"""The report's plots, as base64 PNGs to embed (matplotlib imported only when drawing)."""

import base64
import datetime as dt
import io
from typing import Any

import polars as pl

from farm_platform.analytics.headline import disease_label

# A plot's cost must not grow with the trial: the last PLOT_RECENT_DAYS days day by day, and
# the whole trial in at most PLOT_OVERVIEW_POINTS bins (means of the days in each bin)
# beneath them once the trial is longer than that window.
PLOT_RECENT_DAYS = 60
PLOT_OVERVIEW_POINTS = 60


def severity_plot_frames(severity: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """(the last PLOT_RECENT_DAYS days of `severity`, the whole of it downsampled to at most
    PLOT_OVERVIEW_POINTS dates per disease and area, or None when the window holds it all).

    Both have date, area, disease_type, mean_grade; a downsampled row's date is its bin's
    first day and its mean_grade the mean of the bin's daily means."""
    columns = ["date", "area", "disease_type", "mean_grade"]
    if severity.is_empty():
        return severity, None
    first, last = severity["date"].min(), severity["date"].max()
    recent = severity.filter(pl.col("date") > last - dt.timedelta(days=PLOT_RECENT_DAYS))
    recent = recent.select(columns).sort("disease_type", "area", "date")
    span_days = (last - first).days + 1
    if span_days <= PLOT_RECENT_DAYS:
        return recent, None
    bin_days = -(-span_days // PLOT_OVERVIEW_POINTS)  # ceiling: at most that many bins
    overview = (
        severity.with_columns(((pl.col("date") - first).dt.total_days() // bin_days).alias("bin"))
        .group_by("disease_type", "area", "bin")
        .agg(pl.col("date").min(), pl.col("mean_grade").mean())
        .select(columns)
        .sort("disease_type", "area", "date")
    )
    return recent, overview


def plot_severity(severity: pl.DataFrame, names: dict[str, str]) -> str:
    """Mean grade per day, treated and control, one panel per disease: the last
    PLOT_RECENT_DAYS days, and the whole trial downsampled beneath them when it is longer."""
    plt, mdates = _pyplot()
    recent, overview = severity_plot_frames(severity)
    panels = (
        [("", recent)]
        if overview is None
        else [(f"last {PLOT_RECENT_DAYS} days", recent), ("whole trial", overview)]
    )
    diseases = sorted(severity["disease_type"].unique().to_list()) if severity.height else []
    columns = max(len(diseases), 1)
    figure, axes = plt.subplots(
        len(panels), columns, figsize=(3.2 * columns, 2.8 * len(panels)), sharey=True, squeeze=False
    )
    for row, (label, frame) in enumerate(panels):
        for axis, disease in zip(axes[row], diseases, strict=False):
            for area, colour in (("control", "#b5651d"), ("treated", "#2e8b57")):
                rows = frame.filter((pl.col("disease_type") == disease) & (pl.col("area") == area))
                axis.plot(
                    rows["date"].to_list(),
                    rows["mean_grade"].to_list(),
                    marker="o" if rows.height <= 31 else None,
                    color=colour,
                    label=area,
                )
            title = disease_label(disease, names)
            axis.set_title(f"{title}, {label}" if label else title, fontsize=9)
            _date_axis(axis, mdates)
        axes[row][0].set_ylabel("mean grade")
    if diseases:  # an empty trial has no lines to label
        axes[0][0].legend(fontsize=7)
    return _png(figure, plt)


def plot_effect(effects: pl.DataFrame, names: dict[str, str]) -> str:
    """The effect per day with its 95 % interval as a band, one panel per disease."""
    plt, mdates = _pyplot()
    decided = effects.filter(pl.col("ci_low").is_not_null()) if effects.height else effects
    if decided.height:
        last = decided["date"].max()
        decided = decided.filter(pl.col("date") > last - dt.timedelta(days=PLOT_RECENT_DAYS))
    diseases = sorted(decided["disease_type"].unique().to_list()) if decided.height else []
    figure, axes = plt.subplots(
        1, max(len(diseases), 1), figsize=(3.2 * max(len(diseases), 1), 2.8), squeeze=False
    )
    for axis, disease in zip(axes[0], diseases, strict=False):
        rows = decided.filter(pl.col("disease_type") == disease).sort("date")
        dates = rows["date"].to_list()
        axis.fill_between(
            dates, rows["ci_low"].to_list(), rows["ci_high"].to_list(), color="#9ecae1"
        )
        axis.plot(dates, rows["effect"].to_list(), marker="o", color="#08519c")
        axis.axhline(0, color="#555555", linewidth=0.8)
        axis.set_title(disease_label(disease, names), fontsize=9)
        _date_axis(axis, mdates)
    axes[0][0].set_ylabel(f"effect, 95 % interval (last {PLOT_RECENT_DAYS} days)")
    if not diseases:
        axes[0][0].text(0.5, 0.5, "no interval yet", ha="center", transform=axes[0][0].transAxes)
    return _png(figure, plt)


def plot_field(positions: pl.DataFrame) -> str:
    """Positions by longitude and latitude, coloured by their latest mean grade."""
    plt, _ = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4.2))
    scale = None
    for area, marker in (("treated", "^"), ("control", "o")):
        rows = positions.filter(pl.col("area") == area) if positions.height else positions
        if not rows.height:
            continue
        graded = rows.filter(pl.col("mean_grade").is_not_null())
        ungraded = rows.filter(pl.col("mean_grade").is_null())
        if graded.height:
            scale = axis.scatter(
                graded["longitude"].to_list(),
                graded["latitude"].to_list(),
                c=graded["mean_grade"].to_list(),
                cmap="YlOrRd",
                vmin=0,
                vmax=3,
                marker=marker,
                s=90,
                edgecolors="black",
                label=area,
            )
        if ungraded.height:
            axis.scatter(
                ungraded["longitude"].to_list(),
                ungraded["latitude"].to_list(),
                facecolors="none",
                edgecolors="grey",
                marker=marker,
                s=90,
                label=f"{area}, not graded",
            )
    if scale is not None:
        figure.colorbar(scale, ax=axis, label="latest mean grade")
    axis.set_xlabel("longitude")
    axis.set_ylabel("latitude")
    axis.ticklabel_format(useOffset=False)
    axis.tick_params(labelsize=7)
    if positions.height:
        axis.legend(fontsize=7)
    return _png(figure, plt)


def _date_axis(axis: Any, mdates: Any) -> None:
    # A bounded number of ticks whatever the span (a tick per day cost seconds).
    locator = mdates.AutoDateLocator(maxticks=8)
    axis.xaxis.set_major_locator(locator)
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axis.tick_params(axis="x", labelrotation=45, labelsize=7)


def _pyplot() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import dates as mdates
    from matplotlib import pyplot as plt

    return plt, mdates


def _png(figure: Any, plt: Any) -> str:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()
