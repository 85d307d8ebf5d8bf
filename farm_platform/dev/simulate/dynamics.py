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
    seed: int, position_index: int, days: int, treated: bool, effect: float
) -> np.ndarray:
    """Latent severities of one position, shape (days, n_leaves, NUM_DISEASES), in [0, 3]."""
    rng = position_rng(seed, position_index, STREAM_DYNAMICS)
    n_leaves = int(rng.integers(MIN_LEAVES, MAX_LEAVES + 1))
    infected = rng.random((n_leaves, NUM_DISEASES)) < INFECTION_PROB
    start = np.where(
        infected,
        rng.uniform(0.5, float(MAX_GRADE), (n_leaves, NUM_DISEASES)),
        rng.uniform(0.0, UNINFECTED_MAX, (n_leaves, NUM_DISEASES)),
    )
    latents = np.empty((max(days, 0), n_leaves, NUM_DISEASES))
    if days <= 0:
        return latents
    latents[0] = start
    step = DRIFT - HEALING - (effect if treated else 0.0)
    for day in range(1, days):
        noise = rng.normal(0.0, NOISE_SD, (n_leaves, NUM_DISEASES))
        latents[day] = np.clip(latents[day - 1] + step + noise, 0.0, float(MAX_GRADE))
    return latents


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
