"""`effectiveness_report`: does the medicine speed up healing? One HTML page per day.

Self-contained (plots embedded as PNG data URIs), written beside the mart tables as CSV
and Parquet under `{reports root}/{date}/`. matplotlib is imported only when a report is
rendered.
"""

import base64
import datetime as dt
import html
import io
import math
from dataclasses import dataclass, field

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetKey,
    ConfigurableResource,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from farm_platform.analytics.effect_stats import DECISION_REFERENCES, add_decisions
from farm_platform.bucket import bucket_filesystem
from farm_platform.layout import join, parse_date
from farm_platform.partitions import daily_partitions
from farm_platform.resources.warehouse import WarehouseResource

REPORT_MARTS = (
    "treatment_effect",
    "daily_severity",
    "coverage",
    "model_version_agreement",
    "model_version_confusion",
    "model_version_effects",
)


class ReportStoreResource(ConfigurableResource):
    """Where reports go: `reports_url` if set, else `{bucket_url}/reports`."""

    bucket_url: str = Field(description="FARM_BUCKET")
    reports_url: str = Field(default="", description="FARM_REPORTS, overrides the default")

    @property
    def root(self) -> str:
        return self.reports_url.rstrip("/") or join(self.bucket_url, "reports")


@dataclass(frozen=True)
class ReportData:
    day: dt.date
    effect: pl.DataFrame  # treatment_effect, dates <= day
    severity: pl.DataFrame  # daily_severity, dates <= day
    coverage: pl.DataFrame  # coverage of `day`
    ungraded: list[str]  # field-map positions without active grades on `day`
    models: pl.DataFrame  # active model versions
    agreement: pl.DataFrame  # model_version_agreement
    confusion: pl.DataFrame = field(default_factory=pl.DataFrame)  # model_version_confusion
    # model_version_effects of dates <= day: the effect under every grader version.
    version_effects: pl.DataFrame = field(default_factory=pl.DataFrame)
    # held_back_partitions of dates <= day: (position, date, disease) a holding
    # data-quality check failed on, left out of every figure.
    held_back: pl.DataFrame = field(default_factory=pl.DataFrame)


def load_report_data(warehouse: WarehouseResource, day: dt.date) -> ReportData:
    def upto(table: str) -> pl.DataFrame:
        return warehouse.query(f"SELECT * FROM {table} WHERE date <= %s ORDER BY date", [day])

    graded = warehouse.query(
        "SELECT DISTINCT position_id FROM stg_active_disease_grades WHERE date = %s", [day]
    )
    positions = warehouse.query("SELECT position_id FROM stg_positions ORDER BY position_id")
    return ReportData(
        day=day,
        effect=upto("treatment_effect"),
        severity=upto("daily_severity"),
        coverage=warehouse.query("SELECT * FROM coverage WHERE date = %s ORDER BY area", [day]),
        ungraded=sorted(set(positions["position_id"]) - set(graded["position_id"])),
        models=warehouse.query(
            "SELECT model_id, version, sha256 FROM model_versions WHERE active ORDER BY model_id"
        ),
        agreement=warehouse.query("SELECT * FROM model_version_agreement"),
        confusion=warehouse.query(
            "SELECT * FROM model_version_confusion"
            " ORDER BY disease_type, version_a, version_b, grade_a, grade_b"
        ),
        version_effects=upto("model_version_effects"),
        held_back=warehouse.query(
            "SELECT date, position_id, disease_type, failed_checks FROM held_back_partitions"
            " WHERE date <= %s ORDER BY date DESC, position_id, disease_type",
            [day],
        ),
    )


def effect_decisions(data: ReportData) -> pl.DataFrame:
    """treatment_effect up to the report's day with the decision rules of effect_stats:
    Holm across the diseases of each day, and the always-valid rule over daily looks."""
    return add_decisions(data.effect)


def effect_summary(data: ReportData) -> pl.DataFrame:
    """The effect per disease on the report's day (or the latest day before it with one),
    with its decisions."""
    effect = effect_decisions(data)
    if effect.is_empty():
        return effect
    latest = effect.group_by("disease_type").agg(pl.col("date").max())
    return effect.join(latest, on=["disease_type", "date"]).sort("disease_type")


def version_effect_comparison(version_effects: pl.DataFrame) -> pl.DataFrame:
    """For each disease graded by more than one version: the effect under each version on
    the latest date every one of them graded (a like-for-like comparison)."""
    columns = [
        "disease_type",
        "disease_model_version",
        "version_active",
        "date",
        "first_date",
        "n_treated",
        "n_control",
        "effect",
        "ci_low",
        "ci_high",
        "significant",
    ]
    if version_effects.is_empty():
        return version_effects
    rows = []
    for _, effects in version_effects.group_by("disease_type", maintain_order=True):
        by_version = effects.partition_by("disease_model_version", as_dict=True)
        if len(by_version) < 2:
            continue
        common = set.intersection(*(set(frame["date"]) for frame in by_version.values()))
        if common:
            rows.append(effects.filter(pl.col("date") == max(common)).select(columns))
    if not rows:
        return version_effects.clear().select(columns)
    return pl.concat(rows).sort("disease_type", "disease_model_version")


def confusion_matrix(confusion: pl.DataFrame) -> pl.DataFrame:
    """model_version_confusion in wide form: one row per (pair, grade_a), a column per grade_b."""
    if confusion.is_empty():
        return confusion
    index = ["disease_type", "version_a", "version_b", "grade_a"]
    wide = confusion.with_columns(
        ("grade_b=" + pl.col("grade_b").cast(pl.String)).alias("grade_b")
    ).pivot(on="grade_b", index=index, values="n", sort_columns=True)
    return wide.fill_null(0).sort(index)


# Below this Welch df the report says plainly that the interval rests on few positions.
FEW_DF = 5


def _no_estimate(row: dict[str, object]) -> str | None:
    """Why a disease's row decides nothing, in words; None when it has an interval."""
    n_treated, n_control = row.get("n_treated") or 0, row.get("n_control") or 0
    head = f"{row['disease_type']}: no conclusion on {row['date']}"
    if not n_treated or not n_control:
        missing = [arm for arm, n in (("treated", n_treated), ("control", n_control)) if not n]
        return (
            f"{row['disease_type']}: no estimate on {row['date']}: no "
            f"{' and no '.join(missing)} positions graded since their first day"
        )
    if n_treated == 1 or n_control == 1:
        arms = " and ".join(
            f"one {arm} position"
            for arm, n in (("treated", n_treated), ("control", n_control))
            if n == 1
        )
        return (
            f"{head}: only {arms} with a change since its first graded day; a difference from one "
            "position has no interval and decides nothing (at least 2 per area are needed)"
        )
    if row.get("ci_low") is None:
        return (
            f"{head}: every position changed by exactly the same amount, so there is no "
            "spread to build an interval from"
        )
    return None


def _verdict(row: dict[str, object]) -> str:
    direction = "treated heal faster" if row["effect"] < 0 else "treated heal slower"
    if row.get("sequential_significant"):
        return f"{direction}: conclusive, valid under daily looks at five diseases"
    if row["significant"]:
        return (
            "not conclusive yet: the day's 95 % interval excludes 0, but the always-valid "
            "one does not (daily looks and five diseases make single-day calls unreliable)"
        )
    return "no significant difference"


def summary_lines(data: ReportData) -> list[str]:
    """The report's headline: per disease, the decision under the always-valid rule, or in
    words why there is none (no numbers that could read as a conclusion)."""
    summary = effect_summary(data)
    lines = []
    for row in summary.iter_rows(named=True):
        reason = _no_estimate(row)
        if reason is not None:
            lines.append(reason)
            continue
        line = (
            f"{row['disease_type']}: {_verdict(row)}. Effect {row['effect']:+.3f} grade after "
            f"{row['days_since_start']} days; always-valid 95 % interval "
            f"[{row['sequential_ci_low']:+.3f}, {row['sequential_ci_high']:+.3f}]; "
            f"this day alone: 95% CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
        )
        if row["df"] < FEW_DF:
            line += (
                f". Few positions ({row['n_treated']} treated, {row['n_control']} control): "
                f"Welch df {row['df']:.1f} is rounded down to {math.floor(row['df'])} for the "
                "t quantile, which widens the interval (conservative)"
            )
        lines.append(line)
    estimated = set(summary["disease_type"]) if summary.height else set()
    graded = set(data.severity["disease_type"]) if data.severity.height else set()
    for disease in sorted(graded - estimated):
        lines.append(
            f"{disease}: no estimate yet: no position has been graded on two days, so there "
            "is no change from a first day (baseline) to compare"
        )
    if not lines:
        lines.append("No estimate yet: no grades.")
    return lines


# The severity plot's cost must not grow with the trial: the last PLOT_RECENT_DAYS days day
# by day, and the whole trial in at most PLOT_OVERVIEW_POINTS bins (means of the days in
# each bin) beneath them once the trial is longer than that window.
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


def _displayed(effect: pl.DataFrame) -> pl.DataFrame:
    """The effect table as shown: no effect number where there is no interval, so a
    one-position difference cannot be read as a result."""
    if effect.is_empty() or "ci_low" not in effect.columns:
        return effect
    undecided = pl.col("ci_low").is_null()
    return effect.with_columns(
        pl.when(undecided).then(None).otherwise(pl.col(column)).alias(column)
        for column in ("effect", "std_error")
        if column in effect.columns
    )


def _plot_severity(severity: pl.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import dates as mdates
    from matplotlib import pyplot as plt

    recent, overview = severity_plot_frames(severity)
    panels = (
        [("", recent)]
        if overview is None
        else [
            (f"last {PLOT_RECENT_DAYS} days", recent),
            ("whole trial", overview),
        ]
    )
    diseases = sorted(severity["disease_type"].unique().to_list()) if severity.height else []
    columns = max(len(diseases), 1)
    figure, axes = plt.subplots(
        len(panels),
        columns,
        figsize=(3.2 * columns, 2.8 * len(panels)),
        sharey=True,
        squeeze=False,
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
            axis.set_title(f"{disease}, {label}" if label else disease, fontsize=9)
            # A bounded number of ticks whatever the span (a tick per day cost seconds).
            locator = mdates.AutoDateLocator(maxticks=8)
            axis.xaxis.set_major_locator(locator)
            axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
            axis.tick_params(axis="x", labelrotation=45, labelsize=7)
        axes[row][0].set_ylabel("mean grade")
    if diseases:  # an empty trial has no lines to label
        axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _cell(value: object, float_format: str) -> str:
    text = float_format.format(value) if isinstance(value, float) else str(value)
    return f"<td>{html.escape(text)}</td>"


def _table(frame: pl.DataFrame, float_format: str = "{:.3f}") -> str:
    if frame.is_empty():
        return "<p><em>no rows</em></p>"
    head = "".join(f"<th>{html.escape(name)}</th>" for name in frame.columns)
    body = "".join(
        "<tr>" + "".join(_cell(value, float_format) for value in row) + "</tr>"
        for row in frame.iter_rows()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_report(data: ReportData) -> str:
    warning = ""
    if data.ungraded:
        warning = (
            f"<p class='warn'>{len(data.ungraded)} position(s) have no grades for {data.day} "
            f"yet and are not in this day's figures: {html.escape(', '.join(data.ungraded))}</p>"
        )
    if not data.held_back.is_empty():
        held_back = (
            f"<p class='warn'>{data.held_back.height} photo × disease(s) failed a data-quality "
            "check and are held back: left out of every figure of this report until they are "
            "re-graded or fixed:</p>" + _table(data.held_back)
        )
    else:
        held_back = (
            "<p>Nothing was held back: every data-quality check that holds photos back passed.</p>"
        )
    effect_columns = [
        "disease_type",
        "date",
        "days_since_start",
        "n_treated",
        "n_control",
        "n_late_baseline",
        "effect",
        "std_error",
        "df",
        "ci_low",
        "ci_high",
        "significant",
        "holm_significant",
        "sequential_ci_low",
        "sequential_ci_high",
        "sequential_significant",
    ]
    summary = _displayed(effect_summary(data))
    over_time = _displayed(effect_decisions(data))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Effectiveness report {data.day}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px}}.warn{{background:#fff3cd;padding:.6em}}
img{{max-width:100%}}</style>
</head><body>
<h1>Does the medicine speed up healing? — {data.day}</h1>
{warning}
<h2>Decision per disease (valid under daily looks at five diseases)<sup>*</sup></h2>
<ul>{"".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(data))}</ul>
<p>Difference in differences of the mean grade, treated minus control, each position's
change measured from its own first graded day, positions as the unit (Welch standard
error). Negative = treated leaves heal faster. <em>significant</em>: this day's 95 %
interval alone excludes 0; <em>holm_significant</em>: still so after Holm's adjustment
across the day's diseases; <em>sequential_…</em>: the always-valid interval and decision
the headline uses.</p>
{_table(summary.select([c for c in effect_columns if c in summary.columns]))}
<h2>Severity over time, treated vs control</h2>
<img alt="mean grade per day and area" src="data:image/png;base64,{_plot_severity(data.severity)}">
<h2>Coverage on {data.day}</h2>
{_table(data.coverage)}
<h2>Held back by data-quality checks</h2>
{held_back}
<h2>Model versions used (active)</h2>
{_table(data.models)}
<h2>Model version comparison</h2>
<p>Two versions of a grader on the same leaves: how often they agree, the grades one gave
where the other gave each grade, and the treatment effect each version's grades give.</p>
<h3>Agreement</h3>
{_table(data.agreement)}
<h3>Confusion of grades (rows: the earlier version's grade; columns: the later one's)</h3>
{_table(confusion_matrix(data.confusion), "{:.0f}")}
<h3>Treatment effect under each version (latest date both graded)</h3>
{_table(version_effect_comparison(data.version_effects))}
<h2>Effect over time</h2>
{_table(over_time.select([c for c in effect_columns if c in over_time.columns]))}
<p><small>* The headline's rule: a report read every day, five diseases at a time, calls
far more false results than each 95 % interval suggests. Look k (k days after the trial's
first day) spends 0.05·6/(π²k²) of the error rate, split evenly over the day's diseases;
the spent amounts sum to 0.05, so the chance that any disease is ever called on any day
while the medicine does nothing is at most 5 %, whenever the reader stops (alpha spending
with a union bound; no planned trial length needed). The always-valid interval is the
effect ± the Student-t quantile at that level × std_error, at floor(Welch df) like the
day's interval. References: {html.escape(DECISION_REFERENCES)}</small></p>
</body></html>
"""


@asset(
    partitions_def=daily_partitions,
    deps=[AssetKey(mart) for mart in REPORT_MARTS],
    group_name="reports",
    kinds={"html"},
    description="Daily HTML report (plots, effect with intervals, coverage, model versions) "
    "plus the marts as CSV and Parquet, under {reports root}/{date}/.",
)
def effectiveness_report(
    context: AssetExecutionContext, warehouse: WarehouseResource, reports: ReportStoreResource
) -> MaterializeResult:
    day = parse_date(context.partition_key)
    data = load_report_data(warehouse, day)
    fs, root = bucket_filesystem(reports.root)
    folder = join(root, day.isoformat())
    fs.makedirs(folder, exist_ok=True)
    report_path = join(folder, "effectiveness_report.html")
    fs.pipe_file(report_path, render_report(data).encode())
    for name, frame in (
        # With the decision columns the report adds (Holm, always-valid rule).
        ("treatment_effect", effect_decisions(data)),
        ("daily_severity", data.severity),
        ("coverage", data.coverage),
        ("model_version_agreement", data.agreement),
        ("model_version_confusion", data.confusion),
        ("model_version_effects", data.version_effects),
    ):
        with fs.open(join(folder, f"{name}.parquet"), "wb") as handle:
            frame.write_parquet(handle)
        fs.pipe_file(join(folder, f"{name}.csv"), frame.write_csv().encode())
    lines = summary_lines(data)
    for line in lines:
        context.log.info(line)
    return MaterializeResult(
        metadata={
            "report": MetadataValue.path(
                join(reports.root, day.isoformat(), "effectiveness_report.html")
            ),
            "summary": MetadataValue.md(
                "\n".join(f"- {line}" for line in lines) or "no effect yet"
            ),
            "ungraded_positions": MetadataValue.json(data.ungraded),
            "held_back_partitions": MetadataValue.json(
                [
                    f"{row['date']}|{row['position_id']}|{row['disease_type']}"
                    for row in data.held_back.head(50).iter_rows(named=True)
                ]
            ),
        }
    )
