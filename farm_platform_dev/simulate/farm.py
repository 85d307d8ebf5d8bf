"""The synthetic farm: configuration, field map, photos with ground truth, truth tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

from farm_platform.layout import ImageKey
from farm_platform.ml.registry import DISEASE_TYPES
from farm_platform.resources.field_map import AREAS, RANDOMISED, Position

from . import dynamics, render
from .dynamics import MAX_GRADE, MAX_LEAVES, NUM_DISEASES

assert len(DISEASE_TYPES) == NUM_DISEASES, "the simulator grades every disease the graders know"
GRADE_COLUMNS = tuple(f"grade_{disease}" for disease in DISEASE_TYPES)
TRAINING_DATE = dt.date(2026, 1, 1)
HEALTHY_LEAF_FRACTION = 0.2

# Where the simulated farm lies; positions are on a grid, the treated block east of control.
_ORIGIN_LAT = 51.98
_ORIGIN_LON = 5.66
_GRID_COLUMNS = 10
_STEP_LAT = 0.0002
_STEP_LON = 0.0003
_AREA_GAP_LON = 0.004

_LEAVES_SCHEMA = {
    "position_id": pl.Utf8,
    "date": pl.Date,
    "leaf_id": pl.Int64,
    "x0": pl.Float64,
    "y0": pl.Float64,
    "x1": pl.Float64,
    "y1": pl.Float64,
    **{column: pl.Int64 for column in GRADE_COLUMNS},
}
_EFFECT_SCHEMA = {
    "disease_type": pl.Utf8,
    "true_effect_per_day": pl.Float64,
    "realized_did": pl.Float64,
    "realized_effect_per_day": pl.Float64,
    "first_date": pl.Date,
    "last_date": pl.Date,
    "control_positions": pl.Int64,
    "treated_positions": pl.Int64,
}


@dataclass(frozen=True)
class FarmConfig:
    positions: int = 8
    days: int = 3
    start_date: dt.date = dt.date(2026, 6, 1)
    seed: int = 0
    # True treatment effect: extra drop of latent severity per day for treated leaves.
    effect: float = 0.15
    dose_ml_per_sqft: float = 120.0
    image_size: int = 256
    # How arms are assigned to the same locations (LAYOUTS): the founding two areas (first
    # half control, west; the rest treated, east), at random, or at random within pairs of
    # neighbours (the recommended design).
    layout: str = "two-areas"
    # Extra progression of disease, latent units per day, that the WEST area's centre has
    # over the east's, linear in longitude across the field: under two areas it reads as
    # the medicine working (`gradient` per day) while the medicine does nothing.
    gradient: float = 0.0
    # Days photographed before treatment begins (the pre-period, FARM_TREATMENT_START): of
    # `days`, the first `pre_days` carry no effect; treatment begins on dates[pre_days].
    pre_days: int = 0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not one of {LAYOUTS}")
        if self.pre_days < 0 or (self.pre_days and self.pre_days >= self.days):
            raise ValueError(
                f"pre_days={self.pre_days} must be from 0 to days - 1 ({self.days - 1}): "
                "treatment has to begin within the simulated days"
            )

    @property
    def treatment_start(self) -> dt.date | None:
        """The day treatment begins, or None without a pre-period."""
        return self.dates[self.pre_days] if self.pre_days else None

    @property
    def dates(self) -> list[dt.date]:
        return [self.start_date + dt.timedelta(days=d) for d in range(self.days)]


@dataclass(frozen=True)
class LeafTruth:
    leaf_id: int
    x0: float
    y0: float
    x1: float
    y1: float
    grades: tuple[int, int, int, int, int]


@dataclass(frozen=True)
class SimulatedImage:
    key: ImageKey
    png: bytes
    leaves: tuple[LeafTruth, ...]


LAYOUTS = ("two-areas", "randomised", "blocks")


def position_id(index: int) -> str:
    return f"P{index:03d}"


def control_count(positions: int) -> int:
    """First half control (the larger half when odd), the rest treated."""
    return (positions + 1) // 2


def field_map(config: FarmConfig) -> list[Position]:
    """Positions P000.. on the locations of `two_area_map`, their arms as `config.layout`
    assigns them with `config.seed`: two areas (the founding design, no design columns),
    randomised (the same counts per arm, permuted), or randomised within blocks of two
    neighbours (trial_design.randomised_blocks, what `farm-platform trial design` writes)."""
    positions = two_area_map(config)
    if config.layout == "randomised":
        arms = np.random.default_rng((config.seed, 0xB10C)).permutation([p.area for p in positions])
        dose = float(config.dose_ml_per_sqft)
        return [
            dataclasses.replace(
                p,
                area=str(arm),
                dose_ml_per_sqft=dose if arm == AREAS[1] else 0.0,
                assignment=f"{RANDOMISED}:{config.seed}",
            )
            for p, arm in zip(positions, arms, strict=True)
        ]
    if config.layout == "blocks":
        from farm_platform.trial_design import randomised_blocks

        return randomised_blocks(positions, config.seed, 2, float(config.dose_ml_per_sqft))
    return positions


def two_area_map(config: FarmConfig) -> list[Position]:
    """Positions P000.. on a grid; the first half is control (dose 0), the rest treated."""
    n_control = control_count(config.positions)
    result = []
    for index in range(config.positions):
        treated = index >= n_control
        local = index - n_control if treated else index
        row, col = divmod(local, _GRID_COLUMNS)
        result.append(
            Position(
                position_id=position_id(index),
                area=AREAS[1] if treated else AREAS[0],
                latitude=round(_ORIGIN_LAT + row * _STEP_LAT, 6),
                longitude=round(
                    _ORIGIN_LON + col * _STEP_LON + (_AREA_GAP_LON if treated else 0.0), 6
                ),
                dose_ml_per_sqft=float(config.dose_ml_per_sqft) if treated else 0.0,
            )
        )
    return result


def _truth(layout: render.Layout, grades: np.ndarray) -> tuple[LeafTruth, ...]:
    return tuple(
        LeafTruth(leaf.leaf_id, *box, tuple(int(g) for g in leaf_grades))  # type: ignore[arg-type]
        for leaf, box, leaf_grades in zip(
            layout.leaves, render.leaf_boxes(layout), grades, strict=True
        )
    )


def gradient_drift(config: FarmConfig) -> list[float]:
    """Per position, the extra daily progression `config.gradient` puts at its location:
    +gradient/2 at the west (control) area's centre, -gradient/2 at the east's, linear in
    longitude in between and beyond."""
    locations = two_area_map(config)
    if not config.gradient or len(locations) < 2:
        return [0.0] * len(locations)
    west = [p.longitude for p in locations if p.area == AREAS[0]]
    east = [p.longitude for p in locations if p.area == AREAS[1]]
    centre_west, centre_east = float(np.mean(west)), float(np.mean(east))
    middle = (centre_west + centre_east) / 2
    return [
        -config.gradient * (p.longitude - middle) / (centre_east - centre_west) for p in locations
    ]


def _position_worlds(config: FarmConfig) -> list[tuple[render.Layout, np.ndarray]]:
    """Per position: its photo layout and the true grades of the leaves in view, shape
    (days, leaves in view, NUM_DISEASES)."""
    treated = [p.area == AREAS[1] for p in field_map(config)]
    drift = gradient_drift(config)
    worlds = []
    for index in range(config.positions):
        latents = dynamics.simulate_latents(
            config.seed,
            index,
            config.days,
            treated[index],
            config.effect,
            drift[index],
            treatment_day=config.pre_days,
        )
        layout = render.plan_layout(
            dynamics.position_rng(config.seed, index, dynamics.STREAM_LAYOUT),
            latents.shape[1],
            config.image_size,
        )
        # Leaves that did not fit in the photo are out of view for the whole trial.
        ids = np.array([leaf.leaf_id for leaf in layout.leaves], dtype=np.int64)
        worlds.append((layout, dynamics.grades_from_latents(latents)[:, ids, :]))
    return worlds


def simulate_truth(config: FarmConfig) -> Iterator[tuple[ImageKey, tuple[LeafTruth, ...]]]:
    """The leaves in view and their true grades for every photo of `simulate_images`, in the
    same order, without rendering: what a perfect detector and graders would record (for
    `truth_frames`, and the effect benchmark's fast path)."""
    worlds = _position_worlds(config)
    for day, date in enumerate(config.dates):
        for index, (layout, grades) in enumerate(worlds):
            yield ImageKey(position_id(index), date), _truth(layout, grades[day])


def true_position_day(config: FarmConfig) -> pl.DataFrame:
    """Per position, date and disease_type: the mean TRUE grade of the leaves in view, with
    the position's area and block (null without blocks); the input the treatment_effect
    estimator reads, as perfect models would record it (no rendering and no leaf boxes:
    the effect benchmark's fast path). A position with no leaf in view has no rows, as
    `truth_frames` has none for it."""
    columns: dict[str, list] = {
        c: [] for c in ("position_id", "area", "block", "date", "disease_type", "mean_grade")
    }
    positions = field_map(config)
    for position, (_, grades) in zip(positions, _position_worlds(config), strict=True):
        if grades.shape[1] == 0:
            continue
        means = grades.mean(axis=1)  # (days, diseases)
        for day, date in enumerate(config.dates):
            for disease, value in zip(DISEASE_TYPES, means[day], strict=True):
                columns["position_id"].append(position.position_id)
                columns["area"].append(position.area)
                columns["block"].append(position.block)
                columns["date"].append(date)
                columns["disease_type"].append(disease)
                columns["mean_grade"].append(float(value))
    schema = {
        "position_id": pl.Utf8,
        "area": pl.Utf8,
        "block": pl.Utf8,
        "date": pl.Date,
        "disease_type": pl.Utf8,
        "mean_grade": pl.Float64,
    }
    return pl.DataFrame(columns, schema=schema).sort("disease_type", "position_id", "date")


def simulate_images(config: FarmConfig) -> Iterator[SimulatedImage]:
    """Every position on every day, day by day (the order a drone would fly); deterministic."""
    worlds = _position_worlds(config)
    for day, date in enumerate(config.dates):
        for index, (layout, grades) in enumerate(worlds):
            rng = dynamics.position_rng(config.seed, index, dynamics.STREAM_DAY, day)
            pixels = render.render_layout(layout, grades[day], rng)
            yield SimulatedImage(
                key=ImageKey(position_id(index), date),
                png=render.encode_png(pixels),
                leaves=_truth(layout, grades[day]),
            )


def render_training_images(
    seed: int, count: int, image_size: int = 256
) -> Iterator[SimulatedImage]:
    """Independent random photos for training/evaluating the detector and graders.

    Leaf count is uniform in 0..20 (a crowded photo may fit a few fewer), every
    grade of every disease is drawn independently and uniformly from 0..3,
    except that a fifth of the leaves are entirely healthy.
    Image i depends only on (seed, i), so a larger `count` extends a smaller one.
    Keys are `T000000`, `T000001`, ... on TRAINING_DATE.
    """
    for i in range(count):
        rng = np.random.default_rng((int(seed), 0x7EA1, i))
        layout = render.plan_layout(rng, int(rng.integers(0, MAX_LEAVES + 1)), image_size)
        grades = rng.integers(0, MAX_GRADE + 1, (len(layout.leaves), NUM_DISEASES))
        # Some leaves are wholly healthy so the detector also learns plain green leaves
        # (the farm has many); grade 0 then has ~40 % and grades 1..3 ~20 % each.
        grades[rng.random(len(layout.leaves)) < HEALTHY_LEAF_FRACTION] = 0
        pixels = render.render_layout(layout, grades, rng)
        yield SimulatedImage(
            key=ImageKey(f"T{i:06d}", TRAINING_DATE),
            png=render.encode_png(pixels),
            leaves=_truth(layout, grades),
        )


def truth_frames(
    records: Iterable[tuple[ImageKey, tuple[LeafTruth, ...]]], config: FarmConfig
) -> dict[str, pl.DataFrame]:
    """`ground_truth_frames` on (key, leaves) pairs, so callers need not keep the PNGs."""
    rows: list[dict[str, object]] = []
    per_day: dict[dt.date, dict[str, np.ndarray]] = {}
    for key, leaves in records:
        grades = np.array([leaf.grades for leaf in leaves], dtype=np.int64).reshape(
            -1, NUM_DISEASES
        )
        per_day.setdefault(key.date, {})[key.position_id] = grades
        for leaf in leaves:
            row: dict[str, object] = {
                "position_id": key.position_id,
                "date": key.date,
                "leaf_id": leaf.leaf_id,
                "x0": leaf.x0,
                "y0": leaf.y0,
                "x1": leaf.x1,
                "y1": leaf.y1,
            }
            row.update(zip(GRADE_COLUMNS, leaf.grades, strict=True))
            rows.append(row)
    leaves_frame = pl.DataFrame(rows, schema=_LEAVES_SCHEMA, orient="row")

    positions = field_map(config)
    treated = {p.position_id for p in positions if p.area == AREAS[1]}
    control = {p.position_id for p in positions if p.area == AREAS[0]}
    first_date = min(per_day) if per_day else config.start_date
    last_date = max(per_day) if per_day else config.start_date
    first = per_day.get(first_date, {})
    last = per_day.get(last_date, {})
    known = (treated | control) & first.keys() & last.keys()
    did = dynamics.difference_in_differences(
        {p: first[p] for p in known}, {p: last[p] for p in known}, treated
    )
    span = (last_date - first_date).days
    effect_frame = pl.DataFrame(
        {
            "disease_type": list(DISEASE_TYPES),
            "true_effect_per_day": [float(config.effect)] * NUM_DISEASES,
            "realized_did": [float(x) for x in did],
            "realized_effect_per_day": [
                float(-x / span) if span > 0 else float("nan") for x in did
            ],
            "first_date": [first_date] * NUM_DISEASES,
            "last_date": [last_date] * NUM_DISEASES,
            "control_positions": [len(known & control)] * NUM_DISEASES,
            "treated_positions": [len(known & treated)] * NUM_DISEASES,
        },
        schema=_EFFECT_SCHEMA,
    )
    return {"leaves": leaves_frame, "effect": effect_frame}


def ground_truth_frames(
    images: Iterable[SimulatedImage], config: FarmConfig
) -> dict[str, pl.DataFrame]:
    """True leaves and true/realised treatment effect of a set of simulated photos.

    "leaves": one row per leaf per photo: position_id, date, leaf_id, x0, y0, x1,
    y1, grade_disease_0 .. grade_disease_4.

    "effect": one row per disease_type:
    * true_effect_per_day: config.effect, the extra daily drop of latent severity
      of treated leaves (positive = the medicine speeds up healing);
    * realized_did: difference-in-differences of mean TRUE grade, positions as
      units: mean over treated positions of (last-day mean - first-day mean)
      minus the same over control. Negative when treated leaves healed more;
    * realized_effect_per_day: -realized_did / days between first and last day,
      on the same scale and sign as true_effect_per_day (a little smaller than
      it, because healed leaves are clipped at grade 0);
    * first_date, last_date, control_positions, treated_positions: what it was
      computed from (positions present on both days).
    """
    return truth_frames(((image.key, image.leaves) for image in images), config)
