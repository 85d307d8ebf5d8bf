"""`farm-platform models evaluate | register-dataset | datasets`, and what
`models add` and `models activate` print of evaluations and the gate."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from farm_platform.ml.registry import ModelCard, ModelRegistry

ACTIONS = ("evaluate", "register-dataset", "datasets")


def add_parsers(model_actions: Any) -> None:
    evaluate = model_actions.add_parser(
        "evaluate", help="a version's figures on a labelled dataset (stored beside it)"
    )
    evaluate.add_argument("model_id", help="e.g. leaf_detector or disease_3_grader")
    evaluate.add_argument("version", help="a registered version, e.g. v2")
    evaluate.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="COCO detection .json (detector), grade .csv or grade folders (grader); "
        "default: every registered evaluation dataset of the model's task",
    )
    register = model_actions.add_parser(
        "register-dataset", help="name an evaluation dataset (path and sha256) in the registry"
    )
    register.add_argument("name", help="e.g. eval_leaves")
    register.add_argument("path", type=Path, help="its .json, .csv or grade folders")
    model_actions.add_parser("datasets", help="the registered evaluation datasets")


def run(args: argparse.Namespace, registry: ModelRegistry) -> int:
    from farm_platform.admin import evaluation

    if args.action == "register-dataset":
        entry = evaluation.register_dataset(registry, args.name, args.path)
        print(f"registered dataset {entry.name}: {entry.path} sha256 {entry.sha256}")
        return 0
    if args.action == "datasets":
        for entry in evaluation.registered_datasets(registry):
            print(f"{entry.name:<20} {entry.task:<15} {entry.path}  sha256 {entry.sha256[:12]}")
        return 0
    card = registry.card(args.model_id, args.version)
    if args.dataset is not None:
        from farm_platform.ml.datasets import open_dataset

        dataset = open_dataset(args.dataset)
        records = [
            evaluation.evaluate_and_record(
                registry, card, dataset, evaluation.adhoc_name(args.dataset), str(args.dataset)
            )
        ]
    else:
        records = evaluation.evaluate_registered(registry, card)
        if not records:
            print(f"no registered evaluation dataset for a {card.task}: give --dataset PATH")
            return 1
    for record in records:
        print_record(card, record)
    return 0


def print_record(card: ModelCard, record: Mapping[str, Any]) -> None:
    from farm_platform.ml.evaluation_records import summarize

    print(
        f"{card.id} {card.version} on {record['dataset']} (sha256 "
        f"{record['dataset_sha256'][:12]}): {summarize(record['overall'])}"
    )
    confusion = record["overall"].get("confusion")
    if confusion:
        print("  confusion (rows = true grade, columns = predicted):")
        for grade, row in enumerate(confusion):
            print(f"    {grade}: {' '.join(f'{n:>5}' for n in row)}")
    for attribute, values in record.get("strata", {}).items():
        for value, figures in values.items():
            print(f"  {attribute}={value}: {summarize(figures)}")
    print(f"  stored in {card.id}/{card.version}/evaluations.json as {record['dataset']!r}")


def after_add(registry: ModelRegistry, card: ModelCard) -> None:
    """What `models add` runs once the version is registered: every registered dataset,
    evaluated afresh (figures that came in the version's folder are not taken on trust)."""
    from farm_platform.admin.evaluation import evaluate_registered
    from farm_platform.ml.evaluation_records import EVALUATIONS_FILE

    registry.store.write_json(f"{card.id}/{card.version}/{EVALUATIONS_FILE}", {"evaluations": {}})
    for record in evaluate_registered(registry, card):
        print_record(card, record)


def activate(args: argparse.Namespace, registry: ModelRegistry, model_id: str, version: str) -> int:
    from farm_platform.admin.activation_gate import activate as gated_activate

    done = gated_activate(
        registry, model_id, version, force=getattr(args, "force", False), reason=args.reason
    )
    print(f"activated {model_id} {version} (was {done.previous or 'none'})")
    if done.forced:
        for regression in done.regressions:
            print(f"  FORCED over {regression.describe(done.previous, version)}")
        print(f"  reason recorded in {registry.registry_path}: {args.reason!r}")
    return 0
