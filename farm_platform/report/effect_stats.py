"""Decision rules over `treatment_effect` that stay honest under five diseases and daily looks
(the polars mirror of the dbt estimator is effect_frame.treatment_effect_frame).

The report reads `treatment_effect` every day for five diseases. Its per-row 95 % interval
is right for one disease on one pre-chosen day; a reader who looks daily at five diseases
and acts on the first "significant" is wrong far more often than 5 %. Two adjustments:

- Holm's step-down across the diseases of one day (`holm_significant`): the family-wise
  error over the five diseases of a single, pre-chosen day is at most 5 %.
- Alpha spending over looks (`sequential_*`, the report's headline): look k (k days after
  the trial's first date) spends alpha_k = 0.05 · 6 / (π² k²), and within a look the
  alpha_k is split evenly over the trial's diseases (Bonferroni; over those tested that
  day when more). The alphas over all looks sum to 0.05 (Σ 1/k² = π²/6), so by the union
  bound the chance that ANY disease on ANY day is called while the medicine does nothing
  is at most 5 %, however long the trial runs, whenever the reader stops, and whatever the
  correlation between days. This is a Bonferroni (union-bound) spending SEQUENCE over
  calendar looks, the 6/(π² k²) sequence of Darling & Robbins 1967. It is NOT the
  Lan–DeMets spending function: there is no information fraction, because the trial has
  no planned final information (length, positions) to take a fraction of, and it does not
  use the correlation between looks, which a Lan–DeMets boundary does (so it is
  conservative against one). The matching intervals (`sequential_ci_low/high`) hold for
  every disease and every day at once: an always-valid simultaneous confidence sequence.
- A look is decided ONCE, by the first report that shows it (`carry_decisions`): photos
  that arrive later, a re-grade or a grader switch's backfill revise its numbers, not its
  decision, so no look spends its alpha twice; a decision once made stands.

Every interval uses the Student-t quantile at floor(Welch df), as the dbt model does.
scipy is imported only when a rule is computed.
"""

from __future__ import annotations

import datetime as dt
import functools
import math

import polars as pl

ALPHA = 0.05
# The largest df the seed t_quantiles tabulates below its normal row (1000000).
_T_TABLE_MAX_DF = 200
_T_NORMAL_DF = 1_000_000
DECISION_REFERENCES = (
    "Darling, D. A. & Robbins, H. (1967). Confidence "
    "sequences for mean, variance, and median. PNAS 58(1), 66–68. Holm, S. (1979). A simple "
    "sequentially rejective multiple test procedure. Scand. J. Statist. 6(2), 65–70."
)


def spent_alpha(look: int, alpha: float = ALPHA) -> float:
    """The share of `alpha` spent at look `look` (≥ 1): alpha · 6 / (π² look²)."""
    return alpha * 6.0 / (math.pi**2 * look**2)


def tabulated_df(df: float | None) -> int | None:
    """The df whose quantile the dbt model uses: floor(df), 200 beyond 200 (conservative),
    the normal's above a million (the seed t_quantiles)."""
    if df is None or not math.isfinite(df) or df < 1:
        return None
    whole = math.floor(df)
    if whole >= _T_NORMAL_DF:
        return _T_NORMAL_DF
    return min(whole, _T_TABLE_MAX_DF)


# Cached: a report or a benchmark asks for the same few hundred (probability, df) pairs
# again and again, and scipy's ppf costs milliseconds a call.
@functools.lru_cache(maxsize=4096)
def _t_quantile(probability: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(probability, df))


def _p_value(effect: float | None, std_error: float | None, df: float | None) -> float | None:
    t_df = tabulated_df(df)
    if effect is None or std_error is None or t_df is None or not std_error > 0:
        return None
    from scipy import stats

    return float(2.0 * stats.t.sf(abs(effect) / std_error, t_df))


def holm(p_values: list[float | None], alpha: float = ALPHA) -> list[bool | None]:
    """Holm's step-down at family-wise level `alpha` over the p-values given (None: not
    tested, and no decision)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    decisions: list[bool | None] = [None if p is None else False for p in p_values]
    for rank, (p, index) in enumerate(tested):
        if p > alpha / (len(tested) - rank):
            break
        decisions[index] = True
    return decisions


def add_decisions(
    effect: pl.DataFrame, alpha: float = ALPHA, diseases: int | None = None
) -> pl.DataFrame:
    """`effect` (rows of treatment_effect: disease_type, date, days_since_start, effect,
    std_error, df) with p_value, holm_significant, sequential_alpha, sequential_ci_low,
    sequential_ci_high and sequential_significant added. A row without an interval (too
    few positions, or none in an arm) gets nulls and no decision.

    `diseases`: how many diseases the trial estimates (the report passes its graders'
    count). A look's alpha is split over max(diseases, those tested that day), so a
    disease whose look on a date is decided after the others' (its estimate starts later,
    e.g. a grader switch whose backfill completed) spends its own share, not a second
    share of a budget already split over the others."""
    extra = {
        "p_value": pl.Float64,
        "holm_significant": pl.Boolean,
        "sequential_alpha": pl.Float64,
        "sequential_ci_low": pl.Float64,
        "sequential_ci_high": pl.Float64,
        "sequential_significant": pl.Boolean,
    }
    if effect.is_empty():
        return effect.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in extra.items())
    frames = []
    for _, day in effect.sort("date", "disease_type").group_by("date", maintain_order=True):
        rows = day.to_dicts()
        p_values = [_p_value(r["effect"], r["std_error"], r["df"]) for r in rows]
        tested = max(sum(p is not None for p in p_values), diseases or 0)
        for row, p, holm_call in zip(rows, p_values, holm(p_values, alpha), strict=True):
            row["p_value"], row["holm_significant"] = p, holm_call
            row["sequential_alpha"] = row["sequential_ci_low"] = row["sequential_ci_high"] = None
            row["sequential_significant"] = None
            if p is None:
                continue
            # Bonferroni over the day's tested diseases at the look's spent alpha.
            level = spent_alpha(int(row["days_since_start"]), alpha) / tested
            half_width = _t_quantile(1.0 - level / 2.0, tabulated_df(row["df"])) * row["std_error"]
            row["sequential_alpha"] = level
            row["sequential_ci_low"] = row["effect"] - half_width
            row["sequential_ci_high"] = row["effect"] + half_width
            row["sequential_significant"] = (
                row["sequential_ci_low"] > 0 or row["sequential_ci_high"] < 0
            )
        frames.append(pl.DataFrame(rows, schema={**day.schema, **extra}))
    return pl.concat(frames)


# Columns a report adds to say what it decided, and when (carry_decisions).
LOCK_COLUMNS = {
    "decided_on": pl.Date,
    "decision": pl.Boolean,
    "decided_effect": pl.Float64,
    "revised": pl.Boolean,
}
_MOVED = 1e-9


def carry_decisions(
    current: pl.DataFrame,
    previous: pl.DataFrame | None,
    report_day: dt.date,
    previous_day: dt.date | None = None,
) -> pl.DataFrame:
    """`current` (add_decisions' rows) with each look's decision as first made.

    A look is a (disease, date) row. The report that first shows it decides it with the
    always-valid rule (`sequential_significant`) at its spent alpha; that decision stands in
    every later report (`decision`, `decided_on`: the report's day, `decided_effect`). A
    later report whose row moved (late photos, a re-grade, a grader switch's backfill)
    still computes the day's and the always-valid intervals of the new numbers, but they
    decide nothing: the look's alpha was spent when it was decided, and re-testing it would
    spend it again. `revised` marks those rows. `previous`: the previous report's table
    (this function's output; a table without its columns: every look it holds decided on
    `previous_day` as its `sequential_significant` said)."""
    if current.is_empty():
        return current.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in LOCK_COLUMNS.items())
    fresh = current.with_columns(
        decided_on=pl.lit(report_day, dtype=pl.Date),
        decision=pl.col("sequential_significant"),
        decided_effect=pl.col("effect"),
        revised=pl.lit(False),
    )
    if previous is None or previous.is_empty():
        return fresh
    before = previous
    if "decision" not in before.columns:
        before = before.with_columns(
            decided_on=pl.lit(previous_day, dtype=pl.Date),
            decision=pl.col("sequential_significant"),
            decided_effect=pl.col("effect"),
        )
    before = before.select(
        pl.col("disease_type").cast(pl.String),
        pl.col("date").cast(pl.Date),
        pl.col("decided_on").cast(pl.Date).alias("_decided_on"),
        pl.col("decision").cast(pl.Boolean).alias("_decision"),
        pl.col("decided_effect").cast(pl.Float64).alias("_decided_effect"),
        pl.col("effect").cast(pl.Float64).alias("_effect_before"),
        (pl.col("n_treated") + pl.col("n_control")).cast(pl.Int64).alias("_n_before"),
        pl.col("revised").cast(pl.Boolean).alias("_revised")
        if "revised" in previous.columns
        else pl.lit(False).alias("_revised"),
    )
    joined = fresh.join(before, on=["disease_type", "date"], how="left")
    seen = pl.col("_decided_on").is_not_null()
    moved = _moved(pl.col("effect"), pl.col("_effect_before")) | (
        (pl.col("n_treated") + pl.col("n_control")).cast(pl.Int64) != pl.col("_n_before")
    )
    return joined.with_columns(
        decided_on=pl.when(seen).then(pl.col("_decided_on")).otherwise(pl.col("decided_on")),
        decision=pl.when(seen).then(pl.col("_decision")).otherwise(pl.col("decision")),
        decided_effect=pl.when(seen)
        .then(pl.col("_decided_effect"))
        .otherwise(pl.col("decided_effect")),
        revised=pl.when(seen)
        .then(pl.col("_revised").fill_null(False) | moved.fill_null(True))
        .otherwise(pl.lit(False)),
    ).drop(c for c in joined.columns if c.startswith("_"))


def _moved(after: pl.Expr, before: pl.Expr) -> pl.Expr:
    return ((after - before).abs() > _MOVED) | (after.is_null() != before.is_null())


def moved_since(current: pl.DataFrame, previous: pl.DataFrame | None) -> pl.DataFrame:
    """The looks whose numbers changed since the previous report (carry_decisions' rows of
    both): disease, date, the effect and positions before and after, the calls of the day's
    interval and of the always-valid one before and after (those after decide nothing), and
    the decision that stands. A look the previous report had and this one has not is listed
    with no numbers after."""
    columns = {
        "disease_type": pl.String,
        "date": pl.Date,
        "effect_before": pl.Float64,
        "effect_after": pl.Float64,
        "positions_before": pl.Int64,
        "positions_after": pl.Int64,
        "day_call_before": pl.Boolean,
        "day_call_after": pl.Boolean,
        "always_valid_before": pl.Boolean,
        "always_valid_after": pl.Boolean,
        "decision": pl.Boolean,
        "decided_on": pl.Date,
    }
    if previous is None or previous.is_empty():
        return pl.DataFrame(schema=columns)

    def side(frame: pl.DataFrame, suffix: str) -> pl.DataFrame:
        return frame.select(
            pl.col("disease_type").cast(pl.String),
            pl.col("date").cast(pl.Date),
            pl.col("effect").cast(pl.Float64).alias(f"effect_{suffix}"),
            (pl.col("n_treated") + pl.col("n_control")).cast(pl.Int64).alias(f"positions_{suffix}"),
            pl.col("significant").cast(pl.Boolean).alias(f"day_call_{suffix}"),
            pl.col("sequential_significant").cast(pl.Boolean).alias(f"always_valid_{suffix}"),
            *(
                [pl.col("decision"), pl.col("decided_on").cast(pl.Date)]
                if suffix == "after"
                else []
            ),
        )

    after = (
        side(current, "after")
        if not current.is_empty()
        else pl.DataFrame(schema={c: t for c, t in columns.items() if not c.endswith("_before")})
    )
    both = side(previous, "before").join(after, on=["disease_type", "date"], how="left")
    changed = _moved(pl.col("effect_after"), pl.col("effect_before")) | (
        pl.col("positions_after") != pl.col("positions_before")
    ).fill_null(True)
    return both.filter(changed).select(list(columns)).sort("date", "disease_type")
