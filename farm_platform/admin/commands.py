"""Operator commands of `farm-platform`: model versions, backfills, reconciliation,
replay and dead letters (docs/models.md, "A new model version";
docs/ingest.md, "The sensor")."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from typing import Any

from farm_platform import config
from farm_platform.admin.instance import open_instance
from farm_platform.config import ConfigError


def date_arg(value: str) -> dt.date:
    """An argparse type: a YYYY-MM-DD date."""
    from farm_platform.layout import LayoutError, parse_date

    try:
        return parse_date(value)
    except LayoutError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    from farm_platform.admin.configured import configured_registry
    from farm_platform.admin.reconcile import reconcile
    from farm_platform.config import field_map_path
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
        for card in configured_registry().active_cards().values()
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
    from farm_platform.admin.code_server_check import add_code_server_check_command
    from farm_platform.admin.model_commands import add_model_commands

    add_model_commands(commands)
    _add_backfill_commands(commands)
    _add_message_commands(commands)
    add_code_server_check_command(commands)


def _add_backfill_commands(commands: Any) -> None:
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


def _add_message_commands(commands: Any) -> None:
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
