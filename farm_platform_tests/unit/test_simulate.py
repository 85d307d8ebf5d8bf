"""The synthetic farm: determinism, image/box invariants, bucket output, dynamics."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from concurrent.futures import Future

import numpy as np
import polars as pl
import pytest
from PIL import Image

from farm_platform.layout import ImageKey
from farm_platform.resources.field_map import read_field_map
from farm_platform_dev.simulate import (
    DISEASE_TYPES,
    MAX_GRADE,
    MAX_LEAVES,
    DroneMessagePublisher,
    FarmConfig,
    dynamics,
    field_map,
    ground_truth_frames,
    render_training_images,
    simulate_images,
    simulate_truth,
    write_farm,
)

SMALL = FarmConfig(positions=4, days=3, seed=3)
GRADE_COLUMNS = [f"grade_{d}" for d in DISEASE_TYPES]


@pytest.fixture(scope="module")
def small_farm():
    return list(simulate_images(SMALL))


def test_same_config_is_byte_identical_and_seed_matters(small_farm):
    again = list(simulate_images(SMALL))
    assert [i.png for i in again] == [i.png for i in small_farm]
    assert [i.leaves for i in again] == [i.leaves for i in small_farm]
    other = list(simulate_images(FarmConfig(positions=4, days=3, seed=4)))
    assert all(a.png != b.png for a, b in zip(other, small_farm, strict=True))


def test_images_are_valid_and_cover_positions_times_days(small_farm):
    assert len(small_farm) == SMALL.positions * SMALL.days
    keys = {image.key for image in small_farm}
    expected = {
        ImageKey(p.position_id, SMALL.start_date + dt.timedelta(days=d))
        for p in field_map(SMALL)
        for d in range(SMALL.days)
    }
    assert keys == expected
    size = SMALL.image_size
    for image in small_farm:
        decoded = Image.open(io.BytesIO(image.png))
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        assert decoded.size == (size, size)
        assert 0 < len(image.leaves) <= MAX_LEAVES
        for leaf in image.leaves:
            assert 0 <= leaf.x0 < leaf.x1 <= size and 0 <= leaf.y0 < leaf.y1 <= size
            assert len(leaf.grades) == 5 and all(0 <= g <= MAX_GRADE for g in leaf.grades)


def test_leaf_ids_and_boxes_are_stable_across_days(small_farm):
    by_position: dict[str, list] = {}
    for image in small_farm:
        by_position.setdefault(image.key.position_id, []).append(image.leaves)
    for days in by_position.values():
        ids = [[leaf.leaf_id for leaf in leaves] for leaves in days]
        assert all(i == ids[0] for i in ids) and len(set(ids[0])) == len(ids[0])
        boxes = [[(leaf.x0, leaf.y0, leaf.x1, leaf.y1) for leaf in leaves] for leaves in days]
        assert all(b == boxes[0] for b in boxes)


def test_image_pixels_differ_where_leaves_are():
    # A leaf box must hold the leaf: its pixels differ from the soil around them.
    image = next(iter(render_training_images(seed=11, count=3)))
    pixels = np.asarray(Image.open(io.BytesIO(image.png)), dtype=np.float32)
    greenness = pixels[..., 1] - (pixels[..., 0] + pixels[..., 2]) / 2
    healthy = [leaf for leaf in image.leaves if max(leaf.grades) == 0]
    for leaf in healthy:
        box = greenness[int(leaf.y0) : int(leaf.y1), int(leaf.x0) : int(leaf.x1)]
        assert box.mean() > greenness.mean() + 5


def test_field_map_split_and_doses():
    positions = field_map(FarmConfig(positions=7, dose_ml_per_sqft=80.0))
    assert [p.position_id for p in positions] == [f"P{i:03d}" for i in range(7)]
    assert [p.area for p in positions] == ["control"] * 4 + ["treated"] * 3
    assert [p.dose_ml_per_sqft for p in positions] == [0.0] * 4 + [80.0] * 3
    assert len({(p.latitude, p.longitude) for p in positions}) == 7


def test_write_farm_to_file_bucket(tmp_path, small_farm):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    map_path = tmp_path / "seeds" / "positions.csv"
    summary = write_farm(SMALL, bucket.as_uri(), map_path)

    objects = sorted(p.relative_to(bucket).as_posix() for p in bucket.rglob("image.png"))
    assert objects == sorted(image.key.relative_path() for image in small_farm)
    assert (bucket / objects[0]).read_bytes() == next(
        i.png for i in small_farm if i.key.relative_path() == objects[0]
    )
    assert summary.images == SMALL.positions * SMALL.days
    assert summary.leaves == sum(len(i.leaves) for i in small_farm)
    assert summary.published == 0 and summary.field_map_path == map_path

    leaves = pl.read_parquet(bucket / "ground_truth" / "leaves.parquet")
    assert leaves.columns == [
        "position_id",
        "date",
        "leaf_id",
        "x0",
        "y0",
        "x1",
        "y1",
        *GRADE_COLUMNS,
    ]
    assert leaves.height == summary.leaves
    assert leaves.schema["date"] == pl.Date
    effect = pl.read_parquet(bucket / "ground_truth" / "effect.parquet")
    assert effect["disease_type"].to_list() == list(DISEASE_TYPES)
    assert {"true_effect_per_day", "realized_did"} <= set(effect.columns)
    assert effect["true_effect_per_day"].to_list() == [SMALL.effect] * 5

    positions = read_field_map(map_path)
    assert sorted(positions) == ["P000", "P001", "P002", "P003"]
    assert [positions[p].area for p in sorted(positions)] == ["control"] * 2 + ["treated"] * 2
    assert positions["P000"].dose_ml_per_sqft == 0.0
    assert positions["P003"].dose_ml_per_sqft == SMALL.dose_ml_per_sqft


class _FakeClient:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def topic_path(self, project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic_path: str, data: bytes) -> Future:
        self.sent.append((topic_path, data))
        future: Future = Future()
        future.set_result(str(len(self.sent)))
        return future


def test_write_farm_publishes_one_message_per_image(tmp_path):
    client = _FakeClient()
    publisher = DroneMessagePublisher("demo", client=client)
    config = FarmConfig(positions=2, days=2, image_size=128)
    bucket = tmp_path / "b"
    summary = write_farm(config, str(bucket), None, publisher)
    assert summary.published == len(client.sent) == 4
    assert summary.field_map_path is None
    for topic, data in client.sent:
        assert topic == "projects/demo/topics/drone_image"
        message = json.loads(data)
        assert set(message) == {"image_uri", "position_id", "date", "captured_at", "drone_id"}
        assert message["image_uri"].startswith("file://")
        assert message["image_uri"].endswith(
            f"/{message['position_id']}/{message['date']}/image.png"
        )
        path = message["image_uri"].removeprefix("file://")
        assert Image.open(path).size == (128, 128)
        assert (
            dt.datetime.fromisoformat(message["captured_at"]).date().isoformat()
            == (message["date"])
        )
    assert publisher.flush() == 0  # nothing left queued


def _mean_latent_change(config: FarmConfig) -> dict[bool, float]:
    n_control = (config.positions + 1) // 2
    changes: dict[bool, list[float]] = {True: [], False: []}
    for index in range(config.positions):
        treated = index >= n_control
        latents = dynamics.simulate_latents(config.seed, index, config.days, treated, config.effect)
        changes[treated].append(float(latents[-1].mean() - latents[0].mean()))
    return {area: float(np.mean(values)) for area, values in changes.items()}


def test_treated_latent_falls_faster_with_effect():
    change = _mean_latent_change(FarmConfig(positions=60, days=8, seed=1, effect=0.15))
    # Clipping at 0 halves the visible effect on a half-infected farm; still far apart.
    assert change[True] < change[False] - 0.3
    assert abs(change[False]) < 0.15
    no_effect = _mean_latent_change(FarmConfig(positions=60, days=8, seed=1, effect=0.0))
    assert abs(no_effect[True] - no_effect[False]) < 0.1


def _dynamics_did(config: FarmConfig) -> np.ndarray:
    n_control = (config.positions + 1) // 2
    first, last = {}, {}
    for index in range(config.positions):
        grades = dynamics.grades_from_latents(
            dynamics.simulate_latents(
                config.seed, index, config.days, index >= n_control, config.effect
            )
        )
        first[f"P{index:03d}"], last[f"P{index:03d}"] = grades[0], grades[-1]
    treated = {f"P{i:03d}" for i in range(n_control, config.positions)}
    return dynamics.difference_in_differences(first, last, treated)


def test_realized_did_is_near_zero_without_effect_and_negative_with_it():
    zero = [_dynamics_did(FarmConfig(positions=40, days=8, seed=s, effect=0.0)) for s in range(5)]
    assert np.all(np.abs(zero) < 0.2)
    assert abs(float(np.mean(zero))) < 0.06
    with_effect = _dynamics_did(FarmConfig(positions=40, days=8, seed=0, effect=0.15))
    assert np.all(with_effect < -0.3)


def test_ground_truth_effect_matches_dynamics(small_farm):
    frames = ground_truth_frames(small_farm, SMALL)
    effect = frames["effect"]
    expected = _dynamics_did(SMALL)
    # The photographed leaves are the dynamics' leaves (all fit at this size).
    assert np.allclose(effect["realized_did"].to_numpy(), expected)
    assert np.allclose(effect["realized_effect_per_day"].to_numpy(), -expected / (SMALL.days - 1))
    assert effect["control_positions"].to_list() == [2] * 5
    assert frames["leaves"].height == sum(len(i.leaves) for i in small_farm)


def test_position_world_does_not_depend_on_farm_size():
    small = list(simulate_images(FarmConfig(positions=2, days=1, seed=5)))
    large = list(simulate_images(FarmConfig(positions=6, days=1, seed=5)))
    assert small[0].png == large[0].png and small[0].leaves == large[0].leaves


def test_training_images_cover_every_grade_of_every_disease():
    images = list(render_training_images(seed=0, count=40, image_size=128))
    assert images == list(render_training_images(seed=0, count=40, image_size=128))
    assert images[0].png != next(iter(render_training_images(seed=1, count=1, image_size=128))).png
    grades = np.array([leaf.grades for image in images for leaf in image.leaves])
    assert 200 <= len(grades) <= 40 * MAX_LEAVES
    counts = [int(len(images[i].leaves)) for i in range(len(images))]
    assert min(counts) <= 3 and max(counts) >= 15
    for disease in range(5):
        histogram = np.bincount(grades[:, disease], minlength=MAX_GRADE + 1)
        assert len(histogram) == MAX_GRADE + 1
        assert histogram.min() >= 0.1 * len(grades), (disease, histogram)


def test_truth_without_rendering_is_the_truth_of_the_photos():
    # The effect benchmark's fast path skips rendering; it must see the same leaves.
    config = FarmConfig(positions=3, days=2, seed=5)
    rendered = [(image.key, image.leaves) for image in simulate_images(config)]
    assert list(simulate_truth(config)) == rendered


def test_the_field_map_resource_parses_a_file_once_and_again_when_it_changes(tmp_path, monkeypatch):
    from farm_platform.resources import field_map as module

    path = module.write_field_map([_position("P000", "control")], tmp_path / "positions.csv")
    parses = []
    real = module.read_field_map
    monkeypatch.setattr(module, "read_field_map", lambda p: parses.append(p) or real(p))
    resource = module.FieldMapResource(path=str(path))
    assert list(resource.positions()) == ["P000"]
    resource.positions()["P999"] = None  # a caller's change stays its own
    assert list(resource.positions()) == ["P000"]
    assert len(parses) == 1, "an unchanged field map was parsed again"

    module.write_field_map([_position("P000", "control"), _position("P001", "treated")], path)
    assert list(resource.positions()) == ["P000", "P001"]
    # A rewrite of the same size within the file system's mtime tick is a new version too.
    stamp = path.stat().st_mtime_ns
    module.write_field_map([_position("P000", "control"), _position("P002", "treated")], path)
    os.utime(path, ns=(stamp, stamp))
    assert list(resource.positions()) == ["P000", "P002"]
    assert [p.name for p in tmp_path.iterdir()] == ["positions.csv"], "a partial file was left"
    path.write_text("position_id,area\nP000,control\n")
    with pytest.raises(module.FieldMapError, match="has columns"):
        resource.positions()
    path.unlink()
    with pytest.raises(module.FieldMapError, match="does not exist"):
        resource.positions()


def _position(position_id: str, area: str):
    from farm_platform.resources.field_map import Position

    return Position(position_id, area, 0.0, 0.0, 0.0 if area == "control" else 1.0)
