"""The reported treatment effect recovers the simulated one (through the real models)."""

import pytest

from farm_platform.dev.farm import reported_vs_true_effect
from farm_platform.dev.simulate import FarmConfig

pytestmark = pytest.mark.slow


def test_interval_covers_the_true_effect_and_finds_healing(tmp_path):
    result = reported_vs_true_effect(
        FarmConfig(positions=12, days=5, seed=3, effect=0.15), tmp_path
    )
    assert result.height == 5
    for row in result.iter_rows(named=True):
        # The truth is the realized difference in differences of the TRUE grades of the
        # same leaves: what a perfect grader would report.
        assert row["ci_low"] <= row["realized_did"] <= row["ci_high"], row
        assert row["effect"] < 0, row  # treated leaves heal faster
    assert result["significant"].sum() >= 3


def test_zero_effect_is_not_reported_as_significant(tmp_path):
    result = reported_vs_true_effect(FarmConfig(positions=12, days=5, seed=4, effect=0.0), tmp_path)
    assert result.height == 5
    for row in result.iter_rows(named=True):
        assert row["ci_low"] <= row["realized_did"] <= row["ci_high"], row
    assert not result["significant"].any(), result
