"""Positions that leave the trial (issue 27): how many per arm, whether they differed from
those who stayed at their last photo, and the effect among the positions followed
throughout beside the headline's.

A position has LEFT a disease's estimate when its last graded date (up to the report's
day) is before that disease's latest graded date: it has no change on the latest day, so
the latest estimate is over the others only. A position missing on the latest day alone
(one missed photo) counts as having left until it is graded again. When the positions that
leave are the sickest (or the healthiest), the latest estimate is over a selected group
and is biased; a difference between leavers and stayers at the leavers' last photo is the
warning sign.

- leavers vs stayers: for each leaver, its mean grade on its last graded date minus the
  mean grade, that same date, of the stayers of its own arm; the mean of these differences
  with a one-sample Student-t 95 % interval and p-value (n − 1 df; none with one leaver);
- effect on the latest day three ways: over the positions graded that day (the headline's
  treatment_effect), over the positions followed throughout (graded on the disease's first
  day and on the latest day), and with every leaver's last change carried forward (a
  sensitivity analysis: it keeps the leavers, at the price of assuming they stopped
  changing when they left). Each is a Welch difference in mean change, treated − control.

The tables come from position_trajectories (the estimate's grader version), one row per
(position, disease) and one per (disease, leaver's last date, arm): small whatever the
trial's length.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics

import polars as pl

from farm_platform.report.effect_stats import tabulated_df

_UPTO = (
    "WITH upto AS (SELECT position_id, disease_type, area, date, first_date, mean_grade,"
    " change_from_first_day FROM position_trajectories WHERE date <= %s),"
    " last AS (SELECT position_id, disease_type, max(date) AS last_date FROM upto"
    " GROUP BY position_id, disease_type),"
    " span AS (SELECT disease_type, min(date) AS trial_first_date, max(date) AS latest_date"
    " FROM upto GROUP BY disease_type)"
)
# Each position's last graded row per disease, with the disease's first and latest dates.
LAST_GRADES_SQL = (
    _UPTO + " SELECT upto.disease_type, upto.position_id, upto.area, upto.first_date,"
    " upto.date AS last_date, upto.mean_grade AS last_mean_grade,"
    " upto.change_from_first_day AS last_change, span.trial_first_date, span.latest_date"
    " FROM upto JOIN last ON last.position_id = upto.position_id"
    " AND last.disease_type = upto.disease_type AND last.last_date = upto.date"
    " JOIN span ON span.disease_type = upto.disease_type"
    " ORDER BY upto.disease_type, upto.position_id"
)
# The stayers' mean grade per arm on each date a leaver was last graded.
STAYERS_SQL = (
    _UPTO + ", stayers AS (SELECT last.position_id, last.disease_type FROM last"
    " JOIN span ON span.disease_type = last.disease_type AND last.last_date = span.latest_date),"
    " leaver_days AS (SELECT DISTINCT last.disease_type, last.last_date AS date FROM last"
    " JOIN span ON span.disease_type = last.disease_type AND last.last_date < span.latest_date)"
    " SELECT upto.disease_type, upto.date, upto.area,"
    " avg(upto.mean_grade) AS stayers_mean_grade, count(*) AS stayers"
    " FROM upto JOIN stayers ON stayers.position_id = upto.position_id"
    " AND stayers.disease_type = upto.disease_type"
    " JOIN leaver_days ON leaver_days.disease_type = upto.disease_type"
    " AND leaver_days.date = upto.date"
    " GROUP BY upto.disease_type, upto.date, upto.area"
    " ORDER BY upto.disease_type, upto.date, upto.area"
)


def load_attrition(warehouse, day: dt.date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(last grades, stayers on the leavers' last dates) up to `day`."""
    return (
        warehouse.query(LAST_GRADES_SQL, [day]),
        warehouse.query(STAYERS_SQL, [day]),
    )


def _t(probability: float, df: float) -> float | None:
    t_df = tabulated_df(df)
    if t_df is None:
        return None
    from scipy import stats

    return float(stats.t.ppf(probability, t_df))


def welch_effect(
    treated: list[float], control: list[float], alpha: float = 0.05
) -> dict[str, float | None]:
    """mean(treated) − mean(control) with the Welch standard error and a Student-t
    1 − `alpha` interval (95 % by default) at floor(Welch df), as treatment_effect computes
    it (nulls without spread or with fewer than two positions in an arm)."""
    out: dict[str, float | None] = {"effect": None, "ci_low": None, "ci_high": None}
    if not treated or not control:
        return out
    out["effect"] = statistics.fmean(treated) - statistics.fmean(control)
    if len(treated) < 2 or len(control) < 2:
        return out
    a = statistics.variance(treated) / len(treated)
    b = statistics.variance(control) / len(control)
    if a + b <= 0:
        return out
    df = (a + b) ** 2 / (a**2 / (len(treated) - 1) + b**2 / (len(control) - 1))
    t = _t(1.0 - alpha / 2.0, df)
    if t is not None:
        half = t * math.sqrt(a + b)
        out["ci_low"], out["ci_high"] = out["effect"] - half, out["effect"] + half
    return out


def one_sample(values: list[float]) -> dict[str, float | None]:
    """Mean, Student-t 95 % interval and two-sided p-value of H0: mean = 0."""
    out: dict[str, float | None] = {"mean": None, "ci_low": None, "ci_high": None, "p": None}
    if not values:
        return out
    out["mean"] = statistics.fmean(values)
    if len(values) < 2:
        return out
    se = statistics.stdev(values) / math.sqrt(len(values))
    if se <= 0:  # no spread among the differences: nothing to test with
        return out
    from scipy import stats

    df = len(values) - 1
    t = float(stats.t.ppf(0.975, df))
    out["ci_low"], out["ci_high"] = out["mean"] - t * se, out["mean"] + t * se
    out["p"] = float(2.0 * stats.t.sf(abs(out["mean"]) / se, df))
    return out


ATTRITION_COLUMNS = {
    "disease_type": pl.String,
    "latest_date": pl.Date,
    "treated_positions": pl.Int64,
    "treated_left": pl.Int64,
    "control_positions": pl.Int64,
    "control_left": pl.Int64,
    "leavers_tested": pl.Int64,
    "leavers_minus_stayers": pl.Float64,
    "difference_ci_low": pl.Float64,
    "difference_ci_high": pl.Float64,
    "difference_p_value": pl.Float64,
    "effect_graded_on_latest": pl.Float64,
    "effect_followed_throughout": pl.Float64,
    "followed_ci_low": pl.Float64,
    "followed_ci_high": pl.Float64,
    "effect_leavers_carried_forward": pl.Float64,
    "carried_ci_low": pl.Float64,
    "carried_ci_high": pl.Float64,
}


def attrition_summary(last: pl.DataFrame, stayers: pl.DataFrame) -> pl.DataFrame:
    """Per disease: positions and leavers per arm, the leavers-vs-stayers test, and the
    effect on the latest day three ways (see the module's docstring)."""
    rows = []
    for (disease,), group in last.sort("disease_type").group_by(
        "disease_type", maintain_order=True
    ):
        latest = group["latest_date"][0]
        trial_first = group["trial_first_date"][0]
        records = group.to_dicts()
        left = [r for r in records if r["last_date"] < latest]
        on_latest = [r for r in records if r["last_date"] == latest]
        stayer_means = {
            (s["date"], s["area"]): s["stayers_mean_grade"]
            for s in stayers.filter(pl.col("disease_type") == disease).iter_rows(named=True)
        }
        differences = [
            r["last_mean_grade"] - stayer_means[r["last_date"], r["area"]]
            for r in left
            if (r["last_date"], r["area"]) in stayer_means
        ]
        test = one_sample(differences)

        def changes(selected: list[dict], area: str) -> list[float]:
            return [
                r["last_change"]
                for r in selected
                if r["area"] == area and r["last_date"] > r["first_date"]
            ]

        def effect(selected: list[dict]) -> dict[str, float | None]:
            return welch_effect(changes(selected, "treated"), changes(selected, "control"))

        graded = effect(on_latest)
        followed = effect([r for r in on_latest if r["first_date"] == trial_first])
        carried = effect(records)
        rows.append(
            {
                "disease_type": disease,
                "latest_date": latest,
                "treated_positions": sum(r["area"] == "treated" for r in records),
                "treated_left": sum(r["area"] == "treated" for r in left),
                "control_positions": sum(r["area"] == "control" for r in records),
                "control_left": sum(r["area"] == "control" for r in left),
                "leavers_tested": len(differences),
                "leavers_minus_stayers": test["mean"],
                "difference_ci_low": test["ci_low"],
                "difference_ci_high": test["ci_high"],
                "difference_p_value": test["p"],
                "effect_graded_on_latest": graded["effect"],
                "effect_followed_throughout": followed["effect"],
                "followed_ci_low": followed["ci_low"],
                "followed_ci_high": followed["ci_high"],
                "effect_leavers_carried_forward": carried["effect"],
                "carried_ci_low": carried["ci_low"],
                "carried_ci_high": carried["ci_high"],
            }
        )
    return pl.DataFrame(rows, schema=ATTRITION_COLUMNS)


def attrition_lines(summary: pl.DataFrame, names: dict[str, str] | None = None) -> list[str]:
    """One warning per disease that positions left, in words."""
    lines = []
    for row in summary.iter_rows(named=True):
        if not row["treated_left"] and not row["control_left"]:
            continue
        label = row["disease_type"]
        if names and label in names:
            label = f"{label} ({names[label]})"
        line = (
            f"{label}: positions left the estimate (not graded on {row['latest_date']}): "
            f"{row['treated_left']} of {row['treated_positions']} treated, "
            f"{row['control_left']} of {row['control_positions']} control"
        )
        if row["difference_p_value"] is not None:
            line += (
                f"; at their last photo they graded {row['leavers_minus_stayers']:+.3f} against "
                f"the stayers of their arm that day (95 % CI [{row['difference_ci_low']:+.3f}, "
                f"{row['difference_ci_high']:+.3f}], p = {row['difference_p_value']:.3f})"
            )
            if row["difference_p_value"] < 0.05:
                line += ": the leavers differed, so the latest estimate may be biased"
        elif row["leavers_tested"] == 1:
            line += "; one leaver: too few to test whether the leavers differed from the stayers"
        elif row["leavers_tested"]:
            line += (
                f"; the leavers all graded {row['leavers_minus_stayers']:+.3f} against the "
                "stayers of their arm that day: no spread to test with"
            )
        if row["effect_followed_throughout"] is not None:
            line += (
                f". Effect among positions followed throughout "
                f"{row['effect_followed_throughout']:+.3f}"
            )
        if row["effect_leavers_carried_forward"] is not None:
            line += (
                f"; with the leavers' last change carried forward "
                f"{row['effect_leavers_carried_forward']:+.3f} (a sensitivity check)"
            )
        lines.append(line)
    return lines
