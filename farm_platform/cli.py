"""`farm-platform`: one command line for operators (`admin/`) and, where the dev package
`farm_platform_dev` is installed (the repository's editable install, not the container
image), developers: the local stack, simulated farms, the demo.

Every command reports an expected failure (a missing setting, a stack that is down, a
refused model) as one line naming the problem and what to do, and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType


def build_parser() -> argparse.ArgumentParser:
    from farm_platform.admin.commands import add_admin_commands
    from farm_platform.admin.trial import add_trial_commands

    parser = argparse.ArgumentParser(
        prog="farm-platform",
        description="Drone photos of a crop trial in, graded disease records and daily "
        "effectiveness reports out: the local stack, simulated farms, the demo, model "
        "versions, backfills and dead letters.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev = dev_commands()
    if dev is not None:
        dev.add_dev_commands(commands)
    add_admin_commands(commands)
    add_trial_commands(commands)
    return parser


def dev_commands() -> ModuleType | None:
    """The dev package's commands, or None where it is not installed (the container image):
    the operator commands work without it."""
    try:
        import farm_platform_dev.commands
    except ModuleNotFoundError as exc:
        if exc.name != "farm_platform_dev":
            raise  # the dev package is there but broken: say so
        return None
    return farm_platform_dev.commands


def expected_errors() -> tuple[type[Exception], ...]:
    """The failures a command reports in one line; anything else is a bug and keeps its
    traceback."""
    from farm_platform.admin.backfill import BackfillError
    from farm_platform.config import ConfigError
    from farm_platform.layout import BucketUnreachable, LayoutError
    from farm_platform.ml.datasets import DatasetError
    from farm_platform.ml.oip import OipError
    from farm_platform.ml.registry import ModelRegistryError
    from farm_platform.resources.field_map import FieldMapError
    from farm_platform.resources.pubsub import PubSubUnavailable
    from farm_platform.resources.warehouse import WarehouseError

    dev = dev_commands()
    return (
        *(() if dev is None else dev.EXPECTED_ERRORS),
        BackfillError,
        BucketUnreachable,
        ConfigError,
        DatasetError,
        FieldMapError,
        LayoutError,
        ModelRegistryError,
        OipError,
        PubSubUnavailable,
        WarehouseError,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except expected_errors() as exc:
        print(f"farm-platform {args.command}: {exc}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
