"""What a daily report shows, read from the marts dbt built (no rendering here)."""

import datetime as dt
from dataclasses import dataclass, field

import polars as pl

from farm_platform.ml.registry import ModelRegistry
from farm_platform.quality.drift import drifted_models
from farm_platform.report.attrition import (
    ATTRITION_COLUMNS,
    attrition_summary,
    load_attrition,
)
from farm_platform.report.effect_stats import add_decisions, carry_decisions, moved_since
from farm_platform.resources.warehouse import WarehouseResource


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
    # int_estimate_versions: per disease, the grader version the effect estimate uses, the
    # active one, and what the active one has still to backfill.
    estimate_versions: pl.DataFrame = field(default_factory=pl.DataFrame)
    # The previous report's treatment_effect table (with the decisions it carried) and its
    # day: what this report's revisions are measured against (None: no earlier report).
    previous_effect: pl.DataFrame | None = None
    previous_day: dt.date | None = None
    # attrition.load_attrition: each position's last graded row per disease, and the
    # stayers' mean grade per arm on the dates leavers were last graded.
    last_grades: pl.DataFrame = field(default_factory=pl.DataFrame)
    stayers: pl.DataFrame = field(default_factory=pl.DataFrame)
    # Days up to the report's whose model outputs drifted from the models' evaluation data
    # (quality/drift.py, table model_drift): date, model_id.
    drifted: pl.DataFrame = field(default_factory=pl.DataFrame)
    # trend_adjusted_effect of dates <= day (empty without a pre-period, FARM_TREATMENT_START):
    # the placebo looks (period 'pre') and the trend-adjusted looks; with a pre-period,
    # `effect` holds the trend-adjusted looks, the ones the report decides on.
    trend: pl.DataFrame = field(default_factory=pl.DataFrame)
    # disease_type -> the readable name in its grader's model card.
    disease_names: dict[str, str] = field(default_factory=dict)
    # Every position of the field map: area, latitude, longitude and its latest mean grade
    # (over the diseases, on its latest graded date up to the day; null if never graded).
    field: pl.DataFrame = field(default_factory=pl.DataFrame)
    # The trial_design mart's one row (design, assignment, randomisation_seed, blocks,
    # positions, treated_positions, control_positions); None: not known.
    design: dict | None = None


def active_disease_names(registry: ModelRegistry) -> dict[str, str]:
    """disease_type -> readable name, from the active graders' model cards."""
    return {
        card.disease_type: card.disease_name
        for card in registry.active_cards().values()
        if card.disease_type and card.disease_name
    }


def with_evaluations(models: pl.DataFrame, registry: ModelRegistry) -> pl.DataFrame:
    """The active versions with their figures on the registered evaluation datasets and, for
    a forced activation, its reason (`farm-platform models list` shows the same)."""
    from farm_platform.ml.evaluation_records import version_notes
    from farm_platform.ml.registry import ModelRegistryError

    try:
        notes = [
            "; ".join(version_notes(registry, model_id, version))
            for model_id, version in zip(models["model_id"], models["version"], strict=True)
        ]
    except (ModelRegistryError, OSError, ValueError) as exc:
        # The report still goes out; the cell says why the figures are not there.
        notes = [f"evaluations unreadable: {exc}"] * models.height
    return models.with_columns(pl.Series("evaluation", notes, pl.String))


def load_report_data(
    warehouse: WarehouseResource,
    day: dt.date,
    registry: ModelRegistry,
    disease_names: dict[str, str] | None = None,
    previous_effect: pl.DataFrame | None = None,
    previous_day: dt.date | None = None,
) -> ReportData:
    def upto(table: str) -> pl.DataFrame:
        return warehouse.query(f"SELECT * FROM {table} WHERE date <= %s ORDER BY date", [day])

    graded = warehouse.query(
        "SELECT DISTINCT position_id FROM stg_active_disease_grades WHERE date = %s", [day]
    )
    positions = warehouse.query("SELECT position_id FROM stg_positions ORDER BY position_id")
    last_grades, stayers = load_attrition(warehouse, day)
    design = warehouse.query("SELECT * FROM trial_design")
    trend = upto("trend_adjusted_effect")
    return ReportData(
        day=day,
        effect=decided_effect(upto("treatment_effect"), trend),
        trend=trend,
        severity=upto("daily_severity"),
        coverage=warehouse.query("SELECT * FROM coverage WHERE date = %s ORDER BY area", [day]),
        ungraded=sorted(set(positions["position_id"]) - set(graded["position_id"])),
        models=with_evaluations(
            warehouse.query(
                "SELECT model_id, version, sha256 FROM model_versions WHERE active"
                " ORDER BY model_id"
            ),
            registry,
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
        estimate_versions=warehouse.query(
            "SELECT * FROM int_estimate_versions ORDER BY disease_type"
        ),
        last_grades=last_grades,
        stayers=stayers,
        previous_effect=previous_effect,
        previous_day=previous_day,
        disease_names=active_disease_names(registry) if disease_names is None else disease_names,
        drifted=drifted_models(warehouse, day),
        design=design.row(0, named=True) if design.height else None,
        field=warehouse.query(
            "WITH latest AS (SELECT position_id, max(date) AS date FROM position_trajectories"
            " WHERE date <= %s GROUP BY position_id),"
            " grade AS (SELECT t.position_id, avg(t.mean_grade) AS mean_grade"
            " FROM position_trajectories AS t JOIN latest USING (position_id, date)"
            " GROUP BY t.position_id)"
            " SELECT p.position_id, p.area, p.latitude, p.longitude, grade.mean_grade"
            " FROM stg_positions AS p LEFT JOIN grade USING (position_id) ORDER BY p.position_id",
            [day],
        ),
    )


def decided_effect(effect: pl.DataFrame, trend: pl.DataFrame) -> pl.DataFrame:
    """The looks the report decides on: with a pre-period (trend_adjusted_effect has rows),
    the trend-adjusted ones from the day treatment begins, numbered from it, and never the
    plain ones too (one test per look: the error budget is spent once); else
    treatment_effect's."""
    if trend.is_empty():
        return effect
    return trend.filter(pl.col("period") == "treatment").select(effect.columns)


def effect_decisions(data: ReportData) -> pl.DataFrame:
    """treatment_effect up to the report's day with the decision rules of effect_stats:
    Holm across the diseases of each day, the always-valid rule over daily looks, and each
    look's decision as the report that first showed it made it (carry_decisions)."""
    diseases = data.estimate_versions.height or None
    return carry_decisions(
        add_decisions(data.effect, diseases=diseases),
        data.previous_effect,
        data.day,
        data.previous_day,
    )


def revisions(data: ReportData) -> pl.DataFrame:
    """The looks whose numbers moved since the previous report (effect_stats.moved_since)."""
    return moved_since(effect_decisions(data), data.previous_effect)


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


def estimate_version_notes(data: ReportData) -> dict[str, str]:
    """disease_type -> why its estimate does not use the active grader version (only the
    diseases where it does not): the estimand across a grader switch (int_estimate_versions)."""
    notes = {}
    for row in data.estimate_versions.iter_rows(named=True):
        used, active = row["disease_model_version"], row["active_version"]
        if active is None or used == active:
            continue
        model = row["disease_model_id"]
        disease = row["disease_type"]
        first, last = row["active_missing_from"], row["active_missing_to"]
        note = (
            f"Estimate from {model} {used}, not the active {active}: {active} has not graded "
            f"{row['active_missing_photos']} photo(s) of the trial's history, from {first} to "
            f"{last}. The estimate stays on {used} (its baselines, look count and error budget "
            f"carry on) until a backfill covers them: farm-platform backfill --assets "
            f"{disease}_grades --from {first} --to {last}"
        )
        through = row["complete_through"]
        if through is not None and through < data.day:
            note += f"; {used} graded up to {through}: no estimate after {through}"
        notes[disease] = note
    return notes


def versions_per_disease(version_effects: pl.DataFrame) -> pl.DataFrame:
    """Per disease and grader version in model_version_effects: the dates it has an
    estimate for and its latest estimate (one row each)."""
    if version_effects.is_empty():
        return version_effects
    latest = version_effects.sort("date").group_by(
        "disease_type", "disease_model_version", maintain_order=True
    )
    return latest.agg(
        pl.col("version_active").last(),
        pl.col("date").min().alias("first_estimate"),
        pl.col("date").max().alias("last_estimate"),
        pl.col("effect").last().alias("latest_effect"),
        pl.col("ci_low").last(),
        pl.col("ci_high").last(),
    ).sort("disease_type", "disease_model_version")


def attrition(data: ReportData) -> pl.DataFrame:
    """Per disease: positions that left per arm, leavers vs stayers, and the latest effect
    three ways (farm_platform.report.attrition)."""
    if data.last_grades.is_empty():
        return pl.DataFrame(schema=ATTRITION_COLUMNS)
    return attrition_summary(data.last_grades, data.stayers)
