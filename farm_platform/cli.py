"""`farm-platform`: the local stack, the synthetic farm and the end-to-end demo."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from farm_platform import settings


def _print_environment(environment: dict[str, str]) -> None:
    for name, value in environment.items():
        print(f"export {name}={value}")


def _stack(args: argparse.Namespace) -> int:
    from farm_platform import stack

    state_dir = Path(args.state_dir) if args.state_dir else None
    if args.action == "up":
        info = stack.stack_up(
            state_dir,
            project=args.project,
            bucket=args.bucket,
            pubsub_port=args.pubsub_port,
            gcs_port=args.gcs_port,
        )
        print(f"# local stack running (state in {info.state_dir}); point the platform at it with:")
        print(f'#   eval "$(farm-platform stack env{_state_dir_flag(args)})"')
        _print_environment(info.environment())
    elif args.action == "env":
        _print_environment(stack.load_stack(state_dir).environment())
    else:
        stopped = stack.stack_down(state_dir)
        print("local stack stopped" if stopped else "no local stack was running")
    return 0


def _state_dir_flag(args: argparse.Namespace) -> str:
    return f" --state-dir {args.state_dir}" if args.state_dir else ""


def _farm_config(args: argparse.Namespace):
    from farm_platform.simulate import FarmConfig

    return FarmConfig(
        positions=args.positions,
        days=args.days,
        start_date=args.start_date,
        seed=args.seed,
        effect=args.effect,
    )


def _simulate(args: argparse.Namespace) -> int:
    from farm_platform.simulate import DroneMessagePublisher, write_farm

    bucket_url = args.bucket or os.environ.get(settings.FARM_BUCKET)
    if not bucket_url:
        raise SystemExit(
            f"simulate needs a bucket: pass --bucket or set {settings.FARM_BUCKET} "
            '(for the local stack: eval "$(farm-platform stack env)")'
        )
    publisher = None
    if args.publish:
        project = os.environ.get(settings.FARM_GCP_PROJECT)
        if not project:
            raise SystemExit(f"--publish needs {settings.FARM_GCP_PROJECT} (and the emulator env)")
        publisher = DroneMessagePublisher(project)
    truth_url = args.truth or str(Path(".farm/ground_truth").resolve())
    summary = write_farm(_farm_config(args), bucket_url, args.field_map, publisher, truth_url)
    print(
        f"simulated {summary.images} images with {summary.leaves} leaves into {summary.bucket_url}"
        f" in {summary.elapsed_seconds:.1f} s\n  field map: {summary.field_map_path}\n"
        f"  ground truth: {summary.truth_url}\n  drone messages published: {summary.published}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from farm_platform.demo import run_demo

    return run_demo(_farm_config(args), workdir=Path(args.workdir))


def _check(args: argparse.Namespace) -> int:
    from farm_platform.quality.gate import run_gate

    return run_gate(workdir=Path(args.workdir) if args.workdir else None)


def _dlq(args: argparse.Namespace) -> int:
    from farm_platform.dead_letters import (
        dead_letter_queue,
        error_of,
        list_dead_letters,
        original_attributes,
        replay_dead_letters,
    )

    project = args.project or os.environ.get(settings.FARM_GCP_PROJECT)
    if not project:
        raise SystemExit(f"dlq needs --project or {settings.FARM_GCP_PROJECT}")
    queue = dead_letter_queue(project, args.subscription)
    if args.action == "list":
        letters = list_dead_letters(queue, args.limit)
        for letter in letters:
            preview = letter.data[:120].decode("utf-8", errors="replace")
            print(f"{letter.publish_time}  {letter.message_id}  error: {error_of(letter)}")
            print(f"    data: {preview!r}  attributes: {original_attributes(letter)}")
        print(f"{len(letters)} dead letter(s) on {args.subscription}")
        return 0
    letters = replay_dead_letters(
        queue,
        args.limit,
        select=lambda letter: args.match in error_of(letter),
        dry_run=args.dry_run,
    )
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {len(letters)} dead letter(s) onto {settings.DRONE_IMAGE_TOPIC}")
    return 0


def _date(value: str) -> dt.date:
    from farm_platform.layout import LayoutError, parse_date

    try:
        return parse_date(value)
    except LayoutError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_farm_options(parser: argparse.ArgumentParser, positions: int, days: int) -> None:
    parser.add_argument("--positions", type=int, default=positions, help="positions (half control)")
    parser.add_argument("--days", type=int, default=days, help="days photographed")
    parser.add_argument(
        "--start-date", type=_date, default=dt.date(2026, 6, 1), metavar="YYYY-MM-DD"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same farm)")
    parser.add_argument(
        "--effect",
        type=float,
        default=0.15,
        help="true treatment effect: extra drop of disease severity per day in the treated area",
    )


# --------------------------------------------------------------------------- model versions
# `models`, `backfill`, `replay`: the new-model-version workflow (README, "New model version").


def _models(args: argparse.Namespace) -> int:
    from farm_platform import model_admin
    from farm_platform.ml.registry import ModelRegistry, ModelRegistryError

    registry = ModelRegistry(args.models_dir)
    try:
        if args.action == "add":
            added = model_admin.add_model(Path(args.path), registry, activate=args.activate)
            card = added.card
            print(f"registered {card.id} {card.version} at {added.path}")
            print(f"  sha256 {card.sha256} verified; loads; dummy forward pass: {added.check}")
            if added.activated:
                print(
                    f"  activated: {card.id} is now {card.version} "
                    f"(registry {registry.registry_path})"
                )
            else:
                print(
                    "  not active; activate with: "
                    f"farm-platform models activate {card.id} {card.version}"
                )
        elif args.action == "activate":
            previous = model_admin.activate_model(args.model_id, args.version, registry)
            print(f"activated {args.model_id} {args.version} (was {previous or 'none'})")
            print("  the model_registry_sensor records the new data version within 30 s;")
            print("  then: farm-platform models stale")
        elif args.action == "list":
            rows = model_admin.list_models(registry)
            for row in rows:
                mark = "*" if row.active else " "
                print(
                    f"{mark} {row.model_id:<18} {row.version:<8} sha256 {row.sha256[:12]}  "
                    f"{row.created_at}  {row.summary}"
                )
                if row.problem:
                    which = "ACTIVE model" if row.active else "model"
                    print(f"    WARNING: {which} unusable: {row.problem}")
            print("(* = active)")
            # Exit 1 when a live model is broken, so scripts and CI notice, not only readers.
            if any(row.active and row.problem for row in rows):
                return 1
        else:
            return _models_stale(args)
    except ModelRegistryError as exc:
        print(f"farm-platform models {args.action}: refused: {exc}", file=sys.stderr)
        return 2
    return 0


def _models_stale(args: argparse.Namespace) -> int:
    from dagster import AssetKey, DagsterInstance

    from farm_platform.model_admin import stale_partitions

    assets = [AssetKey(name) for name in args.asset] if args.asset else None
    with DagsterInstance.get() as instance:
        try:
            stale = stale_partitions(instance, assets)
        except ValueError as exc:
            print(f"farm-platform models stale: {exc}", file=sys.stderr)
            return 2
    for key, partitions in sorted(stale.items()):
        print(f"{key.to_user_string()}: {len(partitions)} stale partition(s)")
        for partition in partitions[: args.limit]:
            print(f"  {partition.partition_key}  {'; '.join(partition.causes)}")
        if len(partitions) > args.limit:
            print(f"  ... {len(partitions) - args.limit} more")
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from dagster import AssetKey, DagsterInstance

    from farm_platform.backfill import BackfillError, launch_backfill, wait_for_backfill

    assets = [AssetKey(name.strip()) for name in args.assets.split(",") if name.strip()]
    positions = [p.strip() for p in args.positions.split(",")] if args.positions else None
    with DagsterInstance.get() as instance:
        try:
            launched = launch_backfill(instance, assets, args.date_from, args.date_to, positions)
            print(
                f"backfill {launched.backfill_id}: {', '.join(a.to_user_string() for a in assets)}"
                f" over {len(launched.partitions)} day partition(s)"
                f" ({launched.skipped_days_without_photo} day(s) without a photo skipped)"
            )
            if not args.wait:
                print(
                    "  the daemon's backfill daemon launches it; "
                    "watch it under Overview > Backfills"
                )
                return 0
            state = wait_for_backfill(
                instance,
                launched.backfill_id,
                timeout_seconds=args.timeout,
                progress=lambda s: print(f"  {s.describe()}", flush=True),
            )
            print(f"backfill {launched.backfill_id} {state.status}")
        except BackfillError as exc:
            print(f"farm-platform backfill: {exc}", file=sys.stderr)
            return 2
    return 0


def _replay(args: argparse.Namespace) -> int:
    from farm_platform.replay import parse_timestamp, replay

    project = args.project or os.environ.get(settings.FARM_GCP_PROJECT)
    if not project:
        raise SystemExit(f"replay needs --project or {settings.FARM_GCP_PROJECT}")
    try:
        since = parse_timestamp(args.since)
    except ValueError as exc:
        raise SystemExit(f"farm-platform replay: {exc}") from None
    path = replay(project, args.subscription, since=since)
    print(
        f"seeked {path} to {since.isoformat()}: messages published since then are delivered again"
    )
    print(
        "  photos the platform already handed to a run are recognized as duplicates "
        "(acknowledged, no new run); use `farm-platform backfill` to re-grade those"
    )
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from farm_platform.field_map import field_map_path, read_field_map
    from farm_platform.ml.registry import ModelRegistry
    from farm_platform.reconcile import reconcile
    from farm_platform.resources import BucketResource, WarehouseResource

    missing = [
        name for name in (settings.FARM_BUCKET, settings.FARM_WAREHOUSE) if not os.environ.get(name)
    ]
    if missing:
        print(f"farm-platform reconcile: set {', '.join(missing)}", file=sys.stderr)
        return 2
    graders = [
        (card.id, card.version)
        for card in ModelRegistry().active_cards().values()
        if card.task == "disease_grader"
    ]
    try:
        result = reconcile(
            BucketResource(url=os.environ[settings.FARM_BUCKET]),
            WarehouseResource(url=os.environ[settings.FARM_WAREHOUSE]),
            list(read_field_map(field_map_path())),
            args.date_from,
            args.date_to,
            graders,
        )
    except ValueError as exc:
        print(f"farm-platform reconcile: {exc}", file=sys.stderr)
        return 2
    print(f"{result.in_bucket} photo(s) in the bucket from {args.date_from} to {args.date_to}")
    print(
        f"{len(result.recorded)} never announced: recorded in the arrival queue, the sensor "
        "hands them to runs"
    )
    for key in result.recorded[: args.limit]:
        print(f"  {key.date_str} {key.position_id}")
    print(
        f"{len(result.ungraded)} ingested without grades of the active models: "
        "re-grade them with `farm-platform backfill`"
    )
    for key in result.ungraded[: args.limit]:
        print(f"  {key.date_str} {key.position_id}")
    return 0


def _add_model_version_commands(commands: Any) -> None:
    from farm_platform.ml.registry import FARM_MODELS_DIR

    models_parser = commands.add_parser("models", help="register, list, activate model versions")
    models_parser.add_argument(
        "--models-dir",
        default=None,
        help=f"models folder (default: ${FARM_MODELS_DIR} or ./models)",
    )
    model_actions = models_parser.add_subparsers(dest="action", required=True)
    add_parser = model_actions.add_parser("add", help="validate and register a model folder")
    add_parser.add_argument("path", help="folder with card.json and the weights")
    add_parser.add_argument("--activate", action="store_true", help="also make it the live version")
    model_actions.add_parser("list", help="every registered version (* = active)")
    activate_parser = model_actions.add_parser("activate", help="make a version the live one")
    activate_parser.add_argument("model_id")
    activate_parser.add_argument("version")
    stale_parser = model_actions.add_parser(
        "stale", help="stale partitions, from Dagster ($DAGSTER_HOME)"
    )
    stale_parser.add_argument(
        "--asset", action="append", help="asset key (repeatable); default all"
    )
    stale_parser.add_argument("--limit", type=int, default=20, help="partitions shown per asset")
    models_parser.set_defaults(handler=_models)

    backfill_parser = commands.add_parser(
        "backfill", help="Dagster asset backfill over a date range"
    )
    backfill_parser.add_argument("--assets", required=True, help="comma-separated asset keys")
    backfill_parser.add_argument(
        "--from", dest="date_from", type=_date, required=True, metavar="YYYY-MM-DD"
    )
    backfill_parser.add_argument(
        "--to", dest="date_to", type=_date, required=True, metavar="YYYY-MM-DD"
    )
    backfill_parser.add_argument("--positions", help="comma-separated position ids (default: all)")
    backfill_parser.add_argument(
        "--wait", action="store_true", help="print progress until it is done"
    )
    backfill_parser.add_argument(
        "--timeout", type=float, default=6 * 3600, help="--wait limit, seconds"
    )
    backfill_parser.set_defaults(handler=_backfill)

    reconcile_parser = commands.add_parser(
        "reconcile", help="photos in the bucket that the platform never ingested or graded"
    )
    reconcile_parser.add_argument(
        "--from", dest="date_from", type=_date, required=True, metavar="YYYY-MM-DD"
    )
    reconcile_parser.add_argument(
        "--to", dest="date_to", type=_date, required=True, metavar="YYYY-MM-DD"
    )
    reconcile_parser.add_argument("--limit", type=int, default=20, help="photos listed per kind")
    reconcile_parser.set_defaults(handler=_reconcile)

    replay_parser = commands.add_parser(
        "replay", help="re-deliver drone_image messages since a time"
    )
    replay_parser.add_argument("--since", required=True, help="ISO 8601 timestamp (UTC if no zone)")
    replay_parser.add_argument("--subscription", default=settings.DEFAULT_SUBSCRIPTION)
    replay_parser.add_argument("--project", help=f"default: ${settings.FARM_GCP_PROJECT}")
    replay_parser.set_defaults(handler=_replay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm-platform", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    stack_parser = commands.add_parser("stack", help="local Pub/Sub and GCS emulators")
    stack_parser.add_argument("action", choices=["up", "down", "env"])
    stack_parser.add_argument("--state-dir", help="where the stack keeps pids and logs")
    stack_parser.add_argument("--project", default="farm-local")
    stack_parser.add_argument("--bucket", default="farm-images")
    stack_parser.add_argument("--pubsub-port", type=int)
    stack_parser.add_argument("--gcs-port", type=int)
    stack_parser.set_defaults(handler=_stack)

    simulate_parser = commands.add_parser("simulate", help="render a synthetic farm")
    _add_farm_options(simulate_parser, positions=8, days=3)
    simulate_parser.add_argument("--bucket", help=f"bucket URL (default: ${settings.FARM_BUCKET})")
    simulate_parser.add_argument(
        "--field-map",
        default=None,
        help="write the farm's positions.csv here (default: $FARM_FIELD_MAP or the dbt seed)",
    )
    simulate_parser.add_argument(
        "--truth",
        help="where the ground-truth Parquet goes (default ./.farm/ground_truth; kept out of "
        "the bucket so that the bucket notifies exactly one message per photo)",
    )
    simulate_parser.add_argument(
        "--publish",
        action="store_true",
        help="also publish the drone-controller message for each image on drone_image",
    )
    simulate_parser.set_defaults(handler=_simulate)

    dlq_parser = commands.add_parser("dlq", help="read or replay drone_image.dead")
    dlq_parser.add_argument("action", choices=["list", "replay"])
    dlq_parser.add_argument("--project", help=f"default: ${settings.FARM_GCP_PROJECT}")
    dlq_parser.add_argument("--subscription", default=settings.DEAD_LETTER_SUBSCRIPTION)
    dlq_parser.add_argument("--limit", type=int, default=100)
    dlq_parser.add_argument("--match", default="", help="replay only errors containing this")
    dlq_parser.add_argument("--dry-run", action="store_true")
    dlq_parser.set_defaults(handler=_dlq)

    demo_parser = commands.add_parser("demo", help="the main job end to end on a local stack")
    _add_farm_options(demo_parser, positions=8, days=5)
    demo_parser.add_argument("--workdir", default=".farm/demo", help="demo state and outputs")
    demo_parser.set_defaults(handler=_demo)

    check_parser = commands.add_parser(
        "check", help="data-quality gate: suites + dbt tests on a clean and corrupted farm"
    )
    check_parser.add_argument("--workdir", help="keep the simulated farm here (default: temp)")
    check_parser.set_defaults(handler=_check)
    _add_model_version_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "field_map", "unset") is None:
        from farm_platform.field_map import field_map_path

        args.field_map = str(field_map_path())
    from farm_platform.stack import StackError

    try:
        return args.handler(args)
    except StackError as exc:
        print(f"farm-platform: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
