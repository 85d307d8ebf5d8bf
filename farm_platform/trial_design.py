"""How the positions of a trial are assigned to the arms (issue 43).

The founding design puts control and treated in two separate areas: an estimate from it is
the medicine plus any difference in progression between the areas (light, heating,
airflow), which no interval can see. The design this project recommends is a randomised
complete-block design: neighbouring positions form blocks, and within each block the arms
are drawn at random (half treated), with the seed recorded in the field map. Neighbours
share their part of any gradient, so a treated-minus-control difference within a block
removes it, and randomisation makes what is left average out.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from farm_platform.resources.field_map import (
    ALLOCATED,
    AREAS,
    RANDOMISED,
    FieldMapError,
    Position,
    parse_assignment,
)

# The designs a field map can describe, as the report and the marts name them.
RANDOMISED_BLOCKS = "randomised in blocks"
RANDOMISED_ONLY = "randomised"
ALLOCATED_BLOCKS = "allocated in blocks"
ALLOCATED_AREAS = "allocated (two areas)"
_HILBERT_ORDER = 16


def design_name(positions: list[Position]) -> str:
    """Which of the four designs the map describes; a map without `assignment` is the
    founding design (allocated by hand)."""
    assignments = {p.assignment for p in positions}
    randomised = any(a is not None and parse_assignment(a)[0] == RANDOMISED for a in assignments)
    blocked = bool(positions) and all(p.block is not None for p in positions)
    if randomised:
        return RANDOMISED_BLOCKS if blocked else RANDOMISED_ONLY
    return ALLOCATED_BLOCKS if blocked else ALLOCATED_AREAS


def _hilbert_index(x: int, y: int) -> int:
    """Position of cell (x, y) along a Hilbert curve over a 2^16 × 2^16 grid: cells close on
    the curve are close on the ground, so consecutive positions are neighbours."""
    index, side = 0, 1 << _HILBERT_ORDER
    s = side // 2
    while s > 0:
        rx, ry = int((x & s) > 0), int((y & s) > 0)
        index += s * s * ((3 * rx) ^ ry)
        if ry == 0:  # rotate the quadrant so the curve stays continuous
            if rx == 1:
                x, y = side - 1 - x, side - 1 - y
            x, y = y, x
        s //= 2
    return index


def neighbour_order(positions: list[Position]) -> list[Position]:
    """The positions along a Hilbert curve over their bounding box (ties by id)."""
    if not positions:
        return []
    lats = np.array([p.latitude for p in positions])
    # East-west degrees shrink with latitude: one scale for both axes keeps distances true.
    lons = np.array([p.longitude for p in positions]) * np.cos(np.radians(lats.mean()))
    span = max(float(np.ptp(lats)), float(np.ptp(lons))) or 1.0
    scale = ((1 << _HILBERT_ORDER) - 1) / span
    xs = np.rint((lons - lons.min()) * scale).astype(int)
    ys = np.rint((lats - lats.min()) * scale).astype(int)
    keys = [
        (_hilbert_index(int(x), int(y)), p.position_id)
        for x, y, p in zip(xs, ys, positions, strict=True)
    ]
    order = sorted(range(len(positions)), key=keys.__getitem__)
    return [positions[i] for i in order]


def treated_dose(positions: list[Position], dose: float | None) -> float:
    """The dose treated positions get: `dose`, else the map's one non-zero dose."""
    if dose is not None:
        if dose <= 0:
            raise FieldMapError(f"--dose {dose} must be above 0 ml per square foot")
        return dose
    doses = {p.dose_ml_per_sqft for p in positions if p.dose_ml_per_sqft > 0}
    if len(doses) != 1:
        raise FieldMapError(
            f"the field map has {len(doses)} different treated doses {sorted(doses)}; "
            "say which one the treated positions get with --dose"
        )
    return doses.pop()


def randomised_blocks(
    positions: list[Position], seed: int, block_size: int = 2, dose: float | None = None
) -> list[Position]:
    """A randomised complete-block assignment of the same positions: consecutive runs of
    `block_size` neighbours (`neighbour_order`) form blocks B001, B002, ...; within each,
    half the positions (chosen at random with `seed`; the odd one out of an odd block goes
    to an arm at random) are treated at `dose`, the rest control at 0. A last run of one
    position joins the block before it. Returned in the input's order."""
    if block_size < 2:
        raise FieldMapError(f"--block-size {block_size}: a block needs at least 2 positions")
    if len(positions) < 2:
        raise FieldMapError(f"{len(positions)} position(s): a trial needs at least 2")
    dose_ml = treated_dose(positions, dose)
    ordered = neighbour_order(positions)
    runs = [ordered[i : i + block_size] for i in range(0, len(ordered), block_size)]
    if len(runs) > 1 and len(runs[-1]) == 1:
        last = runs.pop()
        runs[-1] = runs[-1] + last
    rng = np.random.default_rng(seed)
    assignment = f"{RANDOMISED}:{seed}"
    assigned: dict[str, Position] = {}
    for number, run in enumerate(runs, start=1):
        treated_count = len(run) // 2 + int(len(run) % 2 == 1 and rng.random() < 0.5)
        treated = set(rng.permutation(len(run))[:treated_count].tolist())
        for i, position in enumerate(run):
            arm = AREAS[1] if i in treated else AREAS[0]
            assigned[position.position_id] = dataclasses.replace(
                position,
                area=arm,
                dose_ml_per_sqft=dose_ml if arm == AREAS[1] else 0.0,
                block=f"B{number:03d}",
                assignment=assignment,
            )
    return [assigned[p.position_id] for p in positions]


def allocated(positions: list[Position]) -> list[Position]:
    """The same map, marked as allocated by hand (the founding two-area design)."""
    return [dataclasses.replace(p, block=None, assignment=ALLOCATED) for p in positions]
