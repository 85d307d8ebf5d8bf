"""Where the models run: the torch device, dtype and threads of the inference resource, the
decode pool, the bfloat16 rule, and the evaluation's figures per stratum (fast: CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
from models_support import evaluate_module

from farm_platform.admin.configured import configured_registry
from farm_platform.ml.registry import (
    ModelRegistry,
)

torch = pytest.importorskip("torch")
inference = pytest.importorskip("farm_platform.ml.inference")


# ---------------------------------------------------------------------------------------
# Device, precision and the decode pool (issue 17)


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


@pytest.mark.parametrize(
    ("setting", "expected"), [(None, "PASSIVE"), ("", "PASSIVE"), ("active", "active")]
)
def test_torch_loads_with_the_openmp_wait_policy(setting, expected) -> None:
    """Every torch import of the platform comes through farm_platform.ml, which puts the
    default into the process's environment first (OpenMP reads it once, when torch loads;
    child processes inherit it); a value the environment sets is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if setting is not None:
        env["OMP_WAIT_POLICY"] = setting
    probe = (
        "import subprocess, sys, farm_platform.ml; "
        "seen = subprocess.run(['sh', '-c', 'printf %s $OMP_WAIT_POLICY'], "
        "capture_output=True, text=True).stdout; print('torch' in sys.modules, seen)"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert output == ["False", expected]


def test_a_wait_policy_openmp_would_ignore_is_refused(monkeypatch) -> None:
    from farm_platform import config_values
    from farm_platform.config import ConfigError
    from farm_platform.ml.settings import InferenceSettings

    assert config_values.omp_wait_policy(" passive ") == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "spin")
    with pytest.raises(ConfigError, match="OMP_WAIT_POLICY='spin' is not an OpenMP wait policy"):
        inference.load_detector(configured_registry().detector(), settings=InferenceSettings())


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
    evaluate = evaluate_module()
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
    evaluate = evaluate_module()
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
    evaluate = evaluate_module()
    truth = np.array([2, 1, -1, 0, -1])  # -1: a detection matched to no true leaf
    predicted = np.array([2, 3, 1, 0, 0])
    figures = evaluate.all_detections_metrics(predicted, truth)
    assert figures == {"n": 5, "false_detections": 2, "exact": 0.4, "within_one": 0.4}
