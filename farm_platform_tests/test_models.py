"""The shipped models, their registry and the inference library (fast: real weights, CPU)."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from farm_platform.config import REPO_MODELS_DIR
from farm_platform.layout import ImageKey
from farm_platform.ml.registry import (
    DISEASE_TYPES,
    ModelCard,
    ModelCardError,
    ModelChecksumError,
    ModelFileMissingError,
    ModelNotFoundError,
    ModelRegistry,
    ModelRegistryError,
    sha256_file,
)

torch = pytest.importorskip("torch")
inference = pytest.importorskip("farm_platform.ml.inference")

MODEL_IDS = ("leaf_detector", *(f"{d}_grader" for d in DISEASE_TYPES))
LEAF_CROPS_COLUMNS = [
    ("position_id", pl.String),
    ("date", pl.Date),
    ("leaf_crop_idx", pl.Int64),
    ("x0", pl.Float64),
    ("y0", pl.Float64),
    ("x1", pl.Float64),
    ("y1", pl.Float64),
    ("score", pl.Float64),
    ("crop_uri", pl.String),
    ("cropper_model_id", pl.String),
    ("cropper_model_version", pl.String),
]
GRADES_COLUMNS = [
    ("position_id", pl.String),
    ("date", pl.Date),
    ("leaf_crop_idx", pl.Int64),
    ("disease_type", pl.String),
    ("predicted_grade", pl.Int64),
    ("cropper_model_id", pl.String),
    ("cropper_model_version", pl.String),
    ("disease_model_id", pl.String),
    ("disease_model_version", pl.String),
    ("confidence", pl.Float64),
]


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry()


@pytest.fixture()
def models_copy(tmp_path: Path) -> Path:
    """A throwaway copy of the models folder (cards, weights, registry; no scripts)."""
    target = tmp_path / "models"
    shutil.copytree(REPO_MODELS_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target


@pytest.fixture(scope="module")
def sample_images() -> list[tuple[ImageKey, np.ndarray]]:
    simulate = pytest.importorskip("farm_platform.dev.simulate")
    # Held-out seed, leaves from none to crowded; a few images keep the test fast.
    sims = list(simulate.render_training_images(2000, 12))
    assert sum(len(s.leaves) for s in sims) > 40, "the sample should contain many leaves"
    return [
        (ImageKey(f"P{i:03d}", dt.date(2024, 5, 1 + i)), inference.decode_png(s.png))
        for i, s in enumerate(sims)
    ]


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------
# Registry and cards


def test_no_python_package_in_models_folder() -> None:
    assert not (REPO_MODELS_DIR / "__init__.py").exists()


def test_active_cards_are_complete_and_verified(registry: ModelRegistry) -> None:
    cards = registry.active_cards()
    assert sorted(cards) == sorted(MODEL_IDS)
    total = 0
    for model_id, card in cards.items():
        assert card.id == model_id
        path = registry.verify_weights(card)
        assert sha256_file(path) == card.sha256
        total += path.stat().st_size
        assert card.metrics, f"{model_id} card has no held-out metrics"
        assert card.training.get("heldout_seed") not in card.training.get("train_seeds", [])
    assert registry.detector().task == "leaf_detector"
    assert registry.detector().disease_type is None
    for disease in DISEASE_TYPES:
        grader = registry.grader_for(disease)
        assert (grader.task, grader.disease_type, grader.grades) == (
            "disease_grader",
            disease,
            (0, 1, 2, 3),
        )
    assert total <= 20 * 1024 * 1024, f"all weights together are {total} bytes"


def test_loading_good_weights(registry: ModelRegistry) -> None:
    detector = inference.load_detector(registry.detector())
    assert isinstance(detector, inference.LeafDetector)
    assert not detector.training
    grader = inference.load_grader(registry.grader_for("disease_2"))
    assert isinstance(grader, inference.DiseaseGrader)
    assert not grader.training
    # Cached once per process.
    assert inference.load_grader(registry.grader_for("disease_2")) is grader
    with pytest.raises(ModelRegistryError, match="not a leaf_detector"):
        inference.load_detector(registry.grader_for("disease_2"))


def test_wrong_sha256_is_refused(models_copy: Path) -> None:
    registry = ModelRegistry(models_copy)
    card = registry.grader_for("disease_1")
    path = registry.weights_path(card)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    actual = sha256_file(path)
    with pytest.raises(ModelChecksumError) as caught:
        inference.load_grader(card, registry)
    message = str(caught.value)
    assert card.sha256 in message and actual in message and str(path) in message
    assert isinstance(caught.value, ModelRegistryError) and isinstance(caught.value, ValueError)


def test_missing_weights_file_is_named(models_copy: Path) -> None:
    registry = ModelRegistry(models_copy)
    card = registry.detector()
    path = registry.weights_path(card)
    path.unlink()
    with pytest.raises(ModelFileMissingError) as caught:
        inference.load_detector(card, registry)
    assert str(path) in str(caught.value)
    assert "models/train.py" in str(caught.value)


def _card_path(models_dir: Path, model_id: str) -> Path:
    return models_dir / model_id / "v1" / "card.json"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda c: c.pop("sha256"), "sha256", "missing"),
        (lambda c: c.update(task="segmenter"), "task", "must be one of"),
        (lambda c: c.update(grades=[1, 2]), "grades", "0, 1, ..., n-1"),
        (lambda c: c.update(input_size=[48]), "input_size", "[height, width]"),
        (lambda c: c.update(sha256="abc"), "sha256", "64 lowercase hex"),
        (lambda c: c.update(disease_type="disease_9"), "disease_type", "disease_0..4"),
        (lambda c: c.update(weights="../x.pt"), "weights", "file name"),
    ],
)
def test_card_validation_names_file_and_field(models_copy: Path, change, field, words) -> None:
    path = _card_path(models_copy, "disease_3_grader")
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card))
    with pytest.raises(ModelCardError) as caught:
        ModelRegistry(models_copy).grader_for("disease_3")
    message = str(caught.value)
    assert str(path) in message and f"'{field}'" in message and words in message


def test_card_round_trip(registry: ModelRegistry) -> None:
    card = registry.detector()
    again = ModelCard.from_json(card.to_json(), source="x")
    assert again == card


def test_registry_errors_are_clear(models_copy: Path) -> None:
    registry = ModelRegistry(models_copy)
    with pytest.raises(ModelNotFoundError, match="disease_7"):
        registry.grader_for("disease_7")
    with pytest.raises(ModelNotFoundError, match="v9"):
        registry.card("leaf_detector", "v9")
    (models_copy / "registry.json").write_text("{not json")
    with pytest.raises(ModelRegistryError, match="registry.json is not valid JSON"):
        registry.detector()
    (models_copy / "registry.json").write_text('{"active": {"leaf_detector": 1}}')
    with pytest.raises(ModelRegistryError, match="'active'"):
        registry.active_cards()
    (models_copy / "registry.json").unlink()
    with pytest.raises(ModelRegistryError, match="does not exist"):
        registry.active_cards()


def test_set_active_switches_version(models_copy: Path) -> None:
    registry = ModelRegistry(models_copy)
    source = models_copy / "disease_0_grader" / "v1"
    target = models_copy / "disease_0_grader" / "v2"
    shutil.copytree(source, target)
    card = json.loads((target / "card.json").read_text())
    card["version"] = "v2"
    (target / "card.json").write_text(json.dumps(card))
    assert registry.grader_for("disease_0").version == "v1"
    registry.set_active("disease_0_grader", "v2")
    assert registry.grader_for("disease_0").version == "v2"
    assert (
        json.loads((models_copy / "registry.json").read_text())["active"]["disease_0_grader"]
        == "v2"
    )
    assert registry.detector().version == "v1"  # the others are untouched
    with pytest.raises(ModelNotFoundError):
        registry.set_active("disease_0_grader", "v3")
    assert registry.grader_for("disease_0").version == "v2"


def test_registry_import_does_not_import_torch() -> None:
    code = (
        "import sys, farm_platform.ml, farm_platform.ml.registry as r\n"
        "r.ModelRegistry().active_cards()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------
# Images


def test_decode_png() -> None:
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    assert np.array_equal(inference.decode_png(_png(rgb)), rgb)
    grey = inference.decode_png(_png(np.full((3, 2), 7, np.uint8)))
    assert grey.shape == (3, 2, 3) and grey.dtype == np.uint8 and int(grey.max()) == 7
    with pytest.raises(inference.ImageDecodeError, match="empty"):
        inference.decode_png(b"")
    with pytest.raises(inference.ImageDecodeError, match="cannot decode"):
        inference.decode_png(b"definitely not an image")
    with pytest.raises(inference.ImageDecodeError, match="cannot decode"):
        inference.decode_png(_png(rgb)[:40])  # truncated
    assert issubclass(inference.ImageDecodeError, ValueError)


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
                "v1",
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
