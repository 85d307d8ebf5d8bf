"""The package's shape: which room may import which, no import cycles, and a reviewed
snapshot of both code locations' asset graphs (a change of the graph is a visible diff).

Imports are read from the source (every `import`, also those inside functions), so a lazy
import that crosses a layer is caught as well.
"""

from __future__ import annotations

import ast
import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "farm_platform"
# The dev harness (simulator, emulators, demo, daemon wrapper): a package of its own that the
# container image does not install; one room, `dev`, above everything but the CLI.
DEV_PACKAGE = REPO / "farm_platform_dev"
SNAPSHOT = Path(__file__).with_name("snapshots") / "asset_graphs.json"
UPDATE_SNAPSHOTS = "FARM_UPDATE_SNAPSHOTS"

# Rooms from the bottom up: a room imports only rooms below it. docs/architecture.md, "Layout".
# Plain Python without Dagster: ingest (messages, arrival queue, tick, retries), grading and
# report; Dagster definitions and their wiring: images and analytics; resources: resources.
LAYERS = [
    ["config"],
    ["config_values"],
    ["layout"],
    ["partitions", "ml", "webserver_guard"],
    ["resources"],
    ["quality", "trial_design"],
    ["ingest", "grading", "report"],
    ["images"],  # code location `farm_platform`
    ["analytics"],  # code location `farm_platform_analytics`
    ["launcher"],  # the instance's Celery run launcher and app (deploy/vm/dagster.yaml)
    ["admin"],
    ["dev"],  # the farm_platform_dev package
    ["cli"],
]
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}
CODE_LOCATIONS = ["farm_platform.images.definitions", "farm_platform.analytics.definitions"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *DEV_PACKAGE.rglob("*.py")])


def import_graph() -> dict[str, set[str]]:
    """Module → the farm_platform(_dev) modules it imports (the package roots excluded)."""
    modules = {module_name(path): path for path in source_files()}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(
                target for target in candidates if target in modules and target not in ROOTS
            )
    return {name: graph[name] for name in modules}


ROOTS = ("farm_platform", "farm_platform_dev")


def room(module: str) -> str:
    return "dev" if module.split(".")[0] == "farm_platform_dev" else module.split(".")[1]


def test_every_room_has_a_layer():
    rooms = {room(module) for module in import_graph() if module not in ROOTS}
    assert rooms == set(RANK), "add the new room to LAYERS (and docs/architecture.md's Layout)"


def test_rooms_import_only_rooms_below_them():
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        if source not in ROOTS
        for target in targets
        if room(target) != room(source) and RANK[room(target)] >= RANK[room(source)]
    )
    assert not upward, "imports that cross layers upward or sideways:\n" + "\n".join(upward)


def test_code_locations_never_reach_admin_or_dev_code():
    graph = import_graph()
    for location in CODE_LOCATIONS:
        reached, frontier = set(), [location]
        while frontier:
            module = frontier.pop()
            if module not in reached:
                reached.add(module)
                frontier.extend(graph[module])
        tooling = sorted(m for m in reached if room(m) in ("admin", "dev", "cli"))
        assert not tooling, f"{location} imports operator or dev tooling: {tooling}"


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def asset_graph_snapshot() -> dict[str, object]:
    """Asset keys, groups, dependencies, partitions and check specs of both locations."""
    from farm_platform.analytics.definitions import defs as analytics
    from farm_platform.images.definitions import defs as images

    snapshot: dict[str, object] = {}
    for location, defs in (("farm_platform", images), ("farm_platform_analytics", analytics)):
        graph = defs.resolve_asset_graph()
        assets = {}
        for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
            node = graph.get(key)
            partitions = node.partitions_def
            assets[key.to_user_string()] = {
                "group": node.group_name,
                "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
                "partitions": None if partitions is None else str(partitions),
                "checks": sorted(check.name for check in node.check_keys),
                "materializable": node.is_materializable,
            }
        snapshot[location] = assets
    return snapshot


def test_asset_graphs_match_the_reviewed_snapshot(location_env):
    current = json.dumps(asset_graph_snapshot(), indent=2, sort_keys=True) + "\n"
    if os.environ.get(UPDATE_SNAPSHOTS):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(current)
    if not SNAPSHOT.exists():
        pytest.fail(f"no snapshot yet: run with {UPDATE_SNAPSHOTS}=1 and review {SNAPSHOT}")
    assert current == SNAPSHOT.read_text(), (
        f"the asset graph changed: review the diff, then {UPDATE_SNAPSHOTS}=1 rewrites {SNAPSHOT}"
    )


# ------------------------------------------------------------------ size limits

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


# Beside the packages, the scripts: the models' training and evaluation, the benchmarks.
SCRIPT_FOLDERS = (REPO / "models", REPO / "benchmarks")
# And the tests: their modules, the shared helpers and the fixtures.
TESTS = REPO / "farm_platform_tests"
TEST_FOLDERS = (TESTS, TESTS / "unit", TESTS / "integration", TESTS / "e2e")


def sized_files() -> list[Path]:
    """The runtime and dev packages' modules, the scripts beside them, and the tests."""
    scripts = [path for folder in SCRIPT_FOLDERS for path in folder.glob("*.py")]
    tests = [path for folder in TEST_FOLDERS for path in folder.glob("*.py")]
    return sorted([*source_files(), *scripts, *tests])


def oversized() -> dict[str, int]:
    """`module` or `module::function` → its lines, for modules over MAX_MODULE_LINES lines
    and functions over MAX_FUNCTION_LINES (decorators and docstring included), in the
    runtime and dev packages, models/, benchmarks/ and farm_platform_tests/."""
    found = {}
    for path in sized_files():
        name = path.relative_to(REPO).as_posix()
        text = path.read_text()
        if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
            found[name] = lines
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if (lines := node.end_lineno - first + 1) > MAX_FUNCTION_LINES:
                    found[f"{name}::{node.name}"] = lines
    return found


def test_no_module_over_400_lines_and_no_function_over_80():
    folders = {path.parent for path in sized_files()}
    assert folders >= {*SCRIPT_FOLDERS, *TEST_FOLDERS}  # the scan sees them
    too_long = sorted(f"{key}: {lines} lines" for key, lines in oversized().items())
    assert not too_long, "split these (a module per subject, a function per step):\n" + (
        "\n".join(too_long)
    )
