"""The inference library on rendered photos: detection, crops and grades in any batch size,
the parallel decode, and bfloat16 by the measured agreement (fast: real weights, CPU).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from models_support import GRADES_COLUMNS, LEAF_CROPS_COLUMNS, MODEL_IDS, evaluate_module

from farm_platform.layout import ImageKey
from farm_platform.ml.registry import (
    ModelRegistry,
)

torch = pytest.importorskip("torch")
inference = pytest.importorskip("farm_platform.ml.inference")


@pytest.fixture(scope="module")
def sample_images() -> list[tuple[ImageKey, np.ndarray]]:
    simulate = pytest.importorskip("farm_platform_dev.simulate")
    # Held-out seed, leaves from none to crowded; a few images keep the test fast.
    sims = list(simulate.render_training_images(2000, 12))
    assert sum(len(s.leaves) for s in sims) > 40, "the sample should contain many leaves"
    return [
        (ImageKey(f"P{i:03d}", dt.date(2024, 5, 1 + i)), inference.decode_png(s.png))
        for i, s in enumerate(sims)
    ]


# ---------------------------------------------------------------------------------------
# Inference


def test_detection_is_batch_size_invariant(registry: ModelRegistry, sample_images) -> None:
    detector = inference.load_detector(registry.detector())
    images = [image for _, image in sample_images]
    results = {bs: inference.detect_leaves(images, detector, batch_size=bs) for bs in (1, 8, 32)}
    assert sum(len(found) for found in results[1]) > 40
    for bs in (8, 32):
        for ref, got in zip(results[1], results[bs], strict=True):
            assert len(ref) == len(got)
            ref_arr = np.array([[d.x0, d.y0, d.x1, d.y1, d.score] for d in ref]).reshape(-1, 5)
            got_arr = np.array([[d.x0, d.y0, d.x1, d.y1, d.score] for d in got]).reshape(-1, 5)
            np.testing.assert_allclose(got_arr[:, 4], ref_arr[:, 4], atol=1e-5)
            np.testing.assert_allclose(got_arr[:, :4], ref_arr[:, :4], atol=1e-3)
    for image, found in zip(images, results[1], strict=True):
        scores = [d.score for d in found]
        assert scores == sorted(scores, reverse=True)
        for d in found:
            assert 0 <= d.x0 < d.x1 <= image.shape[1] and 0 <= d.y0 < d.y1 <= image.shape[0]
            assert 0.0 <= d.score <= 1.0


def test_crop_leaves_writes_contract_paths(registry: ModelRegistry, sample_images, tmp_path):
    card = registry.detector()
    detector = inference.load_detector(card)
    bucket = f"file://{tmp_path}/bucket"
    frame, crops = inference.crop_leaves(sample_images[:4], detector, card, bucket, batch_size=3)
    assert [(n, frame.schema[n]) for n in frame.columns] == LEAF_CROPS_COLUMNS
    assert frame.height == len(crops) > 0
    written = inference.write_crops(frame, crops)
    assert written == frame["crop_uri"].to_list()
    rows_by_image = _rows_by_image(frame, sample_images[:4])
    for (key, image), rows in zip(sample_images[:4], rows_by_image, strict=True):
        assert [r["leaf_crop_idx"] for r in rows] == list(range(len(rows)))
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True)
        for row in rows:
            expected = (
                f"{tmp_path}/bucket/{key.position_id}/{key.date:%Y-%m-%d}/"
                f"{card.id}/{card.version}/{row['leaf_crop_idx']}.png"
            )
            assert row["crop_uri"] == f"file://{expected}"
            assert (row["cropper_model_id"], row["cropper_model_version"]) == (
                "leaf_detector",
                card.version,
            )
            on_disk = inference.decode_png(Path(expected).read_bytes())
            x0, y0, x1, y1 = inference.box_pixels(
                (row["x0"], row["y0"], row["x1"], row["y1"]), *image.shape[:2]
            )
            assert np.array_equal(on_disk, image[y0:y1, x0:x1])
    files = sorted(p for p in (tmp_path / "bucket").rglob("*") if p.is_file())
    assert len(files) == frame.height


def _rows_by_image(frame: pl.DataFrame, images) -> list[list[dict]]:
    return [
        frame.filter(
            (pl.col("position_id") == key.position_id) & (pl.col("date") == key.date)
        ).to_dicts()
        for key, _ in images
    ]


def test_empty_image_list_gives_contract_frame(registry: ModelRegistry) -> None:
    card = registry.detector()
    frame, crops = inference.crop_leaves([], inference.load_detector(card), card, "file:///x")
    assert frame.height == 0 and crops == []
    assert [(n, frame.schema[n]) for n in frame.columns] == LEAF_CROPS_COLUMNS
    grader_card = registry.grader_for("disease_0")
    grader = inference.load_grader(grader_card)
    graded = inference.grade_crops(crops, frame, grader, grader_card)
    assert graded.height == 0
    assert [(n, graded.schema[n]) for n in graded.columns] == GRADES_COLUMNS


def test_grading_is_batch_size_invariant(registry: ModelRegistry, sample_images) -> None:
    card = registry.detector()
    frame, crops = inference.crop_leaves(sample_images, inference.load_detector(card), card, "x")
    assert len(crops) > 40  # crops of several images graded together
    grader_card = registry.grader_for("disease_3")
    grader = inference.load_grader(grader_card)
    graded = {
        bs: inference.grade_crops(crops, frame, grader, grader_card, batch_size=bs)
        for bs in (1, 8, 32)
    }
    ref = graded[1]
    assert [(n, ref.schema[n]) for n in ref.columns] == GRADES_COLUMNS
    assert ref.height == frame.height
    assert ref["leaf_crop_idx"].to_list() == frame["leaf_crop_idx"].to_list()
    assert set(ref["disease_type"]) == {"disease_3"}
    assert set(ref["disease_model_id"]) == {"disease_3_grader"}
    assert set(ref["predicted_grade"].to_list()) <= {0, 1, 2, 3}
    assert ref["confidence"].min() >= 0.25 - 1e-6 and ref["confidence"].max() <= 1.0
    for bs in (8, 32):
        assert graded[bs]["predicted_grade"].to_list() == ref["predicted_grade"].to_list()
        np.testing.assert_allclose(
            graded[bs]["confidence"].to_numpy(), ref["confidence"].to_numpy(), atol=1e-5
        )
    # The resize-once path used for the five graders gives the same answer.
    prepared = inference.prepare_crops(crops, grader_card.input_size)
    again = inference.grade_crops(prepared, frame, grader, grader_card)
    assert again["predicted_grade"].to_list() == ref["predicted_grade"].to_list()


def test_parallel_decode_and_crops_equal_the_sequential_ones(
    registry: ModelRegistry, sample_images, monkeypatch
) -> None:
    from farm_platform.grading.photos import decode_photos

    simulate = pytest.importorskip("farm_platform_dev.simulate")
    pngs: list[bytes | None] = [s.png for s in simulate.render_training_images(2000, 9)]
    pngs[3] = b"not a png"  # an error keeps its place among the photos
    pngs[6] = None  # a missing object too
    keys = [ImageKey(f"P{i:03d}", dt.date(2024, 5, 1)) for i in range(len(pngs))]
    uris = [f"memory://b/{i}" for i in range(len(pngs))]
    card = registry.detector()
    detector = inference.load_detector(card)
    grader_card = registry.grader_for("disease_1")
    outputs = {}
    for threads in ("1", "4"):  # one worker is the sequential loop of old
        monkeypatch.setattr("farm_platform.ml.pixels._threads", int(threads))
        photos = decode_photos(keys, uris, pngs, inference)
        # A photo of another size than the detector's goes through the scaling path too.
        images = [(p.key, p.array) for p in photos if p.array is not None]
        images.append((ImageKey("BIG", dt.date(2024, 5, 1)), np.repeat(images[0][1], 2, 0)))
        frame, crops = inference.crop_leaves(images, detector, card, "memory://b")
        prepared = inference.prepare_crops(crops, grader_card.input_size)
        outputs[threads] = (photos, frame, prepared)
    (seq_photos, seq_frame, seq_prepared), (par_photos, par_frame, par_prepared) = (
        outputs["1"],
        outputs["4"],
    )
    assert [p.key for p in par_photos] == keys
    assert [p.error is not None for p in par_photos] == [i in (3, 6) for i in range(len(pngs))]

    def facts(photo) -> tuple:
        # PIL names the BytesIO it could not identify by its address: not a difference.
        error = re.sub(r" at 0x[0-9a-f]+", "", photo.error or "")
        return (photo.key, photo.uri, photo.size_bytes, photo.sha256, photo.exists, error)

    for seq, par in zip(seq_photos, par_photos, strict=True):
        assert facts(seq) == facts(par)
        assert (seq.array is None and par.array is None) or np.array_equal(seq.array, par.array)
    assert seq_frame.height > 20
    assert par_frame.equals(seq_frame)
    assert torch.equal(par_prepared, seq_prepared)


def test_bfloat16_is_accepted_or_refused_per_the_measured_agreement(
    models_dir: Path, sample_images, monkeypatch
) -> None:
    from farm_platform.config import ConfigError
    from farm_platform.ml.registry import write_json_atomic
    from farm_platform.ml.settings import InferenceSettings

    evaluate = evaluate_module()
    registry = ModelRegistry(models_dir)
    (models_dir / inference.PRECISION_RECORD).unlink(missing_ok=True)
    bfloat16 = InferenceSettings(device="cpu", dtype="bfloat16")
    with pytest.raises(ConfigError, match="FARM_TORCH_DTYPE=bfloat16 refused: no float32"):
        inference.load_detector(registry.detector(), registry, settings=bfloat16)

    # A real measurement, on fewer held-out images than models/evaluate.py uses, through
    # the saved-photos file a GPU machine without the simulator measures from.
    rendered = evaluate.render(2000, 16)
    evaluate.save_heldout(rendered, models_dir / "heldout.npz")
    saved = evaluate.load_heldout(models_dir / "heldout.npz")
    assert saved.pngs == rendered.pngs
    for field in ("images", "boxes", "grades"):
        for got, want in zip(getattr(saved, field), getattr(rendered, field), strict=True):
            np.testing.assert_array_equal(got, want)
    measured = evaluate.compare_bfloat16(registry, saved)
    assert sorted(measured) == sorted(MODEL_IDS)
    assert all(m["crops"] > 50 for k, m in measured.items() if k != "leaf_detector")
    record = {"bfloat16": {"cpu": {"models": measured}}}
    write_json_atomic(models_dir / inference.PRECISION_RECORD, record)
    for model_id, figures in measured.items():
        card = registry.active_card(model_id)
        load = inference.load_detector if card.task == "leaf_detector" else inference.load_grader
        if inference.bfloat16_refusal(card, figures, "cpu") is None:
            placed = load(card, registry, settings=bfloat16)
            assert inference.model_placement(placed)[1] == torch.bfloat16
        else:
            with pytest.raises(ConfigError, match="refused"):
                load(card, registry, settings=bfloat16)

    # A CPU measurement says nothing of CUDA's bfloat16 kernels.
    with pytest.raises(ConfigError, match="on cuda: measure it"):
        inference.require_bfloat16_agreement(registry.detector(), models_dir, "cuda")

    # The same models, had they disagreed on one crop in a hundred, are refused.
    grader_card = registry.grader_for("disease_4")
    crops = measured[grader_card.id]["crops"]
    failing = {
        **measured,
        grader_card.id: {**measured[grader_card.id], "agreeing": crops * 99 // 100},
    }
    record = {"bfloat16": {"cpu": {"models": failing}}}
    write_json_atomic(models_dir / inference.PRECISION_RECORD, record)
    with pytest.raises(ConfigError, match="disease_4_grader v1: bfloat16 grades agree"):
        inference.load_grader(grader_card, registry, settings=bfloat16)
