"""The treatment_effect mart in polars: a mirror of the dbt macro treatment_effect_estimate
for the effect benchmark's fast path (hundreds of simulated farms, no dbt build each)."""

from __future__ import annotations

import polars as pl

from farm_platform.report.effect_stats import _t_quantile, tabulated_df


def treatment_effect_frame(position_day: pl.DataFrame) -> pl.DataFrame:
    """The treatment_effect mart computed in polars from position-day means (position_id,
    area, date, disease_type, mean_grade, and optionally block): the same estimator as the
    dbt macro treatment_effect_estimate (own-first-day baseline; without blocks the Welch
    standard error and df, with a block on every position the mean of the within-block
    differences and n_blocks − 1 df; Student-t 95 % interval at the tabulated floor(df)),
    the same columns but `design`.

    Only the effect benchmark uses it, to score hundreds of farms without a dbt build each;
    farm_platform_tests/test_dbt_layouts.py shows it returns dbt's numbers.
    """
    own = ["disease_type", "position_id"]
    changes = with_block(position_day).with_columns(
        position_first_date=pl.col("date").min().over(own),
        change=pl.col("mean_grade") - pl.col("mean_grade").sort_by("date").first().over(own),
    )
    return effect_from_changes(changes)


def with_block(position_day: pl.DataFrame) -> pl.DataFrame:
    """`position_day` with a null `block` column where it has none (no blocked design)."""
    if "block" in position_day.columns:
        return position_day
    return position_day.with_columns(block=pl.lit(None, dtype=pl.String))


def effect_from_changes(changes: pl.DataFrame) -> pl.DataFrame:
    """The estimator of treatment_effect_frame over given changes: rows of disease_type,
    position_id, area, block, date, position_first_date and change (the position's change
    since position_first_date, or another per-position quantity such as a trend-adjusted
    change), the rows after each position's first date estimated per disease and date."""
    group = ["disease_type"]
    changes = changes.with_columns(first_date=pl.col("position_first_date").min().over(group))
    changes = changes.filter(pl.col("date") > pl.col("position_first_date"))
    blocked = pl.col("blocked")
    estimates = (
        _arm_estimates(changes, group)
        .join(_block_estimates(changes, group), on=[*group, "date"], how="left")
        .with_columns(
            estimator=pl.when(blocked).then(pl.lit("within blocks")).otherwise(pl.lit("welch")),
            effect=pl.when(blocked).then("block_effect").otherwise("welch_effect"),
            std_error=pl.when(blocked)
            .then((pl.col("block_var") / pl.col("n_blocks")).sqrt())
            .otherwise("welch_se"),
            # n_blocks − 1, undefined when every block differs by the same amount.
            df=pl.when(blocked)
            .then(pl.when(pl.col("block_var") > 0).then(pl.col("n_blocks") - 1.0))
            .otherwise("welch_df"),
            n_blocks=pl.when(blocked).then("n_blocks"),
            n_outside_blocks=pl.when(blocked).then("n_outside_blocks"),
        )
    )
    quantiles = [
        None if (t_df := tabulated_df(df)) is None else _t_quantile(0.975, t_df)
        for df in estimates["df"]
    ]
    return (
        estimates.with_columns(t_quantile=pl.Series(quantiles, dtype=pl.Float64))
        .with_columns(
            days_since_start=(pl.col("date") - pl.col("first_date")).dt.total_days(),
            ci_low=pl.col("effect") - pl.col("t_quantile") * pl.col("std_error"),
            ci_high=pl.col("effect") + pl.col("t_quantile") * pl.col("std_error"),
        )
        .with_columns(
            significant=((pl.col("ci_low") > 0) | (pl.col("ci_high") < 0)).fill_null(False)
        )
        .select(*group, *EFFECT_FRAME_COLUMNS)
        .sort(*group, "date")
    )


EFFECT_FRAME_COLUMNS = (
    "date",
    "first_date",
    "days_since_start",
    "n_treated",
    "n_control",
    "n_late_baseline",
    "mean_change_treated",
    "mean_change_control",
    "effect",
    "std_error",
    "df",
    "t_quantile",
    "ci_low",
    "ci_high",
    "significant",
    "estimator",
    "n_blocks",
    "n_outside_blocks",
)


def _arm_estimates(changes: pl.DataFrame, group: list[str]) -> pl.DataFrame:
    """Per group and date: positions and mean change per arm, and the Welch estimate."""
    treated, control = pl.col("area") == "treated", pl.col("area") == "control"
    return (
        changes.group_by(*group, "date", "first_date")
        .agg(
            n_treated=treated.sum().cast(pl.Int64),
            n_control=control.sum().cast(pl.Int64),
            n_late_baseline=(pl.col("position_first_date") > pl.col("first_date"))
            .sum()
            .cast(pl.Int64),
            blocked=pl.col("block").is_not_null().all(),
            mean_change_treated=pl.col("change").filter(treated).mean(),
            mean_change_control=pl.col("change").filter(control).mean(),
            var_treated=pl.col("change").filter(treated).var(ddof=1),
            var_control=pl.col("change").filter(control).var(ddof=1),
        )
        .with_columns(
            welch_effect=pl.col("mean_change_treated") - pl.col("mean_change_control"),
            se2_treated=pl.col("var_treated") / pl.col("n_treated"),
            se2_control=pl.col("var_control") / pl.col("n_control"),
        )
        .with_columns(se2=pl.col("se2_treated") + pl.col("se2_control"))
        .with_columns(
            welch_se=pl.col("se2").sqrt(),
            welch_df=pl.when(pl.col("se2") > 0).then(
                pl.col("se2") ** 2
                / (
                    pl.col("se2_treated") ** 2 / (pl.col("n_treated") - 1)
                    + pl.col("se2_control") ** 2 / (pl.col("n_control") - 1)
                )
            ),
        )
    )


def _block_estimates(changes: pl.DataFrame, group: list[str]) -> pl.DataFrame:
    """Per group and date: the mean over blocks of treated minus control mean change within
    each block with both arms, its standard error and df, and the positions left outside."""
    treated, control = pl.col("area") == "treated", pl.col("area") == "control"
    return (
        changes.filter(pl.col("block").is_not_null())
        .group_by(*group, "date", "block")
        .agg(
            positions=pl.len().cast(pl.Int64),
            difference=pl.col("change").filter(treated).mean()
            - pl.col("change").filter(control).mean(),
        )
        .group_by(*group, "date")
        .agg(
            n_blocks=pl.col("difference").count().cast(pl.Int64),
            n_outside_blocks=pl.col("positions")
            .filter(pl.col("difference").is_null())
            .sum()
            .cast(pl.Int64),
            block_effect=pl.col("difference").mean(),
            block_var=pl.col("difference").var(ddof=1),
        )
    )
