"""The report's headline: per disease, the decision under the always-valid rule, or in words
why there is none."""

import math

import polars as pl

from farm_platform.report.data import (
    ReportData,
    attrition,
    effect_decisions,
    effect_summary,
    estimate_version_notes,
)
from farm_platform.report.dropout import dropout_sentence
from farm_platform.report.effect_stats import ALPHA
from farm_platform.report.pre_period import pre_trend_sentences
from farm_platform.trial_design import (
    ALLOCATED_AREAS,
    ALLOCATED_BLOCKS,
    RANDOMISED_BLOCKS,
    RANDOMISED_ONLY,
)

# Below this df the report says plainly that the interval rests on few positions.
FEW_DF = 5
# What an effect is, beyond the medicine, when the arms were not randomised.
CONFOUNDING = {
    ALLOCATED_AREAS: "the medicine plus any difference in progression between the two areas",
    ALLOCATED_BLOCKS: "the medicine plus any difference between the positions chosen for each arm",
}


def _confounding(data: ReportData) -> str | None:
    """What the effect mixes with the medicine; None when the arms were randomised. A trial
    whose design is not recorded is taken as the founding design, two allocated areas."""
    design = data.design["design"] if data.design else ALLOCATED_AREAS
    return CONFOUNDING.get(design)


def design_line(data: ReportData) -> str:
    """The headline's sentence about how positions were assigned to the arms."""
    design = data.design or {}
    name = design.get("design")
    seed, blocks = design.get("randomisation_seed"), design.get("blocks")
    redesign = " `farm-platform trial design` sets up the next trial at random within blocks."
    if name == RANDOMISED_BLOCKS:
        return (
            f"Design: randomised within {blocks} blocks of neighbouring positions (seed "
            f"{seed}); each block's treated positions are compared with its own control "
            "positions, so a difference in progression across the field does not enter the "
            "effect."
        )
    if name == RANDOMISED_ONLY:
        return (
            f"Design: arms randomised (seed {seed}), no blocks; a difference in progression "
            "across the field averages out over the draw but widens the intervals."
        )
    if name == ALLOCATED_BLOCKS:
        return (
            f"Design: {blocks} blocks, arms allocated by hand (not randomised): the effect is "
            f"{CONFOUNDING[ALLOCATED_BLOCKS]}; no interval can tell them apart." + redesign
        )
    head = "Design: two areas" if name else "Design: not recorded, taken as two areas"
    return (
        f"{head}, control and treated allocated by hand (not randomised): the effect is "
        f"{CONFOUNDING[ALLOCATED_AREAS]} (light, heating, airflow), and no interval can tell "
        "them apart; a call below means the treated area did better or worse than the control "
        "area, not that the medicine did." + redesign
    )


def _no_estimate(row: dict[str, object]) -> str | None:
    """Why a disease's row decides nothing, in words; None when it has an interval."""
    n_treated, n_control = row.get("n_treated") or 0, row.get("n_control") or 0
    head = f"{row['label']}: no conclusion on {row['date']}"
    if not n_treated or not n_control:
        missing = [arm for arm, n in (("treated", n_treated), ("control", n_control)) if not n]
        return (
            f"{row['label']}: no estimate on {row['date']}: no "
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
    if row.get("ci_low") is None and row.get("estimator") == "within blocks":
        if (row.get("n_blocks") or 0) < 2:
            return (
                f"{head}: {row.get('n_blocks') or 0} block(s) with both arms graded since "
                "their first day; a blocked estimate needs at least 2 to build an interval"
            )
        return (
            f"{head}: every block's treated minus control difference is exactly the same, "
            "so there is no spread to build an interval from"
        )
    if row.get("ci_low") is None:
        return (
            f"{head}: every position changed by exactly the same amount, so there is no "
            "spread to build an interval from"
        )
    return None


def disease_label(disease: str, names: dict[str, str]) -> str:
    """`disease_3 (vein streak)`: the id the tables use, with its model card's name."""
    return f"{disease} ({names[disease]})" if disease in names else disease


def _direction(effect: float, confounding: str | None) -> str:
    """The call's words: about the medicine under a randomised design, about the areas
    otherwise."""
    if confounding is None:
        return "treated heal faster" if effect < 0 else "treated heal slower"
    faster = "faster" if effect < 0 else "slower"
    return f"the treated area heals {faster} than the control area"


def _verdict(
    row: dict[str, object],
    decided: dict[str, object] | None = None,
    confounding: str | None = None,
) -> str:
    """The disease's call: `decided`, its earliest look decided conclusive (a decision once
    made stands, whatever later looks or revisions say), else the latest look's."""
    if decided is not None:
        direction = _direction(decided["decided_effect"], confounding)
        when = f"decided on {decided['date']} (look {decided['days_since_start']}"
        if decided["decided_on"] != decided["date"]:
            when += f", in the report of {decided['decided_on']}"
        when += ")"
        what = f" (that is {confounding})" if confounding else ""
        return f"{direction}: conclusive{what}, valid under daily looks at five diseases; {when}"
    if row.get("revised") and row.get("sequential_significant"):
        return (
            "not conclusive: this look was decided before its photos changed; the revised "
            "always-valid interval excludes 0 but a revised look decides nothing (its error "
            "budget was spent when it was decided)"
        )
    if row["significant"]:
        return (
            "not conclusive yet: the day's 95 % interval excludes 0, but the always-valid "
            "one does not (daily looks and five diseases make single-day calls unreliable)"
        )
    return "no significant difference"


def _first_conclusive_looks(data: ReportData) -> dict[str, dict[str, object]]:
    """Per disease, its earliest look decided conclusive: the decision that stands."""
    decisions = effect_decisions(data)
    if "decision" not in decisions.columns:
        return {}
    first: dict[str, dict[str, object]] = {}
    for row in (
        decisions.filter(pl.col("decision").fill_null(False)).sort("date").iter_rows(named=True)
    ):
        first.setdefault(row["disease_type"], row)
    return first


def overall_answer(data: ReportData) -> str:
    """The report's answer in one sentence, from the same decisions as the headline."""
    decided = _first_conclusive_looks(data)
    named = {disease: data.disease_names.get(disease, disease) for disease in sorted(decided)}
    faster = [named[d] for d in named if decided[d]["decided_effect"] < 0]
    slower = [named[d] for d in named if decided[d]["decided_effect"] >= 0]
    confounding = _confounding(data)
    summary = effect_summary(data)
    graded = set(data.severity["disease_type"]) if data.severity.height else set()
    if summary.height:
        graded |= set(summary["disease_type"])
    open_count = len(graded - set(decided))
    parts = []
    subject = "treated plants heal" if confounding is None else "the treated area heals"
    than = "" if confounding is None else " than the control area"
    if faster:
        parts.append(f"{subject} faster from {', '.join(faster)}{than}")
    if slower:
        parts.append(f"{subject} slower from {', '.join(slower)}{than}")
    if confounding and (faster or slower):
        parts.append(f"that is {confounding}, which this design cannot tell apart")
    if open_count:
        rest = "the other" if parts else "any of the"
        parts.append(
            f"no conclusive answer yet for {rest} {open_count} disease{'s' * (open_count > 1)}"
        )
    if not parts:
        return "In short: no grades yet, so no answer."
    return "In short: " + "; ".join(parts) + "."


def summary_lines(data: ReportData) -> list[str]:
    """The report's headline: per disease, the decision under the always-valid rule, or in
    words why there is none (no numbers that could read as a conclusion)."""
    summary = effect_summary(data)
    first_decisions = _first_conclusive_looks(data)
    confounding = _confounding(data)
    lines = []
    for row in summary.iter_rows(named=True):
        decided = first_decisions.get(row["disease_type"])
        row["label"] = disease_label(row["disease_type"], data.disease_names)
        reason = _no_estimate(row)
        if reason is not None:
            lines.append(reason)
            continue
        line = (
            f"{row['label']}: {_verdict(row, decided, confounding)}. "
            f"Effect {row['effect']:+.3f} grade after "
            f"{row['days_since_start']} days; always-valid 95 % interval "
            f"[{row['sequential_ci_low']:+.3f}, {row['sequential_ci_high']:+.3f}]; "
            f"this day alone (not a decision): 95% CI [{row['ci_low']:+.3f}, "
            f"{row['ci_high']:+.3f}]"
        )
        if row.get("revised"):
            line += (
                f". Revised: this look's photos or grades changed after the report of "
                f"{row['decided_on']} decided it; its numbers are updated, its decision is not"
            )
        if row.get("estimator") == "within blocks":
            line += f"; within {row['n_blocks']} blocks"
            if row.get("n_outside_blocks"):
                line += (
                    f" ({row['n_outside_blocks']} position(s) graded that day are in a block "
                    "whose other arm was not, and are not in the estimate)"
                )
        if row["df"] < FEW_DF:
            df_name = "df (blocks − 1)" if row.get("estimator") == "within blocks" else "Welch df"
            line += (
                f". Few positions ({row['n_treated']} treated, {row['n_control']} control): "
                f"{df_name} {row['df']:.1f} is rounded down to {math.floor(row['df'])} for the "
                "t quantile, which widens the interval (conservative)"
            )
        lines.append(line)
    estimated = set(summary["disease_type"]) if summary.height else set()
    graded = set(data.severity["disease_type"]) if data.severity.height else set()
    graded |= set(data.trend["disease_type"]) if data.trend.height else set()
    for disease in sorted(graded - estimated):
        why = (
            f"treatment begins on {data.trend['treatment_start'][0]}, so no effect of the "
            "medicine is estimated yet"
            if data.trend.height
            else "no position has been graded on two days, so there is no change from a first "
            "day (baseline) to compare"
        )
        lines.append(f"{disease_label(disease, data.disease_names)}: no estimate yet: {why}")
    if not lines:
        lines.append("No estimate yet: no grades.")
    lines = _append_by_disease(lines, pre_trend_sentences(data))
    lines = _with_dropout(lines, data, summary)
    return _with_version_notes(lines, estimate_version_notes(data), data.disease_names)


def _with_dropout(lines: list[str], data: ReportData, summary: pl.DataFrame) -> list[str]:
    """Each disease's line with the positions that left its estimate, whatever a test of
    leavers against stayers says (dropout.dropout_sentence)."""
    levels = {
        r["disease_type"]: r.get("sequential_alpha") or ALPHA for r in summary.iter_rows(named=True)
    }
    sentences = {}
    for row in attrition(data).iter_rows(named=True):
        disease = row["disease_type"]
        last = data.last_grades.filter(pl.col("disease_type") == disease)
        sentence = dropout_sentence(row, last, levels.get(disease, ALPHA))
        if sentence:
            sentences[disease] = sentence
    return _append_by_disease(lines, sentences)


def _append_by_disease(lines: list[str], sentences: dict[str, str]) -> list[str]:
    """Each disease's line with its sentence appended, and a line of its own for a disease
    that has no line."""
    sentences = dict(sentences)
    out = []
    for line in lines:
        disease = line.split(" ", 1)[0].rstrip(":")
        out.append(f"{line}. {sentences.pop(disease)}" if disease in sentences else line)
    return out + [f"{disease}: {text}" for disease, text in sorted(sentences.items())]


def _with_version_notes(
    lines: list[str], notes: dict[str, str], names: dict[str, str]
) -> list[str]:
    """Each disease's line with the reason its estimate is not on the active grader version
    (a switch whose backfill has not covered the trial), and a line of its own for a disease
    that has no line."""
    noted = set()
    out = []
    for line in lines:
        disease = line.split(" ", 1)[0].rstrip(":")
        if disease in notes:
            line = f"{line}. {notes[disease]}"
            noted.add(disease)
        out.append(line)
    for disease in sorted(set(notes) - noted):
        out.append(f"{disease_label(disease, names)}: {notes[disease]}")
    return out
