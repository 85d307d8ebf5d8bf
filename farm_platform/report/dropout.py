"""Dropout in the headline (issue 43): whenever positions left a disease's estimate, the
headline says how many per arm, how the leavers graded at their last photo against the
stayers of their arm (no significance gate: a low-powered test must not silence it), and
how different the leavers would have to be to overturn the call.

The sensitivity is a tipping-point, delta-adjusted analysis (ICH E9(R1), intercurrent
events): every leaver's change is carried forward from its last photo, the leavers of one
arm (treated if any left, else control) are then shifted by δ grade, and δ is moved away
from 0 until the carried-forward effect's call at the headline's level flips (an interval
that excluded 0 includes it, or the reverse). A small |δ| means the call rests on the
leavers having stopped changing when they left.
"""

from __future__ import annotations

import polars as pl

from farm_platform.report.attrition import welch_effect

# δ is searched on this grid (grade points), then refined by bisection: a grade scale of
# 0..3 bounds how different a leaver can be.
_STEP, _LARGEST, _REFINE = 0.05, 3.0, 12


def _changes(records: list[dict], area: str, shift: float) -> list[float]:
    return [
        r["last_change"] + (shift if r["left"] else 0.0)
        for r in records
        if r["area"] == area and r["last_date"] > r["first_date"]
    ]


def _called(records: list[dict], arm: str, delta: float, alpha: float) -> bool | None:
    """Whether the carried-forward effect's 1 − alpha interval excludes 0 with `arm`'s
    leavers shifted by `delta` (None: no interval)."""
    treated = _changes(records, "treated", delta if arm == "treated" else 0.0)
    control = _changes(records, "control", delta if arm == "control" else 0.0)
    effect = welch_effect(treated, control, alpha)
    if effect["ci_low"] is None:
        return None
    return effect["ci_low"] > 0 or effect["ci_high"] < 0


def _first_flip(records: list[dict], arm: str, sign: float, alpha: float) -> float | None:
    """The smallest δ ≥ 0 (times `sign`) whose call differs from δ = 0's, or None."""
    start = _called(records, arm, 0.0, alpha)
    low, steps = 0.0, round(_LARGEST / _STEP)
    for k in range(1, steps + 1):
        high = k * _STEP
        if _called(records, arm, sign * high, alpha) != start:
            for _ in range(_REFINE):
                middle = (low + high) / 2
                if _called(records, arm, sign * middle, alpha) != start:
                    high = middle
                else:
                    low = middle
            return sign * high
        low = high
    return None


def tipping_point(last: pl.DataFrame, alpha: float) -> dict[str, object] | None:
    """For one disease's last-grade rows (attrition.LAST_GRADES_SQL): the arm whose leavers
    are shifted, how many left, the call with every leaver carried forward, and δ, the
    smallest shift (grade points; + = the leavers ended sicker) that flips that call at
    level `alpha` (None: none within the grade scale). None when nobody left."""
    if last.is_empty():
        return None
    latest = last["latest_date"][0]
    records = [{**r, "left": r["last_date"] < latest} for r in last.iter_rows(named=True)]
    left = {
        arm: sum(r["left"] and r["area"] == arm for r in records) for arm in ("treated", "control")
    }
    if not any(left.values()):
        return None
    arm = "treated" if left["treated"] else "control"
    called = _called(records, arm, 0.0, alpha)
    if called is None:
        return {"arm": arm, "leavers": left[arm], "called": None, "delta": None}
    flips = [
        d for d in (_first_flip(records, arm, sign, alpha) for sign in (1.0, -1.0)) if d is not None
    ]
    delta = min(flips, key=abs) if flips else None
    return {"arm": arm, "leavers": left[arm], "called": called, "delta": delta}


def dropout_sentence(attrition_row: dict, last: pl.DataFrame, alpha: float) -> str | None:
    """The headline's words about positions that left one disease's estimate (None: none
    left): how many per arm, the leavers' last grades against the stayers', the tipping
    point."""
    if not attrition_row["treated_left"] and not attrition_row["control_left"]:
        return None
    text = (
        f"Positions left: {attrition_row['treated_left']} of "
        f"{attrition_row['treated_positions']} treated and {attrition_row['control_left']} of "
        f"{attrition_row['control_positions']} control are not in the latest estimate"
    )
    difference = attrition_row["leavers_minus_stayers"]
    if difference is not None:
        than = "sicker than" if difference > 0 else "healthier than" if difference else "as"
        text += (
            f"; at their last photo the leavers graded {difference:+.3f} against the stayers "
            f"of their arm that day ({than} those who stayed; no test decides whether this "
            "matters)"
        )
    tipping = tipping_point(last, alpha)
    if tipping is not None and tipping["called"] is not None:
        call = "an effect" if tipping["called"] else "no clear effect"
        leavers = f"the {tipping['leavers']} {tipping['arm']} leaver(s)"
        if tipping["delta"] is None:
            text += (
                f". Sensitivity: with every leaver's last change carried forward the data show "
                f"{call}, and no shift of {leavers} within the grade scale (±{_LARGEST:.0f}) "
                "changes that"
            )
        else:
            worse = "sicker" if tipping["delta"] > 0 else "healthier"
            text += (
                f". Sensitivity (tipping point): with every leaver's last change carried "
                f"forward the data show {call}; that flips if {leavers} had ended "
                f"{abs(tipping['delta']):.2f} grade {worse} than their last change"
            )
    return text
