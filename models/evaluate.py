"""Held-out evaluation of the active leaf detector and disease graders.

    python models/evaluate.py [--seed 2000] [--count 300] [--json out.json]
    python models/evaluate.py --strata [--per-cell 16] [--json out.json]
    python models/evaluate.py --compare-bfloat16 [--device cpu]
    python models/evaluate.py --save-photos heldout.npz   # then, where only torch is:
    python models/evaluate.py --compare-bfloat16 --device cuda --photos heldout.npz

Images come from the simulator with a seed that training never uses. Prints detector
precision / recall / F1 at IoU 0.5, and per disease the exact-grade and within-one
accuracy of the grader on every crop the detector found (a false detection, matched to no
true leaf at IoU >= 0.5, counts as graded wrongly: its crop enters the position means
all the same), on the matched crops only, and on crops cut with the TRUE boxes.

With --strata it renders photos per stratum (photo size 256 / 640 px, scaled to the
detector's input as inference does; every leaf at one severity grade 0..3; leaf count
0-5 / 6-12 / 13-20) and prints F1 and the mean leaf-count error per stratum.

With --compare-bfloat16 it runs the active models in float32 and in bfloat16 on the same
held-out images, prints the detector's F1 in both and each grader's agreement (same grade
on the same crops, those of the float32 detections), and records the figures in
<models>/precision.json: FARM_TORCH_DTYPE=bfloat16 is accepted only for the weights
recorded there as meeting the rule (farm_platform/ml/inference.py, BFLOAT16_*).

Beside it: eval_photos.py (the held-out photos), eval_metrics.py (the figures and their
tables), eval_records.py (precision.json and the drift references).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval_metrics import (
    detector_metrics,
    grader_metrics,
    print_report,
    print_strata,
    stratum_table,
)
from eval_photos import (
    EVAL_HELDOUT_SEED,
    EVAL_STRATA_SEED,
    EVAL_STRATA_SIZES,
    HELDOUT_COUNT,
    HELDOUT_SEED,
    RENDERERS,
    STRATA_PER_CELL,
    STRATA_SEED,
    STRATA_SIZES,
    Heldout,
    Stratified,
    load_heldout,
    render,
    render_eval,
    render_strata,
    save_heldout,
    simulator_fingerprint,
)
from eval_records import compare_bfloat16, record_bfloat16, record_drift_reference

from farm_platform.admin.configured import configured_registry
from farm_platform.ml.inference import (
    PRECISION_RECORD,
    detect_leaves,
    load_detector,
    load_grader,
)
from farm_platform.ml.registry import (
    DETECTOR_MODEL_ID,
    DISEASE_TYPES,
    ModelCard,
    ModelRegistry,
)


def evaluate(
    registry: ModelRegistry,
    data: Heldout,
    only: Sequence[str] | None = None,
    detector_version: str | None = None,
) -> dict[str, Any]:
    detector = load_detector(detector_card(registry, detector_version), registry)
    detections = detect_leaves(data.images, detector, batch_size=32)
    det, matches = detector_metrics(detections, data)
    graders = {}
    for disease in DISEASE_TYPES:
        if only is None or f"{disease}_grader" in only:
            card = registry.grader_for(disease)
            graders[disease] = (load_grader(card), card)
    return {"detector": det, "graders": grader_metrics(graders, data, detections, matches)}


def detector_card(registry: ModelRegistry, version: str | None = None) -> ModelCard:
    """The active leaf detector's card, or that of `version`."""
    if version is None:
        return registry.detector()
    return registry.card(DETECTOR_MODEL_ID, version)


def evaluate_strata(
    registry: ModelRegistry, strata: Stratified, detector_version: str | None = None
) -> list[dict[str, Any]]:
    detector = load_detector(detector_card(registry, detector_version), registry)
    detections = detect_leaves(strata.data.images, detector, batch_size=32)
    return stratum_table(detections, strata.data, strata.strata)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--count", type=int, default=HELDOUT_COUNT)
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="default: $FARM_MODELS_DIR if set, else the repository's models/ (as the platform)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--compare-bfloat16",
        action="store_true",
        help="measure float32 against bfloat16 and record it in <models>/" + PRECISION_RECORD,
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (--compare-bfloat16)")
    parser.add_argument(
        "--strata",
        action="store_true",
        help="the detector's F1 and leaf-count error per photo size, severity and leaf count",
    )
    parser.add_argument("--per-cell", type=int, default=STRATA_PER_CELL, help="with --strata")
    parser.add_argument(
        "--detector-version",
        default=None,
        help="evaluate this leaf_detector version instead of the active one",
    )
    parser.add_argument(
        "--renderer",
        choices=RENDERERS,
        default="training",
        help="training: the simulator the models were trained on (other seeds); eval: the "
        "evaluation family training never sees (farm_platform_dev/eval_render.py)",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="with --strata: photo sizes, comma-separated (default 256,640 for the training "
        "renderer, 96,128,256,640 for eval)",
    )
    parser.add_argument(
        "--size", type=int, default=256, help="without --strata, --renderer eval: photo size"
    )
    parser.add_argument(
        "--save-photos",
        type=Path,
        help="render the held-out photos (--seed, --count) into this .npz and stop",
    )
    parser.add_argument(
        "--photos",
        type=Path,
        help="the held-out photos from a --save-photos file instead of rendering them (with "
        "the --seed and --count they were saved with, which the record names)",
    )
    parser.add_argument(
        "--record-drift-reference",
        action="store_true",
        help="record the active models' output distributions on the held-out photos into "
        "their cards (metrics.drift_reference), which the daily drift checks compare with",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.perf_counter()
    if args.record_drift_reference:
        return record_drift_reference(configured_registry(args.models_dir), args.seed, args.count)
    if args.strata:
        return score_strata(args, started)
    data, label = heldout_photos(args)
    if args.save_photos:
        save_heldout(data, args.save_photos)
        print(f"{label} saved to {args.save_photos}")
        return 0
    registry = configured_registry(args.models_dir)
    if args.compare_bfloat16:
        record = compare_bfloat16(registry, data, args.device)
        print(
            f"held-out: simulator seed {args.seed}, {args.count} images, device {args.device} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        record_bfloat16(record, registry, args.device, args.seed, len(data.pngs))
        return 0
    report = evaluate(registry, data, detector_version=args.detector_version)
    if args.renderer == "training":
        warn_of_a_changed_simulator(registry)
    print(f"{label} ({time.perf_counter() - started:.0f} s)")
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def score_strata(args: argparse.Namespace, started: float) -> int:
    """--strata: the detector's figures per stratum."""
    registry = configured_registry(args.models_dir)
    eval_family = args.renderer == "eval"
    seed = EVAL_STRATA_SEED if eval_family else STRATA_SEED
    default_sizes = EVAL_STRATA_SIZES if eval_family else STRATA_SIZES
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else list(default_sizes)
    strata = render_strata(seed, args.per_cell, sizes, args.renderer)
    card = detector_card(registry, args.detector_version)
    rows = evaluate_strata(registry, strata, args.detector_version)
    print(
        f"strata: {args.renderer} renderer seed {seed}, {len(strata.strata)} photos "
        f"({args.per_cell} per size x severity x leaf-count cell), "
        f"{card.id} {card.version} ({time.perf_counter() - started:.0f} s)"
    )
    print_strata(rows, f"{card.id} {card.version}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"detector": card.version, "renderer": args.renderer, "strata": rows},
                indent=2,
            )
        )
    return 0


def heldout_photos(args: argparse.Namespace) -> tuple[Heldout, str]:
    """The held-out photos the arguments name, and a line that says which they are."""
    if args.renderer == "eval":
        seed = EVAL_HELDOUT_SEED if args.seed == HELDOUT_SEED else args.seed
        label = f"evaluation family: seed {seed}, {args.count} photos of {args.size} px"
        return render_eval(seed, args.count, args.size), label
    if args.photos:
        data = load_heldout(args.photos)
        return data, f"held-out: {len(data.pngs)} images of {args.photos} (seed {args.seed})"
    label = f"held-out: simulator seed {args.seed}, {args.count} images"
    return render(args.seed, args.count), label


def warn_of_a_changed_simulator(registry: ModelRegistry) -> None:
    current = simulator_fingerprint()
    for card in registry.active_cards().values():
        trained_on = card.training.get("simulator_source_sha256")
        if trained_on != current:
            print(
                f"WARNING: {card.id} {card.version} was trained on simulator source "
                f"{trained_on or 'unknown'}, the simulator is now {current}: retrain"
            )


if __name__ == "__main__":
    raise SystemExit(main())
