"""A second grader version that is not the first: what a grader switch changes (issue 43
part 5). The fast path's first version grades perfectly (the true grades); the second
under-grades severe leaves and over-grades healthy ones (it shrinks grades towards the
middle: a position's mean grade becomes V2_SCALE · grade + V2_OFFSET) and is noisier (an
independent Normal(0, V2_NOISE_SD) error on each position-day mean). A switch backfilled
by it therefore moves the estimate: the effect shrinks by V2_SCALE and its interval widens,
which a switch between two perfect graders could never show."""

from __future__ import annotations

import numpy as np
import polars as pl

from .dynamics import MAX_GRADE

V2_SCALE = 0.8
V2_OFFSET = 0.25
V2_NOISE_SD = 0.15
# The noise's own stream, apart from the dynamics' (dynamics.STREAM_*).
_STREAM_V2 = 7


def graded_by_v2(position_day: pl.DataFrame, seed: int) -> pl.DataFrame:
    """`position_day` (true_position_day's rows) with mean_grade as the second version
    grades it, in [0, MAX_GRADE]; the same seed gives the same grades."""
    rng = np.random.default_rng((int(seed), _STREAM_V2))
    noise = rng.normal(0.0, V2_NOISE_SD, position_day.height)
    ordered = position_day.sort("position_id", "disease_type", "date")
    return ordered.with_columns(
        mean_grade=(V2_SCALE * pl.col("mean_grade") + V2_OFFSET + pl.Series(noise)).clip(
            0.0, float(MAX_GRADE)
        )
    )
