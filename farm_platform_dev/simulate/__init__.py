"""A deterministic synthetic farm: drone photos of a crop trial with known truth.

Used by `farm-platform simulate` to feed the pipeline, by the model training
scripts (`render_training_images`) and by tests that check the effectiveness
report recovers the true treatment effect (`ground_truth_frames`).

Disease dynamics: `farm_platform_dev.simulate.dynamics`; rendering and how each
disease looks: `farm_platform_dev.simulate.render`.
"""

from __future__ import annotations

from .dynamics import MAX_GRADE, MAX_LEAVES, NUM_DISEASES
from .farm import (
    DISEASE_TYPES,
    GRADE_COLUMNS,
    FarmConfig,
    LeafTruth,
    SimulatedImage,
    field_map,
    ground_truth_frames,
    render_training_images,
    simulate_images,
    simulate_truth,
    true_position_day,
    truth_frames,
)
from .publish import DroneMessagePublisher, SimulationSummary, write_farm

__all__ = [
    "DISEASE_TYPES",
    "GRADE_COLUMNS",
    "MAX_GRADE",
    "MAX_LEAVES",
    "NUM_DISEASES",
    "DroneMessagePublisher",
    "FarmConfig",
    "LeafTruth",
    "SimulatedImage",
    "SimulationSummary",
    "field_map",
    "ground_truth_frames",
    "render_training_images",
    "simulate_images",
    "simulate_truth",
    "true_position_day",
    "truth_frames",
    "write_farm",
]
