"""The field map as a resource: which positions exist (DESIGN.md, Field map)."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from farm_platform.field_map import DEFAULT_FIELD_MAP_PATH, Position, read_field_map


class FieldMapResource(ConfigurableResource):
    """`positions.csv`: the dbt seed and the sensor's list of known positions."""

    path: str = Field(
        default=str(DEFAULT_FIELD_MAP_PATH), description="positions.csv (FARM_FIELD_MAP)"
    )

    def positions(self) -> dict[str, Position]:
        """Positions by id, in the file's order."""
        return read_field_map(self.path)
