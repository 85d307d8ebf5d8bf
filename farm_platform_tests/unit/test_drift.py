"""Drift checks (issue 25): the day's model outputs against the card's reference, both ways,
and the evaluation renderer family they are tested with."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from conftest import copy_repo_models
from dagster import AssetCheckSeverity, DagsterInstance, materialize

from farm_platform.layout import ImageKey
from farm_platform.quality import drift
from farm_platform_dev.eval_render import render_eval_images
from farm_platform_dev.farm import QUIET_RUN_CONFIG, GradedFarm, copy_farm, grade_simulated_farm
from farm_platform_dev.simulate import FarmConfig
from farm_platform_dev.simulate.render import encode_png

CONFIG = FarmConfig(positions=12, days=1, seed=25)
DAY = CONFIG.dates[0]


def test_psi_is_small_on_the_reference_distribution_and_large_on_a_shifted_one():
    rng = np.random.default_rng(0)
    ref = drift.reference(rng.beta(8, 2, 3000))
    same = drift.compare({"score": ref}, {"score": rng.beta(8, 2, 200)})[0]
    shifted = drift.compare({"score": ref}, {"score": rng.beta(4, 3, 200)})[0]
    few = drift.compare({"score": ref}, {"score": rng.beta(4, 3, drift.MIN_VALUES - 1)})[0]
    assert not same.drifted and same.statistic < 0.1
    assert shifted.drifted and shifted.statistic > shifted.threshold > drift.PSI_THRESHOLD
    assert few.statistic is None and not few.drifted  # too few values: not compared


def test_report_says_which_days_drifted_and_nothing_when_none():
    from farm_platform.report.data import ReportData
    from farm_platform.report.render import drift_warning

    empty = pl.DataFrame()
    data = ReportData(DAY, empty, empty, empty, [], empty, empty)
    assert drift_warning(data) == ""
    drifted = pl.DataFrame(
        {
            "date": [DAY, DAY, DAY.replace(day=2)],
            "model_id": ["leaf_detector", "disease_3_grader", "disease_3_grader"],
        }
    )
    page = drift_warning(dataclasses.replace(data, drifted=drifted))
    detector, graders = page.split("</p>")[:2]
    assert "look unlike the detector&#x27;s evaluation data; treat their counts with care" in page
    assert str(DAY) in detector and "2026-06-02" not in detector
    assert "2026-06-02 (disease_3_grader)" in graders


def test_eval_renderer_is_deterministic_and_its_boxes_hold_every_leaf():
    a = render_eval_images(7000, 3, 96, severity=3, leaves=(13, 20))
    b = render_eval_images(7000, 3, 96, severity=3, leaves=(13, 20))
    for (pa, ba, ga), (pb, bb, gb) in zip(a, b, strict=True):
        assert np.array_equal(pa, pb) and np.array_equal(ba, bb) and np.array_equal(ga, gb)
        assert pa.shape == (96, 96, 3) and pa.dtype == np.uint8
        assert len(ba) >= 8 and (ga == 3).all()
        assert (ba[:, :2] >= 0).all() and (ba[:, 2:] <= 96).all() and (ba[:, 2:] > ba[:, :2]).all()


def test_eval_family_draws_a_farms_photos_deterministically_at_its_size():
    from farm_platform.ml.inference import decode_png
    from farm_platform_dev.eval_render import eval_farm_photos
    from farm_platform_dev.simulate import simulate_truth

    config = FarmConfig(positions=2, days=2, seed=3, image_size=128)
    photos = list(eval_farm_photos(config))
    assert [key for key, _ in photos] == sorted(
        (key for key, _ in simulate_truth(config)), key=lambda k: (k.position_id, k.date)
    )
    assert photos == list(eval_farm_photos(config))
    assert decode_png(photos[0][1]).shape == (128, 128, 3)
    assert photos[0][1] != photos[1][1]  # another day, another light


@pytest.fixture(scope="module")
def ordinary(tmp_path_factory) -> GradedFarm:
    return grade_simulated_farm(CONFIG, tmp_path_factory.mktemp("drift") / "farm")


def drift_rows(warehouse) -> pl.DataFrame:
    return warehouse.query("SELECT * FROM model_drift ORDER BY model_id, feature")


@pytest.mark.slow
def test_a_day_of_ordinary_photos_raises_no_drift_warning(ordinary):
    rows = drift_rows(ordinary.warehouse)
    # Every active model was compared, every feature with a statistic, none drifted.
    assert set(rows["model_id"]) == {"leaf_detector", *(f"disease_{k}_grader" for k in range(5))}
    assert rows["statistic"].null_count() == 0
    assert not rows["drifted"].any(), rows.filter(pl.col("drifted"))
    assert drift.drifted_days(ordinary.warehouse, DAY) == []


@pytest.mark.slow
def test_a_day_of_the_eval_familys_hardest_photos_raises_the_detector_drift_warning(
    ordinary, tmp_path
):
    """96 px photos, every disease at grade 3, 13-20 leaves, drawn by the evaluation family
    (never trained on), graded by a detector trained without robustness: v2, v3's
    predecessor (issue 25), with its own card's reference."""
    from farm_platform.admin.configured import configured_day_partitions
    from farm_platform.images.pipeline import build_image_pipeline
    from farm_platform.images.registered_models import registered_models
    from farm_platform.images.run_config import photo_run_config
    from farm_platform.ml.registry import ModelRegistry
    from farm_platform.resources import ModelRegistryResource
    from farm_platform.resources.field_map import read_field_map

    models_dir = copy_repo_models(tmp_path / "models")
    ModelRegistry(models_dir).set_active("leaf_detector", "v2")
    resources = {
        **copy_farm(ordinary, tmp_path),
        "models": ModelRegistryResource(models_dir=str(models_dir)),
    }
    bucket = resources["bucket"]
    positions = sorted(read_field_map(ordinary.field_map))
    photos = render_eval_images(7900, len(positions), 96, severity=3, leaves=(13, 20))
    for position, (pixels, _, _) in zip(positions, photos, strict=True):
        bucket.write(bucket.image_uri(ImageKey(position, DAY)), encode_png(pixels))

    with DagsterInstance.ephemeral() as instance:
        # v2 made active, as `models activate` and the registry sensor's run would record it.
        assert materialize([registered_models], instance=instance, resources=resources).success
        result = materialize(
            [build_image_pipeline(configured_day_partitions())],
            instance=instance,
            resources=resources,
            run_config={**QUIET_RUN_CONFIG, **photo_run_config(positions)},
            partition_key=DAY.isoformat(),
        )
    checks = {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }
    detector = checks[("leaf_crops", drift.DETECTOR_DRIFT)]
    assert not detector.passed and detector.severity == AssetCheckSeverity.WARN
    features = detector.metadata["features"].value
    assert set(features) == set(drift.DETECTOR_FEATURES)
    drifted = [name for name, f in features.items() if f["psi"] > f["threshold"]]
    assert drifted and all(features[name]["reference"]["n"] >= 300 for name in drifted)
    assert ("disease_0_grades", drift.GRADER_DRIFT) in checks  # every grader was compared
    rows = drift_rows(resources["warehouse"])
    assert rows.filter(pl.col("model_id") == "leaf_detector")["drifted"].any()
    assert drift.drifted_days(resources["warehouse"], DAY) == [DAY]
    lines = drift.report_lines(drift.drifted_models(resources["warehouse"], DAY))
    assert lines[0].startswith("The photos of these days look unlike the detector's")
    assert str(DAY) in lines[0]
