"""The effectiveness report's page: does the medicine speed up healing? One HTML page per
day, self-contained (plots embedded as PNG data URIs); matplotlib is imported only when a
report is rendered. `analytics/report.py` writes it with the marts under
`{reports root}/{date}/`."""

import datetime as dt
import html

import polars as pl

from farm_platform.layout import join
from farm_platform.report.data import (
    ReportData,
    effect_decisions,
    effect_summary,
)
from farm_platform.report.effect_stats import DECISION_REFERENCES
from farm_platform.report.headline import design_line, overall_answer, summary_lines
from farm_platform.report.plots import plot_effect, plot_field, plot_severity
from farm_platform.report.pre_period import pre_period_line
from farm_platform.report.sections import (
    attrition_section,
    estimate_versions_section,
    revisions_section,
    table,
    version_comparison_section,
)

EFFECT_COLUMNS = [
    "disease_type",
    "disease_name",
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
    "estimator",
    "n_blocks",
    "n_outside_blocks",
    "significant",
    "holm_significant",
    "sequential_ci_low",
    "sequential_ci_high",
    "sequential_significant",
    "decision",
    "decided_on",
    "revised",
]
DECISION_COLUMNS = (
    "significant",
    "holm_significant",
    "sequential_significant",
    "decision",
    "revised",
)


def _displayed(effect: pl.DataFrame, names: dict[str, str]) -> pl.DataFrame:
    """The effect table as read: by date then disease, the disease's readable name beside
    it, decisions as words, and no effect number where there is no interval (so a
    one-position difference cannot be read as a result)."""
    if effect.is_empty():
        return effect
    shown = effect.sort("date", "disease_type").with_columns(
        disease_name=pl.col("disease_type").replace_strict(names, default="")
    )
    if "ci_low" in shown.columns:
        undecided = pl.col("ci_low").is_null()
        shown = shown.with_columns(
            pl.when(undecided).then(None).otherwise(pl.col(column)).alias(column)
            for column in ("effect", "std_error")
            if column in shown.columns
        )
    return (
        shown.with_columns(
            pl.when(pl.col(column)).then(pl.lit("yes")).otherwise(pl.lit("no")).alias(column)
            for column in DECISION_COLUMNS
            if column in shown.columns
        )
        .with_columns(
            # Blocks are counted only under the blocked estimator: an empty cell otherwise.
            pl.col(column).cast(pl.String).fill_null("")
            for column in ("n_blocks", "n_outside_blocks")
            if column in shown.columns
        )
        .select([c for c in EFFECT_COLUMNS if c in shown.columns])
    )


def _coverage(coverage: pl.DataFrame) -> pl.DataFrame:
    """Coverage as read: an empty cell, not "None", where no position is missing."""
    if "missing_positions" not in coverage.columns:
        return coverage
    return coverage.with_columns(pl.col("missing_positions").cast(pl.String).fill_null(""))


# What the effect plot's band is, in the reader's words (report_plots.effect_bands).
EFFECT_PLOT_CAPTION = (
    "Effect in grade points (treated minus control change since the first day; below 0: the "
    "treated plants got less sick). Shaded band: the always-valid 95 % interval the headline "
    "decides with. Dashed lines: each day's own 95 % interval, shown for reference, not a "
    "decision."
)


def _image(alt: str, png_base64: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64}">'


def drift_warning(data: ReportData) -> str:
    """The drift checks' lines (quality/drift.py), beside the effect; empty when none."""
    from farm_platform.quality.drift import report_lines

    lines = report_lines(data.drifted) if not data.drifted.is_empty() else []
    return "".join(f"<p class='warn'>{html.escape(line)}</p>" for line in lines)


def _pre_period_paragraph(data: ReportData) -> str:
    """The pre-period's sentence under the design's, and its placebo looks as a table."""
    line = pre_period_line(data)
    if line is None:
        return ""
    placebo = data.trend.filter(pl.col("period") == "pre").drop("period", "design", strict=False)
    return f"<p class='warn'>{html.escape(line)}</p>" + (table(placebo) if placebo.height else "")


def _ungraded_warning(data: ReportData) -> str:
    if not data.ungraded:
        return ""
    return (
        f"<p class='warn'>{len(data.ungraded)} position(s) have no grades for {data.day} "
        f"yet and are not in this day's figures: {html.escape(', '.join(data.ungraded))}</p>"
    )


def _held_back_section(data: ReportData) -> str:
    if data.held_back.is_empty():
        return (
            "<p>Nothing was held back: every data-quality check that holds photos back passed.</p>"
        )
    return (
        f"<p class='warn'>{data.held_back.height} photo × disease(s) failed a data-quality "
        "check and are held back: left out of every figure of this report until they are "
        "re-graded or fixed:</p>" + table(data.held_back)
    )


def render_report(data: ReportData) -> str:
    warning, held_back = _ungraded_warning(data), _held_back_section(data)
    names = data.disease_names
    effects = effect_decisions(data)
    left_warning, left_section = attrition_section(data)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Effectiveness report {data.day}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px}}.warn{{background:#fff3cd;padding:.6em}}
.caption{{color:#555;font-size:.9em;max-width:60em}}
img{{max-width:100%}}</style>
</head><body>
<h1>Does the medicine speed up healing? — {data.day}</h1>
<p><strong>{html.escape(overall_answer(data))}</strong></p>
<p class="warn">{html.escape(design_line(data))}</p>
{_pre_period_paragraph(data)}
<p class="caption">Grades are per leaf, from 0 (no disease) to 3 (severe); an effect is in
grade points.</p>
{warning}
{drift_warning(data)}
<h2>Decision per disease (valid under daily looks at five diseases)<sup>*</sup></h2>
<ul>{"".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(data))}</ul>
{left_warning}
<h2>Revised since the previous report</h2>
{revisions_section(data)}
<p>Difference in differences of the mean grade, treated minus control, each position's
change measured from its own first graded day, positions as the unit (Welch standard
error; <em>estimator</em> "within blocks": treated minus control within each block with
both arms, averaged over the <em>n_blocks</em> blocks, n_blocks − 1 df, and
<em>n_outside_blocks</em> positions whose block lacked the other arm that day left out).
Negative = treated leaves heal faster. <em>significant</em> and
<em>holm_significant</em> are NOT decisions: this day's 95 % interval alone excludes 0, and
still so after Holm's adjustment across the day's diseases (each valid for one pre-chosen
day only; over daily looks they call most no-effect trials). <em>sequential_…</em>: the
always-valid interval of the current numbers; <em>decision</em>: the always-valid call the
report that first showed the look made (<em>decided_on</em>), which stands;
<em>revised</em>: the look's numbers changed since.</p>
{table(_displayed(effect_summary(data), names))}
<h2>Effect over time, with the interval the decision uses</h2>
{_image("effect per day with its intervals, per disease", plot_effect(effects, names))}
<p class="caption">{EFFECT_PLOT_CAPTION}</p>
<h2>Severity over time, treated vs control</h2>
{_image("mean grade per day and area", plot_severity(data.severity, names))}
<h2>The field on {data.day}</h2>
<p>Each position where it stands, coloured by its latest mean grade over the five diseases
(treated ▲, control ●): where disease sits at a glance.</p>
{_image("positions by latitude and longitude, coloured by mean grade", plot_field(data.field))}
<h2>Coverage on {data.day}</h2>
{table(_coverage(data.coverage))}
<h2>Positions that left the trial</h2>
{left_section}
<h2>Held back by data-quality checks</h2>
{held_back}
<h2>Model versions used (active)</h2>
{table(data.models)}
<h2>Grader version behind each estimate</h2>
{estimate_versions_section(data)}
<h2>Model version comparison</h2>
{version_comparison_section(data)}
<h2>Effect over time</h2>
{table(_displayed(effects, names))}
<p><small>* The headline's rule: a report read every day, five diseases at a time, calls
far more false results than each 95 % interval suggests. Look k (k days after the trial's
first day) spends 0.05·6/(π²k²) of the error rate, split evenly over the trial's diseases;
the spent amounts sum to 0.05, so by the union bound the chance that any disease is ever
called on any day while the medicine does nothing is at most 5 %, whenever the reader
stops (a Bonferroni spending sequence over calendar looks: no information fraction and no
planned trial length, so not the Lan–DeMets spending function, and conservative against
one). A look is decided once, by the first report that shows it; later revisions of its
photos or grades update its numbers, not its decision. The always-valid interval is the
effect ± the Student-t quantile at that level × std_error, at floor(Welch df) like the
day's interval. References: {html.escape(DECISION_REFERENCES)}</small></p>
</body></html>
"""


def previous_report(fs, root: str, day: dt.date) -> tuple[dt.date | None, pl.DataFrame | None]:
    """The latest report before `day` under `root` and its treatment_effect table (with the
    decisions it carried), or (None, None): what this report's revisions and standing
    decisions are measured against."""
    days = []
    for path in fs.ls(root, detail=False) if fs.exists(root) else []:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        try:
            earlier = dt.date.fromisoformat(name)
        except ValueError:
            continue
        if earlier < day and fs.exists(join(root, name, "treatment_effect.parquet")):
            days.append(earlier)
    if not days:
        return None, None
    latest = max(days)
    with fs.open(join(root, latest.isoformat(), "treatment_effect.parquet"), "rb") as handle:
        return latest, pl.read_parquet(handle)
