"""Disease dynamics of the synthetic farm (pure numpy).

Model
-----
Each position holds a fixed set of plant leaves (8..20; `leaf_id` 0..n-1, stable
across days). For every leaf and each of the 5 diseases there is a continuous
latent severity in [0, 3]; the true grade is the latent rounded to the nearest
integer (0 = healthy .. 3 = severe).

* Day 0: each (leaf, disease) is infected with probability `INFECTION_PROB`;
  infected latents start uniform in [0.5, 3], uninfected ones uniform in
  [0, `UNINFECTED_MAX`] (they round to grade 0).
* Each following day, for every (leaf, disease)::

      latent += DRIFT + Normal(0, NOISE_SD) - HEALING - (effect if treated else 0)
      latent  = clip(latent, 0, 3)

  With DRIFT == HEALING the control area has no trend in expectation, so any
  downward trend of the treated area relative to control is the medicine. The
  true effect is therefore `effect` latent units per day; the realised effect in
  mean *grade* is slightly smaller because latents are clipped at 0 (a healed
  leaf cannot heal further).

Randomness: each position draws from `numpy.random.default_rng((seed, index,
stream))`, so a position's world does not depend on how many other positions
exist, and the day-to-day noise is drawn before the effect is applied, so the
same seed with effect 0 and effect > 0 share their noise (common random
numbers, which makes effect comparisons sharp).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

NUM_DISEASES = 5
MAX_GRADE = 3
MAX_LEAVES = 20
MIN_LEAVES = 8

INFECTION_PROB = 0.5
UNINFECTED_MAX = 0.3
DRIFT = 0.05
HEALING = 0.05
NOISE_SD = 0.1

# Stream tags keep the random streams of one position apart.
STREAM_DYNAMICS = 0
STREAM_LAYOUT = 1
STREAM_DAY = 2


def position_rng(seed: int, position_index: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng((int(seed), int(position_index), int(stream), *map(int, extra)))


def simulate_latents(
    seed: int,
    position_index: int,
    days: int,
    treated: bool,
    effect: float,
    drift: float = 0.0,
    treatment_day: int = 0,
) -> np.ndarray:
    """Latent severities of one position, shape (days, n_leaves, NUM_DISEASES), in [0, 3].

    `drift`: extra progression per day at this position's place in the field (a gradient of
    light, heating or airflow; farm.FarmConfig.gradient), whichever arm it is in.
    `treatment_day`: the first day whose step carries the medicine's effect (0: every
    day's); the days before it are the pre-period (farm.FarmConfig.pre_days). The noise is
    drawn the same either way (common random numbers)."""
    rng = position_rng(seed, position_index, STREAM_DYNAMICS)
    n_leaves = int(rng.integers(MIN_LEAVES, MAX_LEAVES + 1))
    start = _day_zero_latents(rng, (n_leaves, NUM_DISEASES))
    latents = np.empty((max(days, 0), n_leaves, NUM_DISEASES))
    if days <= 0:
        return latents
    latents[0] = start
    for day in range(1, days):
        step = _daily_step(treated and day >= treatment_day, effect) + drift
        latents[day] = _next_day(latents[day - 1], step, rng)
    return latents


def _day_zero_latents(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    infected = rng.random(shape) < INFECTION_PROB
    return np.where(
        infected,
        rng.uniform(0.5, float(MAX_GRADE), shape),
        rng.uniform(0.0, UNINFECTED_MAX, shape),
    )


def _daily_step(treated: bool, effect: float) -> float:
    return DRIFT - HEALING - (effect if treated else 0.0)


def _next_day(latents: np.ndarray, step: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, NOISE_SD, latents.shape)
    return np.clip(latents + step + noise, 0.0, float(MAX_GRADE))


def population_effect(
    effect: float, days: int, leaves: int = 2_000_000, seed: int = 20261126
) -> np.ndarray:
    """The estimand: the expected difference in differences of mean TRUE grade, treated
    minus control, after 0..days-1 days (shape (days,); entry 0 is 0), over new farms.

    Leaves and diseases are independent and identically distributed given the arm, and
    which leaves a photo shows does not depend on their grades, so the expected change of a
    position's mean grade is one leaf's expected change, whatever the leaf count; the
    expectation over farms is that of one leaf. It is estimated from `leaves` simulated
    leaves that follow both arms' dynamics with the same start and noise (common random
    numbers: the Monte Carlo error of the difference is far below that of each arm, under
    1e-3 grade with the default count). Uses the simulator's own day-zero and daily-step
    code, so it follows any change to the dynamics.
    """
    rng = np.random.default_rng(seed)
    control = treated = _day_zero_latents(rng, (leaves,))
    result = np.zeros(max(days, 0))
    for day in range(1, days):
        noise_rng = np.random.default_rng((seed, day))
        control = _next_day(control, _daily_step(False, effect), noise_rng)
        noise_rng = np.random.default_rng((seed, day))
        treated = _next_day(treated, _daily_step(True, effect), noise_rng)
        result[day] = float(np.mean(grades_from_latents(treated) - grades_from_latents(control)))
    return result


def grades_from_latents(latents: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(latents), 0, MAX_GRADE).astype(np.int64)


def difference_in_differences(
    first: Mapping[str, np.ndarray],
    last: Mapping[str, np.ndarray],
    treated: Iterable[str],
) -> np.ndarray:
    """Per-disease DiD of mean values: (treated last-first) - (control last-first).

    `first`/`last` map position_id -> array (n_leaves, NUM_DISEASES) of that
    position's values on the first/last day; positions are the units (each
    position's leaf mean counts once). Negative means the treated area improved
    more than control. NaN where an area has no positions.
    """
    treated = set(treated)
    changes: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for position_id in first.keys() & last.keys():
        a, b = first[position_id], last[position_id]
        if len(a) == 0 or len(b) == 0:
            continue
        changes[position_id in treated].append(b.mean(axis=0) - a.mean(axis=0))
    if not changes[True] or not changes[False]:
        return np.full(NUM_DISEASES, np.nan)
    return np.mean(changes[True], axis=0) - np.mean(changes[False], axis=0)
