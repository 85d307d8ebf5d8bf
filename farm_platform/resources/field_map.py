"""The field map, `positions.csv`: which positions exist, in which area, at what dose, and
(optionally, DESIGN.md revised 2026-12-06) in which block and how the arms were assigned.

The sensor reads it to decide which positions are known, the `positions` asset copies it
into the warehouse table dbt reads, and `FieldMapResource` hands it to both code locations
(`$FARM_FIELD_MAP`, else the shipped map dbt_project/seeds/positions.csv).
"""

from __future__ import annotations

import csv
import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from dagster import ConfigurableResource
from pydantic import Field

from farm_platform.config import DEFAULT_FIELD_MAP_PATH
from farm_platform.ml.model_store import write_text_atomic

FIELD_MAP_COLUMNS = ("position_id", "area", "latitude", "longitude", "dose_ml_per_sqft")
# Optional, after the required ones: positions compared within a block, and how the arms
# were assigned (`randomised:<seed>` or `allocated`; a map without it is the founding
# design, two areas allocated by hand).
DESIGN_COLUMNS = ("block", "assignment")
AREAS = ("control", "treated")
ALLOCATED = "allocated"
RANDOMISED = "randomised"


class FieldMapError(ValueError):
    """The field map file is malformed."""


@dataclass(frozen=True)
class Position:
    position_id: str
    area: str
    latitude: float
    longitude: float
    dose_ml_per_sqft: float
    block: str | None = None
    assignment: str | None = None


def parse_assignment(value: str) -> tuple[str, int | None]:
    """`randomised:<seed>` -> ("randomised", seed); `allocated` -> ("allocated", None)."""
    kind, _, seed = value.partition(":")
    if kind == ALLOCATED and not seed:
        return kind, None
    if kind == RANDOMISED and seed.strip().lstrip("-").isdigit():
        return kind, int(seed)
    raise ValueError(
        f"assignment {value!r} is neither `allocated` nor `randomised:<seed>` (the seed the "
        "randomisation used, e.g. `randomised:20261206`; `farm-platform trial design` "
        "writes it)"
    )


def _header_error(path: Path, fieldnames: list[str] | None) -> str | None:
    """Why the header is not the required columns followed by optional design columns."""
    names = tuple(fieldnames or ())
    required, extra = names[: len(FIELD_MAP_COLUMNS)], names[len(FIELD_MAP_COLUMNS) :]
    if (
        required == FIELD_MAP_COLUMNS
        and set(extra) <= set(DESIGN_COLUMNS)
        and (len(set(extra)) == len(extra))
    ):
        return None
    return (
        f"field map {path} has columns {list(names)}; expected {list(FIELD_MAP_COLUMNS)}, "
        f"optionally followed by {' and/or '.join(DESIGN_COLUMNS)}"
    )


def _design_fields(row: dict[str, str]) -> dict[str, str | None]:
    """The optional columns of a row: None when the map lacks them; a blank block is an
    error (a block named for some positions only would compare them with nothing)."""
    fields: dict[str, str | None] = {}
    if "block" in row:
        block = (row["block"] or "").strip()
        if not block:
            raise ValueError("block is empty: give every position a block, or drop the column")
        fields["block"] = block
    if "assignment" in row:
        assignment = (row["assignment"] or "").strip()
        parse_assignment(assignment)
        fields["assignment"] = assignment
    return fields


def read_field_map(path: str | Path) -> dict[str, Position]:
    """Read positions.csv into {position_id: Position}, rejecting malformed rows."""
    path = Path(path)
    if not path.exists():
        raise FieldMapError(
            f"field map {path} does not exist: run `farm-platform simulate` or copy your "
            "farm's positions.csv there"
        )
    positions: dict[str, Position] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if (problem := _header_error(path, reader.fieldnames)) is not None:
            raise FieldMapError(problem)
        for line_no, row in enumerate(reader, start=2):
            try:
                position = Position(
                    position_id=row["position_id"],
                    area=row["area"],
                    latitude=float(row["latitude"]),
                    longitude=float(row["longitude"]),
                    dose_ml_per_sqft=float(row["dose_ml_per_sqft"]),
                    **_design_fields(row),
                )
            except (TypeError, ValueError) as exc:
                raise FieldMapError(f"{path}:{line_no}: {exc}") from None
            if position.area not in AREAS:
                raise FieldMapError(
                    f"{path}:{line_no}: area {position.area!r} is not one of {AREAS}"
                )
            if position.position_id in positions:
                raise FieldMapError(
                    f"{path}:{line_no}: duplicate position_id {position.position_id!r}"
                )
            positions[position.position_id] = position
    if len({p.assignment for p in positions.values()}) > 1:
        raise FieldMapError(
            f"field map {path}: positions name different assignments "
            f"{sorted({str(p.assignment) for p in positions.values()})}; a trial has one "
            "(rerun `farm-platform trial design` to write a whole new one)"
        )
    return positions


def write_field_map(positions: list[Position], path: str | Path) -> Path:
    """Replace the map in one step: a sensor reading it at the same moment sees the old map
    or the new one, never a half-written file."""
    path = Path(path)
    # The design columns only when a position has them: a founding-design map stays as it was.
    optional = [c for c in DESIGN_COLUMNS if any(getattr(p, c) is not None for p in positions)]
    columns = [*FIELD_MAP_COLUMNS, *optional]

    def rows(handle: TextIO) -> None:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(asdict(position) for position in positions)

    write_text_atomic(path, rows)
    return path


class FieldMapResource(ConfigurableResource):
    """`positions.csv`: the sensor's list of known positions and the `positions` table's rows."""

    path: str = Field(
        default=str(DEFAULT_FIELD_MAP_PATH), description="positions.csv (FARM_FIELD_MAP)"
    )

    def positions(self) -> dict[str, Position]:
        """Positions by id, in the file's order; parsed again only when the file changed.

        The sensor asks every tick, in a code server that lives for days: parsing 50,000
        positions took 0.2-0.5 s of each tick (benchmarks/sensor_at_scale.py)."""
        path = Path(self.path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return read_field_map(path)  # its error says what to do
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return dict(_parsed(str(path.resolve()), version))


@functools.lru_cache(maxsize=4)
def _parsed(path: str, version: tuple[int, int, int]) -> dict[str, Position]:
    """One parse per version of the file: a rewrite (a new inode, as `write_field_map`
    renames) or an edit in place (its mtime or size) is a new version."""
    return read_field_map(path)
