"""`farm-platform trial design`: write a randomised complete-block assignment into the field
map (issue 43), the way this project recommends setting up a trial."""

from __future__ import annotations

import argparse
import secrets
from collections import Counter
from pathlib import Path
from typing import Any


def _design(args: argparse.Namespace) -> int:
    from farm_platform.config import field_map_path
    from farm_platform.resources.field_map import read_field_map, write_field_map
    from farm_platform.trial_design import randomised_blocks

    source = Path(args.field_map) if args.field_map else field_map_path()
    output = Path(args.output) if args.output else source
    # A seed drawn here is still recorded in the map: the assignment can be redrawn from it.
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    positions = list(read_field_map(source).values())
    designed = randomised_blocks(positions, seed, args.block_size, args.dose)
    write_field_map(designed, output)
    arms = Counter(p.area for p in designed)
    blocks = len({p.block for p in designed})
    print(
        f"{output}: {len(designed)} positions in {blocks} blocks of neighbours, "
        f"{arms['treated']} treated and {arms['control']} control, randomised within each "
        f"block with seed {seed} (recorded as assignment randomised:{seed})"
    )
    if output == source:
        print(
            "The map was rewritten in place; the next dbt build (its `positions` asset) reads it."
        )
    return 0


def add_trial_commands(commands: Any) -> None:
    trial_parser = commands.add_parser("trial", help="the trial's design: which position gets what")
    actions = trial_parser.add_subparsers(dest="action", required=True)
    design = actions.add_parser(
        "design",
        help="assign arms at random within blocks of neighbouring positions (recommended)",
        description="Rewrite the field map as a randomised complete-block design: runs of "
        "--block-size neighbouring positions form blocks, and within each half the positions "
        "are treated, drawn at random with --seed (recorded in the map's assignment column).",
    )
    design.add_argument(
        "--field-map", help="the map to read (default: $FARM_FIELD_MAP, else the shipped field map)"
    )
    design.add_argument("--output", help="where to write it (default: over the map read)")
    design.add_argument(
        "--seed", type=int, help="randomisation seed (default: a random one, recorded)"
    )
    design.add_argument(
        "--block-size", type=int, default=2, help="positions per block (default: %(default)s)"
    )
    design.add_argument(
        "--dose",
        type=float,
        help="ml per square foot for treated positions (default: the map's one treated dose)",
    )
    design.set_defaults(handler=_design)
