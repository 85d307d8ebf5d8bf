"""Compile the Great Expectations suites of `suites.py` into `compiled_suites.json`.

    python -m farm_platform.quality.compile --write    # regenerate compiled_suites.json
    python -m farm_platform.quality.compile --check    # exit 1 when it is out of date
    python -m farm_platform.quality.compile            # print it

Runs evaluate the compiled file (`farm_platform.quality.compiled`) and never import Great
Expectations; this command does, once per change of the suites. Each expectation becomes
its type, its kwargs as `to_json_dict()` gives them (a suite parameter stays
`{"$PARAMETER": name}`) and its `meta.name`. An expectation type or kwarg the evaluator
does not implement fails here, naming it. `farm_platform_tests/unit/test_compiled_suites.py`
fails when the file and the suites disagree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from farm_platform.quality import suites
from farm_platform.quality.compiled import ARTIFACT, COMPILE_COMMAND, SUPPORTED_KWARGS

_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CompileError(ValueError):
    """A suite uses what the compiled evaluator cannot evaluate."""


def compile_suite(suite_name: str, suite: Any) -> list[dict[str, Any]]:
    """The expectations of one Great Expectations suite, as the evaluator reads them."""
    compiled = []
    for entry in suite.to_json_dict()["expectations"]:
        kind, kwargs = entry["type"], entry["kwargs"]
        name = (entry.get("meta") or {}).get("name")
        where = f"suite {suite_name!r}, expectation {name or kind!r}"
        if not name:
            raise CompileError(f"{where} has no meta name: wrap it in suites._named(…, name)")
        if kind not in SUPPORTED_KWARGS:
            raise CompileError(
                f"{where}: type {kind!r} has no compiled evaluator. Use one of "
                f"{sorted(SUPPORTED_KWARGS)}, or implement it in "
                "farm_platform/quality/compiled.py (an expression in _EXPRESSIONS and its "
                "kwargs in SUPPORTED_KWARGS) with a parity case in "
                "farm_platform_tests/unit/test_compiled_suites.py"
            )
        unknown = sorted(set(kwargs) - SUPPORTED_KWARGS[kind])
        if unknown:
            raise CompileError(
                f"{where}: {kind} kwargs {unknown} are not evaluated by "
                "farm_platform/quality/compiled.py: drop them or implement them there"
            )
        for key, value in kwargs.items():
            if isinstance(value, dict) and not _is_parameter(value):
                raise CompileError(
                    f"{where}: kwarg {key!r} = {value!r}: a suite parameter is "
                    '{"$PARAMETER": name} with a plain name (no expression)'
                )
        compiled.append({"type": kind, "name": name, "kwargs": kwargs})
    return compiled


def _is_parameter(value: dict[str, Any]) -> bool:
    return list(value) == ["$PARAMETER"] and bool(_PARAMETER_NAME.match(str(value["$PARAMETER"])))


def compile_suites(
    builders: dict[str, Callable[[], Any]] = suites.SUITES,
) -> dict[str, Any]:
    """The whole compiled document (what `compiled_suites.json` holds)."""
    return {
        "generated_by": COMPILE_COMMAND,
        "great_expectations": version("great_expectations"),
        "suites": {name: compile_suite(name, build()) for name, build in builders.items()},
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {ARTIFACT.name}")
    mode.add_argument("--check", action="store_true", help="exit 1 when it is out of date")
    args = parser.parse_args(argv)
    try:
        text = render(compile_suites())
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.write:
        ARTIFACT.write_text(text)
        print(f"wrote {ARTIFACT}")
    elif args.check:
        if not ARTIFACT.exists() or ARTIFACT.read_text() != text:
            print(f"{ARTIFACT} is out of date: run `{COMPILE_COMMAND}`", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
