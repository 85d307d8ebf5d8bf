"""Each benchmark's current table in docs/benchmarks.md, written by the benchmark itself.

A script's section lies between `<!-- BEGIN name -->` and `<!-- END name -->`; with
`--write-docs` the script replaces it with the figures it just measured, the machine and
the command that re-measures them, so the page is re-measured, never edited by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


class DocsSectionError(ValueError):
    """The page lacks the section's markers (or has them twice, or out of order)."""


def add_write_docs_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help=f"replace this benchmark's table in {DOCS_PAGE.name} with the figures measured now",
    )


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(cell).strip() for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with what lies between the section's two markers replaced by `body`."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    found = [len(re.findall(re.escape(marker), text)) for marker in (begin, end)]
    if found != [1, 1] or text.index(begin) > text.index(end):
        raise DocsSectionError(
            f"{DOCS_PAGE.name} needs exactly one `{begin}` followed by one `{end}` "
            f"(found {found[0]} and {found[1]}): add the two lines where the table goes"
        )
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores ({platform.machine()}, {platform.system()})"


def write_docs(
    name: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    note: str = "",
    page: Path = DOCS_PAGE,
) -> None:
    """Replace section `name` of `page` with this table, the machine and the command line."""
    options = [arg for arg in sys.argv[1:] if arg != "--write-docs"]
    command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *options])
    body = "\n\n".join(
        part
        for part in (
            markdown_table(columns, rows),
            note,
            f"Measured on {machine()} by `{command}` (load average "
            f"{os.getloadavg()[0]:.1f} as it ended).",
        )
        if part
    )
    page.write_text(replace_section(page.read_text(), name, body))
    print(f"wrote the {name} table to {page}")
