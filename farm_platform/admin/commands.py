"""Operator commands of `farm-platform`: model versions, backfills, reconciliation,
replay and dead letters (docs/models.md, "A new model version";
docs/ingest.md, "The sensor")."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path
from typing import Any

from farm_platform import config, config_values
from farm_platform.admin.instance import open_instance
from farm_platform.config import ConfigError


def date_arg(value: str) -> dt.date:
    """An argparse type: a YYYY-MM-DD date."""
    from farm_platform.layout import LayoutError, parse_date

    try:
        return parse_date(value)
    except LayoutError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def non_negative_float(value: str) -> float:
    """An argparse type: a number of at least 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be at least 0")
    return number


# Pub/Sub's rule for a subscription's name (3-255 characters, a letter first, not goog*).
SUBSCRIPTION_NAME = re.compile(r"(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")


def subscription_name(value: str) -> str:
    """`--subscription`: a subscription's short name in the command's project."""
    if SUBSCRIPTION_NAME.fullmatch(value):
        return value
    if value.startswith("projects/"):
        raise ConfigError(
            f"--subscription {value[:120]!r} is a full path: give the subscription's short "
            "name, and --project for another project"
        )
    raise ConfigError(
        f"--subscription {value[:80]!r} is not a Pub/Sub subscription name (3-255 letters, "
        "digits or -_.~+%, starting with a letter)"
    )


# reconcile looks up every position's photo of every day: a year of days at most a call.
MAX_RECONCILE_DAYS = 366


def _dlq(args: argparse.Namespace) -> int:
    from farm_platform.admin.dead_letters import (
        dead_letter_queue,
        error_of,
        list_dead_letters,
        original_attributes,
        replay_dead_letters,
    )

    project = args.project or config.require(config.FARM_GCP_PROJECT, "or pass --project")
    queue = dead_letter_queue(project, subscription_name(args.subscription))
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
    print(f"{verb} {len(letters)} dead letter(s) onto {config.DRONE_IMAGE_TOPIC}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from farm_platform.admin import evaluation_commands
    from farm_platform.admin import model_versions as model_admin
    from farm_platform.ml.registry import ModelRegistry

    registry = ModelRegistry(args.models_dir)
    if args.action in evaluation_commands.ACTIONS:
        return evaluation_commands.run(args, registry)
    if args.action == "add":
        added = model_admin.add_model(Path(args.path), registry)
        card = added.card
        print(f"registered {card.id} {card.version} at {added.path}")
        # An exported model's check is its contract's, on a probe batch (ml/probe.py).
        what = "contract on a probe batch" if card.contract else "dummy forward pass"
        # An external_oip card has no file: its sha256 is of what it declares.
        checked = "its server answers" if card.external else "verified; loads"
        print(f"  sha256 {card.sha256} {checked}; {what}: {added.check}")
        # Evaluated on every registered dataset; --activate then goes through the gate.
        evaluation_commands.after_add(registry, card)
        if args.activate:
            evaluation_commands.activate(args, registry, card.id, card.version)
        else:
            print(
                "  not active; activate with: "
                f"farm-platform models activate {card.id} {card.version}"
            )
    elif args.action == "push":
        pushed = model_admin.push_models(Path(args.source), registry)
        for added in pushed.added:
            print(f"uploaded {added.card.id} {added.card.version} to {added.path} ({added.check})")
        for name in pushed.already_there:
            print(f"already there: {name} (same sha256)")
        active = ", ".join(f"{m} {v}" for m, v in sorted(pushed.active.items()))
        print(f"active in {registry.registry_path}: {active}")
    elif args.action == "activate":
        evaluation_commands.activate(args, registry, args.model_id, args.version)
        print("  the model_registry_sensor records the new data version within 30 s;")
        print("  then: farm-platform models stale")
    elif args.action == "list":
        from farm_platform.ml.evaluation_records import version_notes

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
            else:
                for note in version_notes(registry, row.model_id, row.version):
                    print(f"    {note}")
        print("(* = active)")
        # Exit 1 when a live model is broken, so scripts and CI notice, not only readers.
        if any(row.active and row.problem for row in rows):
            return 1
    elif args.action == "serve":
        return _models_serve(args, registry)
    elif args.action == "reload":
        from farm_platform.ml.oip import OipClient

        url = args.url or config_values.oip_url(config.value(config.FARM_OIP_URL))
        client = OipClient(url, token=config.value(config.FARM_OIP_TOKEN))
        for model_id, card in sorted(registry.active_cards().items()):
            if card.external is None:  # an external_oip card's model is on its own server
                client.reload(model_id)
                print(
                    f"{client.url}: {model_id} reloaded (registry's active version: {card.version})"
                )
    else:
        return _models_stale(args)
    return 0


def _models_serve(args: argparse.Namespace, registry: Any) -> int:
    try:
        from farm_platform.ml import serving
        from farm_platform.ml.serving_kserve import grpc_address
        from farm_platform.ml.serving_plain import PlainSpec
    except ImportError as exc:
        raise ConfigError(
            f"`models serve` needs the serve extra ({exc}): pip install -e '.[serve]'"
        ) from None
    from farm_platform.resources.environment import environment_fields
    from farm_platform.resources.inference import InferenceResource

    # The server's device, dtype and threads (FARM_TORCH_*) and token; it runs the models
    # itself, whatever FARM_INFERENCE says for the runs that share its environment.
    fields = environment_fields(InferenceResource, env_vars=False)
    settings = InferenceResource(**{**fields, "mode": "local"}).settings()
    # Fail here, in one line, on a missing or corrupted weights file, not in kserve's log.
    for model_id, version in sorted(registry.active_versions().items()):
        registry.verify_weights(registry.card(model_id, version))
    print(
        f"serving {', '.join(sorted(registry.active_versions()))} from {registry.models_dir}: "
        f"REST http://{grpc_address(args.host, args.port)}/v2, "
        f"gRPC {grpc_address(args.host, args.grpc_port)}"
        + (f" (bearer token from ${config.FARM_OIP_TOKEN})" if settings.oip_token else ""),
        flush=True,
    )
    serving.serve(
        registry,
        http_port=args.port,
        grpc_port=args.grpc_port,
        watch_seconds=args.watch_seconds,
        host=args.host,
        token=settings.oip_token,
        emulated_batch_seconds=args.emulate_batch_ms / 1000,
        plain=[PlainSpec.parse(text) for text in args.plain],
        settings=settings,
    )
    return 0


def _models_stale(args: argparse.Namespace) -> int:
    from dagster import AssetKey

    from farm_platform.admin.model_versions import stale_partitions

    assets = [AssetKey(name) for name in args.asset] if args.asset else None
    with open_instance() as instance:
        try:
            stale = stale_partitions(instance, assets)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for key, partitions in sorted(stale.items()):
        print(f"{key.to_user_string()}: {len(partitions)} stale partition(s)")
        for partition in partitions[: args.limit]:
            print(f"  {partition.partition_key}  {'; '.join(partition.causes)}")
        if len(partitions) > args.limit:
            print(f"  ... {len(partitions) - args.limit} more")
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from dagster import AssetKey

    from farm_platform.admin.backfill import launch_backfill, wait_for_backfill

    assets = [AssetKey(name.strip()) for name in args.assets.split(",") if name.strip()]
    positions = [p.strip() for p in args.positions.split(",")] if args.positions else None
    with open_instance() as instance:
        launched = launch_backfill(instance, assets, args.date_from, args.date_to, positions)
        print(
            f"backfill {launched.backfill_id}: {', '.join(a.to_user_string() for a in assets)}"
            f" over {len(launched.partitions)} day partition(s)"
            f" ({launched.skipped_days_without_photo} day(s) without a photo skipped)"
        )
        print(f"  {args.webserver.rstrip('/')}/runs/b/{launched.backfill_id} (Runs → Backfills)")
        if not args.wait:
            print("  the daemon launches its runs; --wait follows it here")
            return 0
        state = wait_for_backfill(
            instance,
            launched.backfill_id,
            timeout_seconds=args.timeout,
            progress=lambda s: print(f"  {s.describe()}", flush=True),
        )
        print(f"backfill {launched.backfill_id} {state.status}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from farm_platform.admin.replay import parse_timestamp, replay

    project = args.project or config.require(config.FARM_GCP_PROJECT, "or pass --project")
    try:
        since = parse_timestamp(args.since)
    except ValueError as exc:
        raise ConfigError(f"--since: {exc}") from None
    path = replay(project, subscription_name(args.subscription), since=since)
    print(
        f"seeked {path} to {since.isoformat()}: messages published since then are delivered again"
    )
    print(
        "  photos the platform already handed to a run are recognized as duplicates "
        "(acknowledged, no new run); use `farm-platform backfill` to re-grade those"
    )
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from farm_platform.admin.reconcile import reconcile
    from farm_platform.config import field_map_path
    from farm_platform.ml.registry import ModelRegistry
    from farm_platform.resources import BucketResource, PubSubResource, WarehouseResource
    from farm_platform.resources.field_map import read_field_map

    days = (args.date_to - args.date_from).days + 1
    if days < 1:
        raise ConfigError(f"--to {args.date_to} is before --from {args.date_from}")
    if days > MAX_RECONCILE_DAYS:
        raise ConfigError(
            f"--from {args.date_from} --to {args.date_to} is {days} days: reconcile at most "
            f"{MAX_RECONCILE_DAYS} at a time (each day looks up every position's photo)"
        )

    bucket = config.bucket_url(config.require(config.FARM_BUCKET))
    warehouse = config.require(config.FARM_WAREHOUSE)
    graders = [
        (card.id, card.version)
        for card in ModelRegistry().active_cards().values()
        if card.task == "disease_grader"
    ]
    project = config.require(config.FARM_GCP_PROJECT)
    with open_instance() as instance:
        result = reconcile(
            BucketResource(url=bucket),
            WarehouseResource(url=warehouse),
            list(read_field_map(field_map_path())),
            args.date_from,
            args.date_to,
            graders,
            instance,
            PubSubResource(project=project),
        )
    print("\n".join(result.report(args.date_from, args.date_to, args.limit)))
    return 0


def add_date_range(parser: argparse.ArgumentParser) -> None:
    """`--from` and `--to`: the days a command covers, both inclusive."""
    for flag, dest, help_text in (
        ("--from", "date_from", "first day (inclusive)"),
        ("--to", "date_to", "last day (inclusive)"),
    ):
        parser.add_argument(
            flag, dest=dest, type=date_arg, required=True, metavar="YYYY-MM-DD", help=help_text
        )


def add_admin_commands(commands: Any) -> None:
    from farm_platform.admin import evaluation_commands
    from farm_platform.config import FARM_MODELS_DIR

    models_parser = commands.add_parser("models", help="register, list, activate model versions")
    models_parser.add_argument(
        "--models-dir",
        default=None,
        help=f"models folder, or a bucket folder gs://BUCKET/models (default: ${FARM_MODELS_DIR} "
        "or ./models)",
    )
    model_actions = models_parser.add_subparsers(dest="action", required=True)
    add_parser = model_actions.add_parser("add", help="validate and register a model folder")
    add_parser.add_argument("path", help="folder with card.json and the weights")
    add_parser.add_argument(
        "--activate", action="store_true", help="also make it the live version (gated)"
    )
    add_parser.add_argument("--reason", default=None, help="with --activate --force")
    model_actions.add_parser("list", help="every registered version (* = active)")
    push_parser = model_actions.add_parser(
        "push",
        help="copy a local models folder's versions (validated) and active versions to "
        "--models-dir, e.g. a bucket; registry last",
    )
    push_parser.add_argument("source", help="local models folder, e.g. models")
    activate_parser = model_actions.add_parser("activate", help="make a version the live one")
    activate_parser.add_argument("model_id", help="e.g. disease_3_grader (see `models list`)")
    activate_parser.add_argument("version", help="a registered version, e.g. v2")
    for parser in (add_parser, activate_parser):
        parser.add_argument(
            "--force",
            action="store_true",
            help="activate although worse than the active version on a registered "
            "evaluation dataset (needs --reason, which is recorded)",
        )
    activate_parser.add_argument("--reason", default=None, help="why, with --force (recorded)")
    stale_parser = model_actions.add_parser(
        "stale", help="stale partitions, from Dagster ($DAGSTER_HOME)"
    )
    stale_parser.add_argument(
        "--asset", action="append", help="asset key (repeatable); default all"
    )
    stale_parser.add_argument("--limit", type=int, default=20, help="partitions shown per asset")
    serve_parser = model_actions.add_parser(
        "serve", help="Open Inference Protocol server of the active models (serve extra)"
    )
    serve_parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address REST and gRPC listen on (0.0.0.0: every interface, e.g. in a pod)",
    )
    serve_parser.add_argument("--port", type=int, default=8080, help="REST port")
    serve_parser.add_argument("--grpc-port", type=int, default=8081, help="gRPC port")
    serve_parser.add_argument(
        "--plain",
        action="append",
        default=[],
        metavar="MODEL_ID:VERSION=NAME:SERVED_VERSION",
        help="also serve that version plain, as KServe or Triton would (its own tensors "
        "INPUT__0, OUTPUT__<i>): to try an external_oip card against (docs/models.md)",
    )
    serve_parser.add_argument(
        "--watch-seconds",
        type=float,
        default=config.DEFAULT_REGISTRY_WATCH_SECONDS,
        help="how often the server checks the registry for a new active version (0: never)",
    )
    serve_parser.add_argument(
        "--emulate-batch-ms",
        type=non_negative_float,
        default=0.0,
        help="benchmarks only: serve one batch at a time and hold each for at least this "
        "long, as a remote accelerator would (benchmarks/scale_out.py)",
    )
    reload_parser = model_actions.add_parser(
        "reload", help="make a running model server load the registry's active versions"
    )
    reload_parser.add_argument("--url", default=None, help=f"default: ${config.FARM_OIP_URL}")
    evaluation_commands.add_parsers(model_actions)
    models_parser.set_defaults(handler=_models)

    backfill_parser = commands.add_parser(
        "backfill", help="Dagster asset backfill over a date range"
    )
    backfill_parser.add_argument("--assets", required=True, help="comma-separated asset keys")
    add_date_range(backfill_parser)
    backfill_parser.add_argument("--positions", help="comma-separated position ids (default: all)")
    backfill_parser.add_argument(
        "--wait", action="store_true", help="print progress until it is done"
    )
    backfill_parser.add_argument(
        "--timeout", type=float, default=6 * 3600, help="--wait limit, seconds"
    )
    backfill_parser.add_argument(
        "--webserver",
        default=config.webserver_url(),
        help="the Dagster UI's address, for the backfill's link "
        "(default: $DAGSTER_WEBSERVER_URL or %(default)s)",
    )
    backfill_parser.set_defaults(handler=_backfill)

    reconcile_parser = commands.add_parser(
        "reconcile", help="photos in the bucket that the platform never ingested or graded"
    )
    add_date_range(reconcile_parser)
    reconcile_parser.add_argument("--limit", type=int, default=20, help="photos listed per kind")
    reconcile_parser.set_defaults(handler=_reconcile)

    replay_parser = commands.add_parser(
        "replay", help="re-deliver drone_image messages since a time"
    )
    replay_parser.add_argument("--since", required=True, help="ISO 8601 timestamp (UTC if no zone)")
    replay_parser.add_argument(
        "--subscription",
        default=config.DEFAULT_SUBSCRIPTION,
        help="the subscription to seek (default: %(default)s)",
    )
    replay_parser.add_argument("--project", help=f"default: ${config.FARM_GCP_PROJECT}")
    replay_parser.set_defaults(handler=_replay)

    dlq_parser = commands.add_parser(
        "dlq", help="read or replay the dead letters (drone_image.dead)"
    )
    dlq_parser.add_argument(
        "action",
        choices=["list", "replay"],
        help="list: print each dead letter and its error; replay: publish the originals again "
        "(after fixing their cause)",
    )
    dlq_parser.add_argument("--project", help=f"default: ${config.FARM_GCP_PROJECT}")
    dlq_parser.add_argument(
        "--subscription",
        default=config.DEAD_LETTER_SUBSCRIPTION,
        help="where dead letters are read (default: %(default)s)",
    )
    dlq_parser.add_argument(
        "--limit", type=int, default=100, help="at most this many (default: %(default)s)"
    )
    dlq_parser.add_argument("--match", default="", help="replay only errors containing this")
    dlq_parser.add_argument(
        "--dry-run", action="store_true", help="say what would be replayed, replay nothing"
    )
    dlq_parser.set_defaults(handler=_dlq)
