"""The field map (DESIGN.md, Field map): which positions exist and in which area.

`dbt_project/seeds/positions.csv` is the source of truth; the sensor reads it to
decide which positions are known and dbt loads it as a seed.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from farm_platform.settings import REPO_ROOT

FIELD_MAP_COLUMNS = ("position_id", "area", "latitude", "longitude", "dose_ml_per_sqft")
AREAS = ("control", "treated")
DEFAULT_FIELD_MAP_PATH = REPO_ROOT / "dbt_project" / "seeds" / "positions.csv"


def field_map_path() -> Path:
    """`$FARM_FIELD_MAP`, else the dbt seed."""
    return Path(os.environ.get("FARM_FIELD_MAP") or DEFAULT_FIELD_MAP_PATH)


class FieldMapError(ValueError):
    """The field map file is malformed."""


@dataclass(frozen=True)
class Position:
    position_id: str
    area: str
    latitude: float
    longitude: float
    dose_ml_per_sqft: float


def read_field_map(path: str | Path | None = None) -> dict[str, Position]:
    """Read positions.csv into {position_id: Position}, rejecting malformed rows."""
    path = Path(path) if path else field_map_path()
    if not path.exists():
        raise FieldMapError(
            f"field map {path} does not exist: run `farm-platform simulate` or copy your "
            "farm's positions.csv there"
        )
    positions: dict[str, Position] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != FIELD_MAP_COLUMNS:
            raise FieldMapError(
                f"field map {path} has columns {reader.fieldnames}; "
                f"expected {list(FIELD_MAP_COLUMNS)}"
            )
        for line_no, row in enumerate(reader, start=2):
            try:
                position = Position(
                    position_id=row["position_id"],
                    area=row["area"],
                    latitude=float(row["latitude"]),
                    longitude=float(row["longitude"]),
                    dose_ml_per_sqft=float(row["dose_ml_per_sqft"]),
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
    return positions


def write_field_map(positions: list[Position], path: str | Path = DEFAULT_FIELD_MAP_PATH) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELD_MAP_COLUMNS)
        writer.writeheader()
        for position in positions:
            writer.writerow(asdict(position))
    return path
