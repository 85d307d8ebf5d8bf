"""ONNX and TorchScript cards (issue 42, part 1): the shipped models exported as a team
would, registered through `models add`, give the state_dict models' outputs; each contract
error is one line naming the card's field, and nothing is registered."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from fresh_python import fresh_python
from test_model_versions import snapshot

from farm_platform import cli
from farm_platform.admin.configured import configured_registry
from farm_platform.admin.model_versions import add_model
from farm_platform.layout import ImageKey
from farm_platform.ml import inference
from farm_platform.ml.registry import ModelRegistry, ModelRegistryError, sha256_file
from farm_platform_dev.model_export import export_model

# Exported and state_dict models run different kernels (onnxruntime's, TorchScript's
# graph): boxes agree within this many pixels, scores and confidences within this.
BOX_TOLERANCE_PX = 1e-3
SCORE_TOLERANCE = 1e-5
SHIPPED = configured_registry()
GRADER_ID = "disease_0_grader"


class BoxesDetector(torch.nn.Module):
    """The shipped detector with its decoding inside: boxes (N, K, 4) in input pixels and
    scores (N, K) after its 3x3 max-pool NMS, K = max_detections, unthresholded."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector, self.k = detector, detector.max_detections

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heat_logits, size, offset = self.detector(x)
        heat = torch.sigmoid(heat_logits)
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
        n, _, h, w = heat.shape
        scores, index = peaks.reshape(n, -1).topk(self.k, dim=1)
        at = index.unsqueeze(1).expand(n, 2, self.k)
        wh = size.reshape(n, 2, -1).gather(2, at).clamp(min=0) * self.detector.size_scale
        off = offset.reshape(n, 2, -1).gather(2, at)
        cx = (index % w + off[:, 0]) * self.detector.stride
        cy = (torch.div(index, w, rounding_mode="floor") + off[:, 1]) * self.detector.stride
        box = [cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2]
        return torch.stack(box, dim=2), scores


class PermutedGrader(torch.nn.Module):
    """A grader trained with another class order: its class j is the shipped class perm[j];
    with `nhwc_bgr` it takes NHWC BGR pixels 0..255 and gives probabilities."""

    def __init__(self, grader: torch.nn.Module, perm: list[int], nhwc_bgr: bool = False):
        super().__init__()
        self.grader, self.perm, self.nhwc_bgr = grader, perm, nhwc_bgr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc_bgr:
            x = x.permute(0, 3, 1, 2).flip(1) / 255.0
        logits = self.grader(x)[:, self.perm]
        return torch.softmax(logits, dim=1) if self.nhwc_bgr else logits


class RawDetector(torch.nn.Module):
    """Fixed per-anchor predictions (cx, cy, w, h, leaf logit, weed logit) for every image."""

    def __init__(self, predictions: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("predictions", predictions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions.unsqueeze(0).expand(x.shape[0], -1, -1) + 0 * x.mean()


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


# Input pixels of a 256x256 letterbox; anchor 1 overlaps anchor 0 (IoU 0.82), anchor 3 is
# a weed, anchor 4 is below the score threshold: only anchors 0 and 2 are leaves.
RAW_ANCHORS = [
    ((30, 80, 40, 40), 0.9, 0.01),
    ((32, 82, 40, 40), 0.8, 0.01),
    ((120, 120, 40, 40), 0.6, 0.01),
    ((220, 180, 40, 40), 0.1, 0.95),
    ((170, 100, 40, 40), 0.2, 0.01),
]


def version_folder(root: Path, model_id: str, weights: Path, **fields) -> Path:
    """A new version folder (card + weights) of `model_id`, its card from v1's plus `fields`."""
    card = json.loads(
        (SHIPPED.models_dir / model_id / SHIPPED.versions(model_id)[-1] / "card.json").read_text()
    )
    del card["architecture"], card["architecture_kwargs"]
    card.update(version=f"x{len(list(root.glob('*')))}", weights=weights.name, metrics={})
    card.update(
        sha256=sha256_file(weights), created_at=dt.datetime.now(dt.UTC).isoformat(), **fields
    )
    folder = root / f"{model_id}-{card['version']}"
    folder.mkdir(parents=True)
    os.link(weights, folder / weights.name)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    simulate = pytest.importorskip("farm_platform_dev.simulate")
    arrays = [inference.decode_png(s.png) for s in simulate.render_training_images(2000, 6)]
    # Not square: boxes scale back per axis.
    return [*arrays, arrays[0][:192], arrays[1][:, :200]]


@pytest.fixture(scope="module")
def crops(photos) -> tuple[pl.DataFrame, list[np.ndarray]]:
    """The shipped detector's `leaf_crops` rows and crops of the photos."""
    detector = inference.load_detector(SHIPPED.detector())
    keyed = [(ImageKey(f"P{i}", dt.date(2024, 5, 1)), p) for i, p in enumerate(photos)]
    rows, cut = inference.crop_leaves(keyed, detector, SHIPPED.detector(), "file:///unused")
    assert len(cut) > 40
    return rows, cut


def _register(models_dir: Path, folder: Path):
    """`farm-platform models add FOLDER`, then `models list`: what they printed, and the card."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["models", "--models-dir", str(models_dir), "add", str(folder)]) == 0
        assert cli.main(["models", "--models-dir", str(models_dir), "list"]) == 0
    card = json.loads((folder / "card.json").read_text())
    return printed.getvalue(), ModelRegistry(models_dir).card(card["id"], card["version"])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_detector_finds_the_state_dict_detectors_leaves(fmt, photos, models_dir, tmp_path):
    shipped = inference.load_detector(SHIPPED.detector())
    suffix = "onnx" if fmt == "onnx" else "pt"
    weights = export_model(
        BoxesDetector(shipped),
        torch.rand(2, 3, 256, 256),
        tmp_path / f"d.{suffix}",
        fmt,
        outputs=["boxes", "scores"],
    )
    output = {"form": "boxes", "score_threshold": shipped.score_threshold, "max_detections": 20}
    folder = version_folder(
        tmp_path / "in", "leaf_detector", weights, format=fmt, input={}, output=output
    )
    printed, card = _register(models_dir, folder)
    assert f"loads; contract on a probe batch: {fmt}: probe batch of 2 256x256" in printed
    assert "leaves found per probe photo" in printed
    assert f" {card.version}   " in printed and f"[{fmt}]" in printed  # models list
    exported = inference.load_detector(card, ModelRegistry(models_dir))
    assert isinstance(exported, inference.DetectorRunner)
    expected = inference.detect_leaves(photos, shipped)
    got = inference.detect_leaves(photos, exported)
    assert [len(d) for d in got] == [len(d) for d in expected] and sum(map(len, got)) > 40
    for mine, theirs in zip(got, expected, strict=True):
        boxes = np.array([[d.x0, d.y0, d.x1, d.y1] for d in mine])
        np.testing.assert_allclose(
            boxes, [[d.x0, d.y0, d.x1, d.y1] for d in theirs], atol=BOX_TOLERANCE_PX
        )
        np.testing.assert_allclose(
            [d.score for d in mine], [d.score for d in theirs], atol=SCORE_TOLERANCE
        )


@pytest.mark.parametrize(
    ("fmt", "nhwc_bgr"),
    [("onnx", False), ("torchscript", False), ("onnx", True)],
    ids=["onnx-logits", "torchscript-logits", "onnx-nhwc-bgr-probabilities"],
)
def test_a_grader_with_another_class_order_grades_identically(
    fmt, nhwc_bgr, crops, models_dir, tmp_path
):
    card_v1 = SHIPPED.active_card(GRADER_ID)
    shipped = inference.load_grader(card_v1)
    perm = [2, 0, 3, 1]
    example = torch.rand(2, 48, 48, 3) * 255 if nhwc_bgr else torch.rand(2, 3, 48, 48)
    weights = export_model(
        PermutedGrader(shipped, perm, nhwc_bgr), example, tmp_path / "g.bin", fmt
    )
    model_input = {"layout": "NHWC", "channel_order": "BGR", "scale": 1.0} if nhwc_bgr else {}
    output = {"form": "probabilities" if nhwc_bgr else "logits", "label_map": perm}
    folder = version_folder(
        tmp_path / "in", GRADER_ID, weights, format=fmt, input=model_input, output=output
    )
    _, card = _register(models_dir, folder)
    rows, crops = crops
    expected = inference.grade_crops(crops, rows, shipped, card_v1)
    got = inference.grade_crops(
        crops, rows, inference.load_grader(card, ModelRegistry(models_dir)), card
    )
    assert got["predicted_grade"].to_list() == expected["predicted_grade"].to_list()
    assert len(set(got["predicted_grade"].to_list())) > 1
    np.testing.assert_allclose(
        got["confidence"].to_numpy(), expected["confidence"].to_numpy(), atol=SCORE_TOLERANCE
    )


def test_raw_predictions_get_threshold_class_filter_and_nms(models_dir, tmp_path):
    predictions = torch.tensor(
        [[*box, _logit(leaf), _logit(weed)] for box, leaf, weed in RAW_ANCHORS]
    )
    weights = export_model(
        RawDetector(predictions), torch.rand(1, 3, 256, 256), tmp_path / "raw.pt", "torchscript"
    )
    output = {
        "form": "raw",
        "box_format": "cxcywh",
        "scores": "logits",
        "classes": [0],
        "iou_threshold": 0.5,
    }
    model_input = {"resize": "letterbox", "pad_value": 114, "batch": 1}
    folder = version_folder(
        tmp_path / "in",
        "leaf_detector",
        weights,
        format="torchscript",
        input=model_input,
        output=output,
    )
    _, card = _register(models_dir, folder)
    runner = inference.load_detector(card, ModelRegistry(models_dir))
    # 192x256 photos: letterboxed at scale 1 with 32 px above, boxes come back 32 px up.
    found = inference.detect_leaves([np.zeros((192, 256, 3), np.uint8)] * 3, runner)
    for detections in found:
        assert [(d.x0, d.y0, d.x1, d.y1) for d in detections] == [
            (10, 28, 50, 68),
            (100, 68, 140, 108),
        ]
        np.testing.assert_allclose([d.score for d in detections], [0.9, 0.6], atol=1e-6)


def _grader_folder(
    tmp_path: Path, fmt: str = "onnx", size: int = 48, static: bool = False, **card
) -> Path:
    grader = inference.load_grader(SHIPPED.active_card(GRADER_ID))
    weights = export_model(
        grader, torch.rand(1, 3, size, size), tmp_path / "g.bin", fmt, static=static
    )
    card.setdefault("format", fmt)
    card.setdefault("input", {})
    card.setdefault("output", {"form": "logits", "label_map": [0, 1, 2, 3]})
    return version_folder(tmp_path / "in", GRADER_ID, weights, **card)


def _raw_folder(tmp_path: Path, **output) -> Path:
    weights = export_model(
        RawDetector(torch.zeros(3, 6)), torch.rand(1, 3, 256, 256), tmp_path / "r.pt", "torchscript"
    )
    return version_folder(
        tmp_path / "in", "leaf_detector", weights, format="torchscript", input={}, output=output
    )


CONTRACT_ERRORS = {
    "wrong-input-size": (
        lambda t: _grader_folder(t, static=True, input_size=[64, 64]),
        "input_size: the card says [64, 64]",
    ),
    "nhwc-declared-nchw-graph": (
        lambda t: _grader_folder(t, static=True, input={"layout": "NHWC"}),
        "input.layout: declared NHWC",
    ),
    "nhwc-declared-torchscript-nchw": (
        lambda t: _grader_folder(t, "torchscript", input={"layout": "NHWC"}),
        "input.layout: declared NHWC, but the model runs on NCHW",
    ),
    "missing-label-map": (
        lambda t: _grader_folder(t, output={"form": "logits"}),
        "'output.label_map' is missing",
    ),
    "label-map-of-3-for-4-classes": (
        lambda t: _grader_folder(t, output={"form": "logits", "label_map": [0, 1, 2]}),
        "output.label_map: maps 3 classes, but the model gives 4",
    ),
    "logits-declared-probabilities": (
        lambda t: _grader_folder(t, output={"form": "probabilities", "label_map": [0, 1, 2, 3]}),
        "output.form: declared probabilities",
    ),
    "raw-declared-boxes": (lambda t: _raw_folder(t, form="boxes"), "output.form: declared 'boxes'"),
    "class-outside-the-predictions": (
        lambda t: _raw_folder(t, form="raw", classes=[2]),
        "output.classes: names class 2",
    ),
    "wrong-input-dtype": (
        lambda t: _grader_folder(t, static=True, input={"dtype": "uint8", "scale": 1}),
        "input.dtype: the card says uint8",
    ),
    "contract-on-a-state-dict-card": (
        lambda t: _grader_folder(t, format="state_dict"),
        "'input' is for onnx and torchscript cards",
    ),
}


@pytest.mark.parametrize("case", CONTRACT_ERRORS, ids=list(CONTRACT_ERRORS))
def test_a_contract_error_is_one_line_naming_the_field_and_registers_nothing(
    case, models_dir, tmp_path, capsys
):
    make, words = CONTRACT_ERRORS[case]
    folder = make(tmp_path)
    before = snapshot(models_dir)
    with pytest.raises(ModelRegistryError) as caught:
        add_model(folder, ModelRegistry(models_dir), activate=True)
    assert words in str(caught.value), str(caught.value)
    args = ["models", "--models-dir", str(models_dir), "add", str(folder), "--activate"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert snapshot(models_dir) == before


def test_a_torchscript_archive_with_a_pickled_callable_is_refused(models_dir, tmp_path):
    good = _grader_folder(tmp_path, "torchscript")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    archive = zipfile.ZipFile(good / "g.bin")
    members = {name: archive.read(name) for name in archive.namelist()}
    data = next(name for name in members if name.endswith("/data.pkl"))
    members[data] = pickle.dumps(Payload(), protocol=2)
    evil = tmp_path / "evil.bin"
    with zipfile.ZipFile(evil, "w") as out:
        for name, raw in members.items():
            out.writestr(name, raw)
    folder = version_folder(
        tmp_path / "in2",
        GRADER_ID,
        evil,
        format="torchscript",
        input={},
        output={"form": "logits", "label_map": [0, 1, 2, 3]},
    )
    with pytest.raises(
        ModelRegistryError, match="is not a TorchScript archive: Unknown type name 'posix.system'"
    ):
        add_model(folder, ModelRegistry(models_dir))
    assert not marker.exists()


def test_the_shipped_models_do_not_import_onnxruntime() -> None:
    code = (
        "import sys, numpy as np\n"
        "from farm_platform.ml import inference\n"
        "from farm_platform import config\nfrom farm_platform.ml.registry import ModelRegistry\n"
        "r = ModelRegistry(config.REPO_MODELS_DIR)\n"
        "photo = np.zeros((256, 256, 3), np.uint8)\n"
        "inference.detect_leaves([photo], inference.load_detector(r.detector()))\n"
        "[inference.load_grader(r.grader_for(f'disease_{k}')) for k in range(5)]\n"
        "assert not {'onnxruntime', 'onnx'} & set(sys.modules), 'onnx was imported'\n"
    )
    fresh_python(code)
