"""The shipped models' cards, their registry and the photo codec (fast: real weights, CPU)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fresh_python import fresh_python
from models_support import MODEL_IDS
from PIL import Image

from farm_platform.config import REPO_MODELS_DIR
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


def test_wrong_sha256_is_refused(models_dir: Path) -> None:
    registry = ModelRegistry(models_dir)
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


def test_missing_weights_file_is_named(models_dir: Path) -> None:
    registry = ModelRegistry(models_dir)
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
def test_card_validation_names_file_and_field(models_dir: Path, change, field, words) -> None:
    path = _card_path(models_dir, "disease_3_grader")
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card))
    with pytest.raises(ModelCardError) as caught:
        ModelRegistry(models_dir).grader_for("disease_3")
    message = str(caught.value)
    assert str(path) in message and f"'{field}'" in message and words in message


def test_card_round_trip(registry: ModelRegistry) -> None:
    card = registry.detector()
    again = ModelCard.from_json(card.to_json(), source="x")
    assert again == card


def test_registry_errors_are_clear(models_dir: Path) -> None:
    registry = ModelRegistry(models_dir)
    with pytest.raises(ModelNotFoundError, match="disease_7"):
        registry.grader_for("disease_7")
    with pytest.raises(ModelNotFoundError, match="v9"):
        registry.card("leaf_detector", "v9")
    (models_dir / "registry.json").write_text("{not json")
    with pytest.raises(ModelRegistryError, match="registry.json is not valid JSON"):
        registry.detector()
    (models_dir / "registry.json").write_text('{"active": {"leaf_detector": 1}}')
    with pytest.raises(ModelRegistryError, match="'active'"):
        registry.active_cards()
    (models_dir / "registry.json").unlink()
    with pytest.raises(ModelRegistryError, match="does not exist"):
        registry.active_cards()


def test_set_active_switches_version(models_dir: Path) -> None:
    registry = ModelRegistry(models_dir)
    source = models_dir / "disease_0_grader" / "v1"
    target = models_dir / "disease_0_grader" / "v2"
    shutil.copytree(source, target)
    card = json.loads((target / "card.json").read_text())
    card["version"] = "v2"
    (target / "card.json").write_text(json.dumps(card))
    assert registry.grader_for("disease_0").version == "v1"
    detector = registry.detector().version
    registry.set_active("disease_0_grader", "v2")
    assert registry.grader_for("disease_0").version == "v2"
    assert (
        json.loads((models_dir / "registry.json").read_text())["active"]["disease_0_grader"] == "v2"
    )
    assert registry.detector().version == detector  # the others are untouched
    with pytest.raises(ModelNotFoundError):
        registry.set_active("disease_0_grader", "v3")
    assert registry.grader_for("disease_0").version == "v2"


def test_registry_import_does_not_import_torch() -> None:
    code = (
        "import sys, farm_platform.ml, farm_platform.ml.registry as r\n"
        "r.ModelRegistry(r.config.REPO_MODELS_DIR).active_cards()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    fresh_python(code)


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


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 40, 3), (40, 1, 3), (51, 22, 3), (256, 256, 3)])
def test_encoded_crops_are_lossless_rgb_pngs(shape) -> None:
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = inference.encode_png(pixels[::1, ::1])  # and a view, not only a fresh array
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (shape[1], shape[0]))
        image.verify()  # chunk CRCs
    assert np.array_equal(inference.decode_png(data), pixels)
    crop = pixels[: max(1, shape[0] // 2), : max(1, shape[1] // 2)]  # not contiguous
    assert np.array_equal(inference.decode_png(inference.encode_png(crop)), crop)
    with pytest.raises(ValueError, match="H, W, 3"):
        inference.encode_png(pixels[..., 0])
