"""The effect benchmark's trial events (issues 27 and 43), run by `effect_recovery.py --cases`:
a grader switch (all five graders, to a second version that is biased and noisier) scored
under three rules, photos that arrive late, and positions that leave the trial."""

from __future__ import annotations

import datetime as dt

import polars as pl

from farm_platform.report.effect_frame import treatment_effect_frame
from farm_platform.report.effect_stats import add_decisions
from farm_platform_dev.simulate import DISEASE_TYPES, FarmConfig, true_position_day
from farm_platform_dev.simulate.grader_versions import graded_by_v2

# Trial events (issue 27), each scored through the report's rules as reports are made day
# by day: every report sees the rows visible that morning, decides the looks it is the
# first to show (effect_stats.carry_decisions), and keeps the earlier decisions.
CASES = (
    "plain",
    "switch-restart",
    "switch-no-backfill",
    "switch-backfill",
    "late-photos",
    "dropout-informative",
    "dropout-random",
)
# Every grader is switched, to a second version that is biased and noisier
# (dev/simulate/grader_versions.py): the rule's cases differ, and a backfill shows.
SWITCHED = DISEASE_TYPES


def _visible(case: str, rows: pl.DataFrame, report: int, days: int, seed: int) -> pl.DataFrame:
    """The position-day rows a report `report` days after the trial's first day sees under
    `case` (rows carry `day`: days since the first day)."""
    seen = rows.filter(pl.col("day") <= report)
    switch, backfilled = days // 2, days // 2 + 2
    switched = pl.col("disease_type").is_in(SWITCHED)
    by_v2 = seen.with_columns(
        mean_grade=pl.when(switched).then("mean_grade_v2").otherwise("mean_grade")
    )
    if case == "switch-restart" and report >= switch:
        # Today's behaviour before issue 27: only the new version's grades (from the
        # switch on) count, as if the trial had begun at the switch.
        return by_v2.filter(~switched | (pl.col("day") >= switch))
    if case == "switch-no-backfill" and report >= switch:
        # The rule: the old version keeps the estimate; it graded nothing after the switch.
        return seen.filter(~switched | (pl.col("day") < switch))
    if case == "switch-backfill" and switch <= report < backfilled:
        # Until the backfill completes, the old version's rows before the switch...
        return seen.filter(~switched | (pl.col("day") < switch))
    if case == "switch-backfill" and report >= backfilled:
        # ... then the new version's grades of every day.
        return by_v2
    if case == "late-photos" and report < days:
        # Half of each day's photos (a random half per day) arrive after its report.
        late = (pl.col("position_id") + pl.col("day").cast(pl.String)).hash(seed) % 2 == 0
        return seen.filter((pl.col("day") < report) | ~late)
    return seen


def _dropped(case: str, rows: pl.DataFrame, days: int, positions: int, seed: int) -> set[str]:
    """Positions that stop being photographed from mid-trial, one in twelve: those healing
    worst so far (the largest rise of mean grade, over the diseases, from the first day to
    the day before) or random ones."""
    if not case.startswith("dropout"):
        return set()
    count, start = max(1, positions // 12), days // 2
    grade = pl.col("mean_grade")
    change = (
        rows.filter(pl.col("day").is_in([0, start - 1]))
        .sort("day")
        .group_by("position_id", "disease_type")
        .agg((grade.last() - grade.first()).alias("change"))
        .group_by("position_id")
        .agg(pl.col("change").mean())
        .sort("position_id")
    )
    if case == "dropout-informative":
        return set(change.sort("change", descending=True)["position_id"][:count])
    return set(change.sample(count, seed=seed)["position_id"])


# Each case is scored in one pass instead of report by report (60 looks × 1,000 seeds would
# cost hours a case): a look's estimate uses only its own day's rows and each position's
# first day, so the rows every look's first report saw can stand in one frame and be
# decided at once (`late_photos_first_reported`), and the numbers come from the last
# report's rows. `case_effects` checks this against the report-by-report scoring on the
# first seeds of every run, and stops if they differ.
CHECKED_SEEDS = 3


def farm_rows(config: FarmConfig) -> pl.DataFrame:
    """One simulated farm's true position-day rows, with `day`: days since its first day.
    Computed once per seed and shared by every case (the simulation is most of the cost)."""
    truth = true_position_day(config)
    v2 = graded_by_v2(truth, config.seed).select(
        "position_id", "disease_type", "date", mean_grade_v2="mean_grade"
    )
    return truth.join(v2, on=["position_id", "disease_type", "date"]).with_columns(
        day=(pl.col("date") - truth["date"].min()).dt.total_days()
    )


def last_reported(case: str, rows: pl.DataFrame, config: FarmConfig) -> pl.DataFrame:
    """The rows the last report sees (late photos: one more report after the last day)."""
    if case == "late-photos":
        return rows
    return _visible(case, rows, config.days - 1, config.days, config.seed)


def late_photos_first_reported(rows: pl.DataFrame, config: FarmConfig) -> pl.DataFrame:
    """Under late photos, every look's day as the first report that showed it saw it (its
    on-time half), with each position's first day. Only late photos move a day after its
    report; in the other cases a day's rows are final when first shown (a backfill shows
    the switched days only once done), so the last report's rows decide every look."""
    first_days = rows.filter(pl.col("day") == pl.col("day").min().over("position_id"))
    own_days = [
        _visible("late-photos", rows, report, config.days, config.seed).filter(
            pl.col("day") == report
        )
        for report in range(1, config.days)
    ]
    return pl.concat([first_days, *own_days])


def _decided(view: pl.DataFrame) -> pl.DataFrame:
    return add_decisions(treatment_effect_frame(view.drop("day", "mean_grade_v2")), diseases=5)


def case_effects(
    case: str, rows: pl.DataFrame, config: FarmConfig, estimand: list[float]
) -> pl.DataFrame:
    """The last report's rows of one simulated farm (`farm_rows`) under `case`, with each
    look's decision as its first report made it, beside the estimand of each row's day
    since the trial began."""
    from farm_platform.report.effect_stats import carry_decisions

    start = rows["date"].min()
    dropped = _dropped(case, rows, config.days, config.positions, config.seed)
    rows = rows.filter(
        ~(pl.col("position_id").is_in(list(dropped)) & (pl.col("day") >= config.days // 2))
    )
    looks = ["disease_type", "date"]
    last = _decided(last_reported(case, rows, config))
    first = last
    if case == "late-photos":
        first = _decided(late_photos_first_reported(rows, config))
    if case == "switch-backfill":
        # Looks before the switch were decided on the old version's grades; the others were
        # first shown once the new version had backfilled every day.
        cut = pl.col("date") < start + dt.timedelta(days=config.days // 2)
        first = pl.concat([_decided(rows).filter(cut), last.filter(~cut)])
    decided = last.join(
        first.select(*looks, decision="sequential_significant", decided_effect="effect"),
        on=looks,
        how="left",
    )
    if config.seed < CHECKED_SEEDS:
        reports = None
        # One report per day, and one more for the photos of the last day that came late.
        for report in range(1, config.days + 1):
            seen = _visible(case, rows, min(report, config.days - 1), config.days, config.seed)
            if case == "late-photos" and report == config.days:
                seen = rows
            reports = carry_decisions(_decided(seen), reports, start + dt.timedelta(days=report))
        key = [*looks, "effect", "decision", "decided_effect"]
        if not reports.select(key).sort(looks).equals(decided.select(key).sort(looks)):
            raise SystemExit(f"{case}: one pass differs from the reports (seed {config.seed})")
    return decided.with_columns(
        seed=pl.lit(config.seed),
        true_effect=pl.lit(config.effect),
        estimand=((pl.col("date") - start).dt.total_days()).map_elements(
            lambda k: estimand[k], return_dtype=pl.Float64
        ),
    )
