"""A report's data for the report tests (test_analytics_*.py, test_pre_period.py, test_ui.py):
two diseases, two arms, a design row, no warehouse.
"""

import datetime as dt

import polars as pl

from farm_platform.report.data import (
    ReportData,
)


def report_data(ungraded: list[str]) -> ReportData:
    day = dt.date(2026, 6, 3)
    effect = pl.DataFrame(
        {
            "disease_type": ["disease_0", "disease_1"],
            "date": [day, day],
            "days_since_start": [2, 2],
            "n_treated": [4, 4],
            "n_control": [4, 4],
            "effect": [-0.8, 0.05],
            "std_error": [0.1, 0.2],
            "df": [6.0, 6.0],
            "ci_low": [-1.05, -0.44],
            "ci_high": [-0.55, 0.54],
            "significant": [True, False],
        }
    )
    severity = pl.DataFrame(
        {
            "date": [day - dt.timedelta(days=d) for d in (2, 1, 0)] * 2,
            "area": ["control"] * 3 + ["treated"] * 3,
            "disease_type": ["disease_0"] * 6,
            "mean_grade": [2.0, 2.0, 2.1, 2.0, 1.6, 1.2],
        }
    )
    return ReportData(
        day=day,
        effect=effect,
        severity=severity,
        coverage=pl.DataFrame({"date": [day], "area": ["control"], "positions_missing": [1]}),
        ungraded=ungraded,
        models=pl.DataFrame({"model_id": ["disease_0_grader"], "version": ["v1"]}),
        agreement=pl.DataFrame(),
        design=design_row("randomised in blocks"),
    )


def design_row(design: str) -> dict:
    """The trial_design mart's row of a 8-position trial with that design."""
    blocked = "blocks" in design
    return {
        "design": design,
        "assignment": "randomised" if design.startswith("randomised") else "allocated",
        "randomisation_seed": 42 if design.startswith("randomised") else None,
        "blocks": 4 if blocked else 0,
        "positions": 8,
        "treated_positions": 4,
        "control_positions": 4,
    }
