"""The shipped models, their registry and the inference library (fast: real weights, CPU)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import copy_repo_models
from fresh_python import fresh_python
from PIL import Image

from farm_platform.admin.configured import configured_registry
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
    return configured_registry()


@pytest.fixture()
def models_copy(tmp_path: Path) -> Path:
    """A throwaway copy of the models folder (cards, weights, registry; no scripts)."""
    return copy_repo_models(tmp_path / "models")


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
    detector = registry.detector().version
    registry.set_active("disease_0_grader", "v2")
    assert registry.grader_for("disease_0").version == "v2"
    assert (
        json.loads((models_copy / "registry.json").read_text())["active"]["disease_0_grader"]
        == "v2"
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


# ---------------------------------------------------------------------------------------
# Device, precision and the decode pool (issue 17)


def _evaluate_module():
    """The modules of models/evaluate.py (the photos, the figures, the records) as one
    namespace: scripts beside the models that import each other, not a package."""
    import importlib
    import types

    if str(REPO_MODELS_DIR) not in sys.path:
        sys.path.insert(0, str(REPO_MODELS_DIR))
    names: dict = {}
    for module in ("eval_photos", "eval_metrics", "eval_records"):
        names.update(vars(importlib.import_module(module)))
    return types.SimpleNamespace(**names)


@pytest.mark.parametrize(
    ("setting", "cuda_devices", "expected"),
    [
        (None, 0, "cpu"),
        ("auto", 0, "cpu"),
        ("auto", 2, "cuda:0"),
        (" CPU ", 2, "cpu"),
        ("cuda", 1, "cuda:0"),
        ("cuda:1", 2, "cuda:1"),
    ],
)
def test_torch_device_resolution(setting, cuda_devices, expected) -> None:
    from farm_platform.config_values import torch_device

    assert torch_device(setting, cuda_devices) == expected


@pytest.mark.parametrize(
    ("setting", "cuda_devices", "words"),
    [
        ("cuda", 0, "sees no CUDA device"),
        ("cuda:0", 0, "sees no CUDA device"),
        ("cuda:2", 2, r"sees 2 CUDA device\(s\)"),
        ("gpu", 1, "use auto"),
        ("cuda:", 1, "use auto"),
        ("cuda:x", 1, "use auto"),
        ("mps", 0, "use auto"),
    ],
)
def test_torch_device_refusals(setting, cuda_devices, words) -> None:
    from farm_platform.config import ConfigError
    from farm_platform.config_values import torch_device

    with pytest.raises(ConfigError, match=f"FARM_TORCH_DEVICE='{setting}'.*{words}"):
        torch_device(setting, cuda_devices)


def test_torch_dtype_and_threads_of_the_inference_resource() -> None:
    import os

    from farm_platform.config import ConfigError
    from farm_platform.resources.inference import InferenceResource

    default = InferenceResource().settings()
    assert (default.dtype, default.threads) == ("float32", len(os.sched_getaffinity(0)))
    assert InferenceResource(torch_dtype="bfloat16").settings().dtype == "bfloat16"
    with pytest.raises(ConfigError, match="float32, bfloat16"):
        InferenceResource(torch_dtype="float16").settings()
    assert InferenceResource(torch_threads="3").settings().threads == 3
    for bad in ("0", "two", "1.5"):
        with pytest.raises(ConfigError, match="FARM_TORCH_THREADS"):
            InferenceResource(torch_threads=bad).settings()


def test_the_environment_fills_the_inference_resource(monkeypatch) -> None:
    from farm_platform.resources.inference import InferenceResource

    monkeypatch.setenv("FARM_TORCH_DEVICE", "cpu")
    monkeypatch.setenv("FARM_TORCH_THREADS", "2")
    monkeypatch.setenv("FARM_OIP_TIMEOUT_SECONDS", "7")
    monkeypatch.delenv("FARM_TORCH_DTYPE", raising=False)
    settings = InferenceResource.from_environment().settings()
    assert (settings.device, settings.dtype, settings.threads) == ("cpu", "float32", 2)
    assert settings.oip_timeout_seconds == 7.0


def test_the_configured_placement_is_what_torch_can_do() -> None:
    from farm_platform.config import ConfigError
    from farm_platform.ml.settings import InferenceSettings

    expected = "cuda:0" if torch.cuda.device_count() else "cpu"
    assert inference.configured_placement() == inference.Placement(expected, "float32")
    if torch.cuda.device_count() == 0:
        with pytest.raises(ConfigError, match="no CUDA device"):
            inference.load_detector(
                configured_registry().detector(), settings=InferenceSettings(device="cuda")
            )


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


def test_parallel_map_keeps_order_and_raises(monkeypatch) -> None:
    monkeypatch.setattr("farm_platform.ml.pixels._threads", 3)
    assert inference.parallel_map(lambda x: x * x, list(range(10))) == [x * x for x in range(10)]
    assert inference.parallel_map(str, []) == []

    def fail_on_seven(x: int) -> int:
        if x == 7:
            raise KeyError("seven")
        return x

    with pytest.raises(KeyError, match="seven"):
        inference.parallel_map(fail_on_seven, list(range(10)))


@pytest.mark.parametrize(
    ("model_id", "figures", "accepted"),
    [
        ("disease_0_grader", {"crops": 1000, "agreeing": 995}, True),
        ("disease_0_grader", {"crops": 1000, "agreeing": 994}, False),
        ("disease_0_grader", {"crops": 0, "agreeing": 0}, False),
        ("leaf_detector", {"f1_float32": 0.9, "f1_bfloat16": 0.895}, True),
        ("leaf_detector", {"f1_float32": 0.9, "f1_bfloat16": 0.9051}, False),
        ("leaf_detector", {"f1_float32": 0.9, "f1_bfloat16": 0.8949}, False),
    ],
)
def test_bfloat16_rule(registry: ModelRegistry, model_id, figures, accepted) -> None:
    card = registry.active_card(model_id)
    measured = {"version": card.version, "sha256": card.sha256, **figures}
    assert (inference.bfloat16_refusal(card, measured, "cpu") is None) is accepted
    # A measurement of other weights never counts.
    assert inference.bfloat16_refusal(card, {**measured, "sha256": "0" * 64}, "cpu") is not None
    assert "--compare-bfloat16 --device cuda" in inference.bfloat16_refusal(card, None, "cuda")


def test_bfloat16_is_accepted_or_refused_per_the_measured_agreement(
    models_copy: Path, sample_images, monkeypatch
) -> None:
    from farm_platform.config import ConfigError
    from farm_platform.ml.registry import write_json_atomic
    from farm_platform.ml.settings import InferenceSettings

    evaluate = _evaluate_module()
    registry = ModelRegistry(models_copy)
    (models_copy / inference.PRECISION_RECORD).unlink(missing_ok=True)
    bfloat16 = InferenceSettings(device="cpu", dtype="bfloat16")
    with pytest.raises(ConfigError, match="FARM_TORCH_DTYPE=bfloat16 refused: no float32"):
        inference.load_detector(registry.detector(), registry, settings=bfloat16)

    # A real measurement, on fewer held-out images than models/evaluate.py uses, through
    # the saved-photos file a GPU machine without the simulator measures from.
    rendered = evaluate.render(2000, 16)
    evaluate.save_heldout(rendered, models_copy / "heldout.npz")
    saved = evaluate.load_heldout(models_copy / "heldout.npz")
    assert saved.pngs == rendered.pngs
    for field in ("images", "boxes", "grades"):
        for got, want in zip(getattr(saved, field), getattr(rendered, field), strict=True):
            np.testing.assert_array_equal(got, want)
    measured = evaluate.compare_bfloat16(registry, saved)
    assert sorted(measured) == sorted(MODEL_IDS)
    assert all(m["crops"] > 50 for k, m in measured.items() if k != "leaf_detector")
    record = {"bfloat16": {"cpu": {"models": measured}}}
    write_json_atomic(models_copy / inference.PRECISION_RECORD, record)
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
        inference.require_bfloat16_agreement(registry.detector(), models_copy, "cuda")

    # The same models, had they disagreed on one crop in a hundred, are refused.
    grader_card = registry.grader_for("disease_4")
    crops = measured[grader_card.id]["crops"]
    failing = {
        **measured,
        grader_card.id: {**measured[grader_card.id], "agreeing": crops * 99 // 100},
    }
    record = {"bfloat16": {"cpu": {"models": failing}}}
    write_json_atomic(models_copy / inference.PRECISION_RECORD, record)
    with pytest.raises(ConfigError, match="disease_4_grader v1: bfloat16 grades agree"):
        inference.load_grader(grader_card, registry, settings=bfloat16)


def test_the_shipped_bfloat16_record_covers_the_active_models(registry: ModelRegistry) -> None:
    record = inference.read_precision_record(registry.models_dir, "cpu")
    for model_id, card in registry.active_cards().items():
        assert record.get(model_id, {}).get("sha256") == card.sha256, (
            f"{model_id} {card.version}: re-measure with python models/evaluate.py "
            "--compare-bfloat16"
        )


def _pools_and_result(items: list[int]) -> tuple[int, list[int]]:
    from farm_platform.ml import pixels

    pools = len(pixels._pools)
    return pools, inference.parallel_map(abs, items)


def test_a_forked_child_decodes_on_its_own_pool(monkeypatch) -> None:
    import multiprocessing

    monkeypatch.setattr("farm_platform.ml.pixels._threads", 2)
    assert inference.parallel_map(abs, [-1, -2, -3]) == [1, 2, 3]  # the parent's pool exists
    with multiprocessing.get_context("fork").Pool(1) as child:
        # Inherited pool threads do not exist in the child: work handed to them may wait
        # forever, so the child starts without the parent's pools.
        pools, result = child.apply_async(_pools_and_result, ([-4, -5, -6],)).get(timeout=60)
    assert (pools, result) == (0, [4, 5, 6])


# ---------------------------------------------------------------------------------------
# Detector figures per stratum, and grader figures over every detection (issue 15)


def test_stratum_table_scores_perfect_split_and_missed_detections() -> None:
    evaluate = _evaluate_module()
    strata = evaluate.render_strata(seed=7, per_cell=1)
    data = strata.data
    assert {s["size"] for s in strata.strata} == set(evaluate.STRATA_SIZES)
    assert {s["severity"] for s in strata.strata} == set(evaluate.STRATA_SEVERITIES)
    sizes = [s["size"] for s in strata.strata]
    assert [img.shape[:2] for img in data.images] == [(size, size) for size in sizes]
    # Boxes are in the photo's own pixels: a 640 px photo has boxes beyond 256.
    big = [float(b.max()) for b, size in zip(data.boxes, sizes, strict=True) if size == 640]
    assert max(big) > 256

    def detections(boxes: np.ndarray) -> list:
        return [inference.Detection(*map(float, box), 1.0) for box in boxes]

    perfect = evaluate.stratum_table([detections(b) for b in data.boxes], data, strata.strata)
    kinds = {r["stratum"] for r in perfect}
    assert kinds == {"size", "severity", "leaves", "size x severity", "size x leaves"}
    assert {r["value"] for r in perfect if r["stratum"] == "severity"} == {0, 1, 2, 3}
    assert sum(r["photos"] for r in perfect if r["stratum"] == "size") == len(data.images)
    for row in perfect:
        assert (row["f1"], row["count_error"], row["abs_count_error"]) == (1.0, 0.0, 0.0)
        assert row["meets_targets"]

    # Each leaf split in two halves along x (a half has IoU 0.5 with its leaf at best, so at
    # most one of the two matches): F1 drops and the count doubles.
    def halves(boxes: np.ndarray) -> list:
        out = []
        for x0, y0, x1, y1 in boxes:
            mid = (x0 + x1) / 2
            out += [(x0, y0, mid, y1), (mid, y0, x1, y1)]
        return detections(np.array(out).reshape(-1, 4))

    split = evaluate.stratum_table([halves(b) for b in data.boxes], data, strata.strata)
    for row in split:
        assert 0.0 <= row["f1"] < 1.0 or row["true_leaves"] == 0
        leaves_per_photo = row["true_leaves"] / row["photos"]
        assert row["count_error"] == pytest.approx(leaves_per_photo, abs=1e-3)
        assert row["abs_count_error"] == pytest.approx(leaves_per_photo, abs=1e-3)
        if leaves_per_photo > evaluate.TARGET_OVERCOUNT:
            assert not row["meets_targets"]

    missed = evaluate.stratum_table([[] for _ in data.boxes], data, strata.strata)
    for row in missed:
        if row["true_leaves"]:
            assert row["f1"] == 0.0 and row["count_error"] < 0 and not row["meets_targets"]


def test_eval_family_strata_cover_small_photos_and_score_their_own_boxes() -> None:
    """The evaluation family (issue 25) through the same stratum table: 96 and 128 px
    photos, boxes in the photo's pixels, its true boxes scored perfect."""
    evaluate = _evaluate_module()
    strata = evaluate.render_strata(seed=7, per_cell=1, sizes=(96, 128), renderer="eval")
    data = strata.data
    assert [img.shape[:2] for img in data.images] == [(s["size"],) * 2 for s in strata.strata]
    assert len(data.images) == 2 * len(evaluate.STRATA_SEVERITIES) * len(evaluate.LEAF_COUNT_BINS)
    rows = evaluate.stratum_table(
        [[inference.Detection(*map(float, box), 1.0) for box in b] for b in data.boxes],
        data,
        strata.strata,
    )
    assert {r["value"] for r in rows if r["stratum"] == "size"} == {96, 128}
    assert all(r["f1"] == 1.0 and r["meets_targets"] for r in rows)
    assert all(g.shape == (len(b), 5) for g, b in zip(data.grades, data.boxes, strict=True))


def test_grader_figures_count_false_detections_as_wrong() -> None:
    evaluate = _evaluate_module()
    truth = np.array([2, 1, -1, 0, -1])  # -1: a detection matched to no true leaf
    predicted = np.array([2, 3, 1, 0, 0])
    figures = evaluate.all_detections_metrics(predicted, truth)
    assert figures == {"n": 5, "false_detections": 2, "exact": 0.4, "within_one": 0.4}
