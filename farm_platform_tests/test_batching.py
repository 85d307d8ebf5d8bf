"""Tiling new partitions into runs: exact cover, bounded size, few runs."""

import datetime as dt
import random

import pytest

from farm_platform.batching import plan_rectangles
from farm_platform.layout import ImageKey

POSITIONS = [f"P{i:03d}" for i in range(12)]
START = dt.date(2026, 6, 1)


def keys(positions, days):
    return [ImageKey(p, START + dt.timedelta(days=d)) for d in range(days) for p in positions]


def covered(rectangles):
    return sorted(key for rectangle in rectangles for key in rectangle.keys)


def test_a_full_farm_is_one_run_when_it_fits():
    rectangles = plan_rectangles(keys(POSITIONS, 5), POSITIONS, max_images=500)
    assert len(rectangles) == 1
    assert rectangles[0].size == 60
    assert covered(rectangles) == sorted(keys(POSITIONS, 5))


def test_runs_are_capped_and_still_cover_everything():
    rectangles = plan_rectangles(keys(POSITIONS, 10), POSITIONS, max_images=25)
    assert all(rectangle.size <= 25 for rectangle in rectangles)
    assert covered(rectangles) == sorted(keys(POSITIONS, 10))
    assert len(rectangles) == 5  # 2 days (24 images) per run


def test_wider_than_a_run_splits_positions():
    rectangles = plan_rectangles(keys(POSITIONS, 2), POSITIONS, max_images=5)
    assert max(rectangle.size for rectangle in rectangles) == 5
    assert covered(rectangles) == sorted(keys(POSITIONS, 2))


@pytest.mark.parametrize("seed", range(20))
def test_random_subsets_are_covered_exactly(seed):
    rng = random.Random(seed)
    everything = keys(POSITIONS, 15)
    subset = rng.sample(everything, rng.randint(1, len(everything)))
    rectangles = plan_rectangles(subset, POSITIONS, max_images=rng.randint(1, 40))
    assert covered(rectangles) == sorted(subset)  # no gaps, no extra partitions, no repeats


def test_unregistered_position_is_an_error():
    with pytest.raises(ValueError, match="P999"):
        plan_rectangles([ImageKey("P999", START)], POSITIONS, max_images=10)
