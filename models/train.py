"""Train the leaf detector and the five disease graders on simulator images (CPU only).

    python models/train.py [--only leaf_detector|disease_3_grader|graders|all] [--seed N]
                           [--version v1] [--threads 2] [--no-activate] [--out DIR]
                           [--robust-images 800 | --plain-detector]
                           [--randomized-images 1600] [--detector-epochs N]
    python models/train.py --coco ANNOTATIONS.json --grades GRADES.csv|GRADE_FOLDERS
                           --out DIR [--version t1] [--detector-epochs N] [--grader-epochs N]

With --coco / --grades the architectures train on a team's labelled data instead of the
simulator (models/train_labelled.py says how).

Writes `models/<model_id>/<version>/{weights.pt,card.json}` (card with sha256, training
description and held-out metrics) and makes the new versions active in `registry.json`.
With `--out DIR` the folders go to `DIR/<model_id>/<version>/` instead, to be registered
with `farm-platform models add DIR/<model_id>/<version>`.
Training and held-out images come from different simulator seeds.

The detector (from v2) also trains on `--robust-images` photos rendered at other sizes
(128 to 640 px, scaled to its input as inference does, so lesions and spots are larger or
smaller relative to the leaf) and half of them with every leaf at one severity grade, and
every training photo gets sensor noise of a random strength, for 14 epochs.
`--plain-detector` is v1's recipe (the 1,600 photos at 256 px, flips and transposition
only, 10 epochs).
`--randomized-images 1600 --detector-epochs 12` is issue 25's robust recipe (the detector
v3): as many more
photos drawn at 96 to 640 px and passed through `models/randomize.py` (shadows, residue,
lighting, blur, noise, JPEG, zoom), for the detector and the graders.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import evaluate  # models/evaluate.py, beside this script (its folder is on sys.path)
import numpy as np
import torch
from train_data import (
    GRADER_SIZE,
    HELDOUT_IMAGES,
    IMAGE_SIZE,
    RANDOMIZED_SEED,
    RANDOMIZED_SIZES,
    ROBUST_IMAGES,
    ROBUST_SEED,
    ROBUST_SIZES,
    TRAIN_IMAGES,
    TrainingPhotos,
    grader_crops,
    log,
    training_photos,
)
from train_nets import (
    DETECTOR_EPOCHS,
    DETECTOR_KWARGS,
    GRADER_KWARGS,
    PLAIN_DETECTOR_EPOCHS,
    _train_detector_job,
    train_detector,
    train_graders,
)

from farm_platform.config import REPO_MODELS_DIR as MODELS_DIR
from farm_platform.ml.architectures import LeafDetector
from farm_platform.ml.registry import (
    DETECTOR_MODEL_ID,
    DISEASE_TYPES,
    ModelCard,
    ModelRegistry,
    grader_model_id,
    sha256_file,
    write_json_atomic,
)

# Readable names the report shows beside disease_k: what the simulator draws for each
# (farm_platform_dev/simulate/render.py).
DISEASE_NAMES = {
    "disease_0": "brown spot",
    "disease_1": "yellow blotch",
    "disease_2": "powdery mildew",
    "disease_3": "vein streak",
    "disease_4": "tip blight",
}


def write_model(
    model: torch.nn.Module, card: dict[str, Any], version: str, models_dir: Path = MODELS_DIR
) -> ModelCard:
    folder = models_dir / card["id"] / version
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / card["weights"]
    # Plain state_dict, loaded with weights_only=True.
    torch.save({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, weights)
    card["sha256"] = sha256_file(weights)
    card_path = folder / "card.json"
    write_json_atomic(card_path, card)
    return ModelCard.from_file(card_path)


def base_card(
    model_id: str,
    version: str,
    task: str,
    disease: str | None,
    architecture: str,
    kwargs: dict,
    input_size: list[int],
) -> dict[str, Any]:
    return {
        "id": model_id,
        "version": version,
        "task": task,
        "disease_type": disease,
        **({"disease_name": DISEASE_NAMES[disease]} if disease else {}),
        "grades": [0, 1, 2, 3] if task == "disease_grader" else None,
        "input_size": input_size,
        "architecture": architecture,
        "architecture_kwargs": kwargs,
        "weights": "weights.pt",
        "sha256": "0" * 64,
        "training": {},
        "metrics": {},
        "created_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="all", help="all | leaf_detector | graders | disease_<k>_grader"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the training run")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES)
    parser.add_argument("--heldout-images", type=int, default=HELDOUT_IMAGES)
    parser.add_argument(
        "--threads",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="CPU threads (with 2+ and all models, detector and graders train side by side)",
    )
    parser.add_argument(
        "--no-activate",
        action="store_true",
        help="write the model files without switching registry.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write <model_id>/<version>/ here (not activated), for `farm-platform models add`",
    )
    parser.add_argument(
        "--robust-images",
        type=int,
        default=ROBUST_IMAGES,
        help="the detector's extra photos at other sizes and severities (seed 4000)",
    )
    parser.add_argument(
        "--randomized-images",
        type=int,
        default=0,
        help=f"photos through models/randomize.py (seed {RANDOMIZED_SEED}, sizes "
        f"{RANDOMIZED_SIZES[0]}-{RANDOMIZED_SIZES[-1]} px) for the detector and the graders "
        "(issue 25's robust recipe: 1600)",
    )
    parser.add_argument(
        "--plain-detector",
        action="store_true",
        help="v1's detector recipe: no extra photos, no noise or gain",
    )
    parser.add_argument(
        "--detector-epochs",
        type=int,
        default=None,
        help=f"default {DETECTOR_EPOCHS} ({PLAIN_DETECTOR_EPOCHS} with --plain-detector)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import train_labelled  # models/train_labelled.py; it imports this module

    cli = parser()
    train_labelled.add_arguments(cli)
    args = cli.parse_args(argv)
    if train_labelled.labelled(args):
        args.detector_epochs = args.detector_epochs or DETECTOR_EPOCHS
        return train_labelled.train_from_datasets(args)
    if args.plain_detector:
        args.robust_images = 0
    if args.detector_epochs is None:
        args.detector_epochs = PLAIN_DETECTOR_EPOCHS if args.plain_detector else DETECTOR_EPOCHS
    targets = chosen_models(args.only, cli)
    # On 2 shared cores one process with 2 intra-op threads trains ~3x slower than 1 thread
    # (threads wait for each other whenever another process holds a core), so with 2 cores
    # the detector trains in a child process while this one trains the graders, 1 thread each.
    side_by_side = args.threads >= 2 and DETECTOR_MODEL_ID in targets and len(targets) > 1
    torch.set_num_threads(1 if side_by_side else args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    t0 = time.perf_counter()
    photos = training_photos(args, targets, side_by_side)
    registry = ModelRegistry(MODELS_DIR)
    written = train_models(args, targets, photos, side_by_side)
    diseases = [d for d in DISEASE_TYPES if grader_model_id(d) in targets]
    score_on_heldout(written, registry, photos.heldout, diseases)
    total = round(time.perf_counter() - t0, 1)
    out_dir = args.out or MODELS_DIR
    for model_id, (model, card) in written.items():
        card["training"]["total_run_seconds"] = total
        card["training"]["render_seconds"] = round(photos.render_seconds, 1)
        written_card = write_model(model, card, args.version, out_dir)
        size = (out_dir / model_id / args.version / written_card.weights).stat().st_size
        log(f"wrote {model_id} {args.version}: {size / 1024:.0f} KiB, sha256 {written_card.sha256}")
        if args.out is None and not args.no_activate:
            if not registry.registry_path.exists():
                write_json_atomic(registry.registry_path, {"active": {}})
            registry.set_active(model_id, args.version)
    log(f"done in {total:.0f} s; registry: {json.dumps(registry.active_versions())}")
    return 0


def chosen_models(only: str, cli: argparse.ArgumentParser) -> list[str]:
    """The model ids `--only` names."""
    grader_ids = [grader_model_id(d) for d in DISEASE_TYPES]
    if only == "all":
        return [DETECTOR_MODEL_ID, *grader_ids]
    if only == "graders":
        return grader_ids
    if only in (DETECTOR_MODEL_ID, *grader_ids):
        return [only]
    cli.error(f"--only {only!r}: expected all, graders, leaf_detector or disease_<k>_grader")
    raise AssertionError("unreachable")  # cli.error exits


def train_models(
    args: argparse.Namespace,
    targets: Sequence[str],
    photos: TrainingPhotos,
    side_by_side: bool,
) -> dict[str, tuple[torch.nn.Module, dict]]:
    """model id → (trained model, its card): the detector in a child process while this
    one trains the graders when `side_by_side`."""
    written: dict[str, tuple[torch.nn.Module, dict]] = {}
    detector_job = None
    detector_result: tuple[LeafDetector, dict] | None = None
    detector_args = (
        photos.detector_images,
        photos.detector_boxes,
        args.seed,
        not args.plain_detector,
        args.detector_epochs,
    )
    pool = ProcessPoolExecutor(max_workers=1) if side_by_side else None
    if pool is not None:
        detector_job = pool.submit(_train_detector_job, *detector_args)
    elif DETECTOR_MODEL_ID in targets:
        detector_result = train_detector(*detector_args)
    diseases = [d for d in DISEASE_TYPES if grader_model_id(d) in targets]
    if diseases:
        written.update(train_grader_cards(args, photos, diseases))
    if detector_job is not None and pool is not None:
        state, info = detector_job.result()
        pool.shutdown()
        model = LeafDetector(**DETECTOR_KWARGS)
        model.load_state_dict(state)
        detector_result = (model.eval(), info)
    if DETECTOR_MODEL_ID in targets:
        assert detector_result is not None
        written[DETECTOR_MODEL_ID] = (
            detector_result[0],
            detector_card(args, photos, detector_result[1]),
        )
    return written


def train_grader_cards(
    args: argparse.Namespace, photos: TrainingPhotos, diseases: Sequence[str]
) -> dict[str, tuple[torch.nn.Module, dict]]:
    t = time.perf_counter()
    _, labels = grader_crops(photos.images, photos.boxes, photos.grades, None)
    log(
        f"{len(labels)} leaves for the graders ({time.perf_counter() - t:.0f} s); grade counts "
        + " ".join(
            f"{d[-1]}:{np.bincount(labels[:, k], minlength=4).tolist()}"
            for k, d in enumerate(DISEASE_TYPES)
        )
    )
    graders, info = train_graders(photos.images, photos.boxes, photos.grades, diseases, args.seed)
    written = {}
    for disease, model in graders.items():
        card = base_card(
            grader_model_id(disease),
            args.version,
            "disease_grader",
            disease,
            "farm_platform.ml.architectures:DiseaseGrader",
            GRADER_KWARGS,
            [GRADER_SIZE, GRADER_SIZE],
        )
        card["training"] = {**photos.description, **info}
        written[grader_model_id(disease)] = (model, card)
    return written


def detector_card(
    args: argparse.Namespace, photos: TrainingPhotos, info: dict[str, Any]
) -> dict[str, Any]:
    card = base_card(
        DETECTOR_MODEL_ID,
        args.version,
        "leaf_detector",
        None,
        "farm_platform.ml.architectures:LeafDetector",
        DETECTOR_KWARGS,
        [IMAGE_SIZE, IMAGE_SIZE],
    )
    card["training"] = {**photos.description, **info}
    if args.robust_images > 0:
        card["training"]["robust_images"] = {
            "count": args.robust_images,
            "seed": ROBUST_SEED,
            "sizes": list(ROBUST_SIZES),
            "severity": "half with every leaf at one grade 0..3, half graded at random",
            "how": "rendered at the size, scaled to image_size as inference does",
        }
    return card


def score_on_heldout(
    written: dict[str, tuple[torch.nn.Module, dict]],
    registry: ModelRegistry,
    heldout: Any,
    diseases: Sequence[str],
) -> None:
    """The new models' held-out metrics into their cards (graders trained alone are scored
    on the active detector's crops), and printed."""
    from farm_platform.ml.inference import detect_leaves

    if DETECTOR_MODEL_ID in written:
        detector = written[DETECTOR_MODEL_ID][0]
    else:
        from farm_platform.ml.inference import load_detector

        detector = load_detector(registry.detector())
    detections = detect_leaves(heldout.images, detector)
    det_metrics, matches = evaluate.detector_metrics(detections, heldout)
    grader_models = {
        d: (
            written[grader_model_id(d)][0],
            ModelCard.from_json({**written[grader_model_id(d)][1], "sha256": "0" * 64}),
        )
        for d in diseases
    }
    g_metrics = evaluate.grader_metrics(grader_models, heldout, detections, matches)
    if DETECTOR_MODEL_ID in written:
        written[DETECTOR_MODEL_ID][1]["metrics"] = {"heldout": det_metrics}
    for disease in diseases:
        written[grader_model_id(disease)][1]["metrics"] = {"heldout": g_metrics[disease]}
    evaluate.print_report({"detector": det_metrics, "graders": g_metrics})


if __name__ == "__main__":
    raise SystemExit(main())
