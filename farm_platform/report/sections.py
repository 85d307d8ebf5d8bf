"""The report's tables and its sections on grader versions, dropout and revisions (HTML
fragments for report.render_report)."""

import html

import polars as pl

from farm_platform.report.attrition import attrition_lines
from farm_platform.report.data import (
    ReportData,
    attrition,
    confusion_matrix,
    revisions,
    version_effect_comparison,
    versions_per_disease,
)


def _cell(value: object, float_format: str) -> str:
    text = float_format.format(value) if isinstance(value, float) else str(value)
    return f"<td>{html.escape(text)}</td>"


def table(frame: pl.DataFrame, float_format: str = "{:.3f}") -> str:
    if frame.is_empty():
        return "<p><em>no rows</em></p>"
    head = "".join(f"<th>{html.escape(name)}</th>" for name in frame.columns)
    body = "".join(
        "<tr>" + "".join(_cell(value, float_format) for value in row) + "</tr>"
        for row in frame.iter_rows()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def estimate_versions_section(data: ReportData) -> str:
    """Which grader version each disease's estimate uses, and why."""
    if data.estimate_versions.is_empty():
        return "<p><em>no grader versions recorded</em></p>"
    shown = data.estimate_versions.select(
        "disease_type",
        pl.col("disease_model_id").alias("grader"),
        pl.col("disease_model_version").alias("estimate_uses"),
        "active_version",
        pl.col("complete_through").alias("estimate_version_complete_through"),
        pl.col("active_missing_photos").alias("photos_the_active_version_has_not_graded"),
        "active_missing_from",
        "active_missing_to",
    )
    return f"""<p>The effect estimate of a disease uses the grader version that has graded
the trial's whole history: the active one, or, after a switch, the previous one until the
active one's backfill covers every photo since the trial's first day. Its baselines, look
count and error budget carry on across the switch; its estimate ends where that version
stopped grading. Severity plots and coverage use the active version.</p>
{table(coverage_dates(shown))}"""


def coverage_dates(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(c).cast(pl.String).fill_null("")
        for c in frame.columns
        if frame.schema[c] in (pl.Date, pl.Datetime)
    )


def version_comparison_section(data: ReportData) -> str:
    """The version section, in agreement with the per-version table it shows: a disease
    that several versions graded on different days is said to have no day in common, not
    left out as if one version had graded it."""
    per_version = versions_per_disease(data.version_effects)
    several = (
        set(per_version.group_by("disease_type").len().filter(pl.col("len") > 1)["disease_type"])
        if per_version.height
        else set()
    )
    compared = {
        disease
        for frame in (data.agreement, data.confusion)
        if frame.height
        for disease in frame["disease_type"]
    }
    apart = sorted(several - compared)
    if not several and not compared:
        return (
            "<p>Only one version of each grader has graded these leaves: there is nothing "
            "to compare yet. A new version's backfill fills this section.</p>"
        )
    parts = []
    if apart:
        parts.append(f"""<p>More than one grader version has graded {html.escape(", ".join(apart))},
but there is no day graded by both: nothing to compare leaf for leaf until a backfill
re-grades days the other version graded.</p>""")
    if compared:
        parts.append(f"""<p>Two versions of a grader on the same leaves: how often they agree, the
grades one gave where the other gave each grade, and the treatment effect each version's
grades give.</p>
<h3>Agreement</h3>
{table(data.agreement)}
<h3>Confusion of grades (rows: the earlier version's grade; columns: the later one's)</h3>
{table(confusion_matrix(data.confusion), "{{:.0f}}")}
<h3>Treatment effect under each version (latest date both graded)</h3>
{table(version_effect_comparison(data.version_effects))}""")
    parts.append(f"""<h3>Every version's own estimate (each from its own first graded day)</h3>
{table(coverage_dates(per_version))}""")
    return "\n".join(parts)


def attrition_section(data: ReportData) -> tuple[str, str]:
    """(the warning beside the headline, the section's body) about positions that left."""
    summary = attrition(data)
    lines = attrition_lines(summary, data.disease_names)
    warning = (
        "<p class='warn'>Positions left the trial: "
        + " ".join(html.escape(line) + "." for line in lines)
        + "</p>"
        if lines
        else ""
    )
    body = """<p>A position has left a disease's estimate when it was last graded before that
disease's latest date. Leavers vs stayers: each leaver's mean grade on its last graded day
minus the mean of its arm's stayers that day (Student-t interval and p-value over the
leavers). The latest effect three ways: over the positions graded that day (the headline),
over the positions followed throughout (graded on the first and the latest day), and with
each leaver's last change carried forward (a sensitivity check, not an estimate).</p>"""
    return warning, body + table(coverage_dates(summary))


def revisions_section(data: ReportData) -> str:
    """What moved since the previous report: the looks whose photos or grades changed."""
    if data.previous_effect is None:
        return "<p>No earlier report to compare with: every look shown is decided here.</p>"
    moved = revisions(data)
    if moved.is_empty():
        return (
            f"<p>Nothing moved since the report of {data.previous_day}: every look it "
            "showed has the same numbers.</p>"
        )
    flipped = moved.filter(
        (pl.col("day_call_before") != pl.col("day_call_after")).fill_null(True)
        | (pl.col("always_valid_before") != pl.col("always_valid_after")).fill_null(True)
    )
    days = ", ".join(sorted({str(d) for d in moved["date"]}))
    diseases = ", ".join(sorted(set(moved["disease_type"])))
    head = f"{moved.height} look(s) moved since the report of {data.previous_day}"
    rule = (
        "A look is decided once, by the first report that shows it; a revised look's new "
        "intervals are shown but decide nothing (its share of the error budget was spent "
        "when it was decided), so the decision column keeps what was decided and when."
    )
    return f"""<p class='warn'>{head} (late photos, a re-grade or a backfill):
days {html.escape(days)}; diseases {html.escape(diseases)}; {flipped.height} with a call
that flipped. {rule}</p>
{table(coverage_dates(moved))}"""
