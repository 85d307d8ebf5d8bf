"""The report's plots, as base64 PNGs to embed (matplotlib imported only when drawing)."""

import base64
import datetime as dt
import io
from typing import Any

import polars as pl

from farm_platform.report.headline import disease_label

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
            _date_axis(axis, mdates, frame["date"].to_list())
        axes[row][0].set_ylabel("mean grade (0 none – 3 severe)", fontsize=8)
    if diseases:  # an empty trial has no lines to label
        axes[0][0].legend(fontsize=7)
    return _png(figure, plt)


def effect_bands(effects: pl.DataFrame) -> pl.DataFrame:
    """What the effect plot draws, per disease and day of the last PLOT_RECENT_DAYS days
    with an interval: the effect, the band (`band_low/high`: the always-valid interval the
    headline decides with) and the day's own 95 % interval (`day_low/high`: not a decision,
    drawn as dashed lines)."""
    columns = ["disease_type", "date", "effect", "band_low", "band_high", "day_low", "day_high"]
    if effects.is_empty():
        return pl.DataFrame(schema={c: effects.schema.get(c, pl.Float64) for c in columns[:3]})
    rows = effects.filter(pl.col("sequential_ci_low").is_not_null())
    if rows.height:
        last = rows["date"].max()
        rows = rows.filter(pl.col("date") > last - dt.timedelta(days=PLOT_RECENT_DAYS))
    return rows.select(
        "disease_type",
        "date",
        "effect",
        pl.col("sequential_ci_low").alias("band_low"),
        pl.col("sequential_ci_high").alias("band_high"),
        pl.col("ci_low").alias("day_low"),
        pl.col("ci_high").alias("day_high"),
    ).sort("disease_type", "date")


def plot_effect(effects: pl.DataFrame, names: dict[str, str]) -> str:
    """The effect per day, one panel per disease: the band is the interval the decision
    uses, the dashed lines the day's own interval."""
    plt, mdates = _pyplot()
    bands = effect_bands(effects)
    diseases = sorted(bands["disease_type"].unique().to_list()) if bands.height else []
    figure, axes = plt.subplots(
        1, max(len(diseases), 1), figsize=(3.2 * max(len(diseases), 1), 2.9), squeeze=False
    )
    for axis, disease in zip(axes[0], diseases, strict=False):
        rows = bands.filter(pl.col("disease_type") == disease)
        dates = rows["date"].to_list()
        axis.fill_between(
            dates,
            rows["band_low"].to_list(),
            rows["band_high"].to_list(),
            color="#9ecae1",
            label="always-valid 95 % (decides)",
        )
        for bound in ("day_low", "day_high"):
            axis.plot(
                dates,
                rows[bound].to_list(),
                linestyle="--",
                linewidth=0.8,
                color="#6b6b6b",
                label="this day alone (no decision)" if bound == "day_low" else None,
            )
        axis.plot(dates, rows["effect"].to_list(), marker="o", color="#08519c", label="effect")
        axis.axhline(0, color="#555555", linewidth=0.8)
        axis.set_title(disease_label(disease, names), fontsize=9)
        _date_axis(axis, mdates, dates)
    axes[0][0].set_ylabel("effect, grade points\n(treated − control)", fontsize=8)
    if diseases:
        axes[0][0].legend(fontsize=6)
    else:
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


def _date_axis(axis: Any, mdates: Any, dates: list[Any]) -> None:
    """At most ~8 ticks, on whole days: every few days, or on Mondays over long spans, never
    at half days. Placed by hand: matplotlib's day locators walk a calendar rule that cost
    seconds a panel, and its automatic one picked half days over short trials."""
    if not dates:
        return
    first, last = min(dates), max(dates)
    span = (last - first).days + 1
    if span <= 56:
        start, step = first, max(1, -(-span // 8))
    else:
        start, step = first + dt.timedelta(days=-first.weekday() % 7), 7 * -(-span // 56)
    ticks = [start + dt.timedelta(days=d) for d in range(0, (last - start).days + 1, step)]
    axis.set_xticks(ticks)
    axis.xaxis.set_major_formatter(mdates.DateFormatter("%b-%d"))
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
