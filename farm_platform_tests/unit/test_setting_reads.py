"""Where the runtime package may read a `FARM_*` setting from the environment (issue 41,
docs/architecture.md "Settings"): `config.py` and `config_values.py` hold the readers, the
code locations' definitions call them once when they load and hand the values to resources,
partitions and schedules; commands and the processes that are not Dagster code read them
when they start. Dagster code (assets, ops, sensors, schedules and the library code they
call) gets every setting from a resource or its run config, never from the environment.

The scan is of the source (every function, also lazy imports), so a read added anywhere
else fails here, naming the module, the line and what it read.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "farm_platform"

# The modules that hold the readers.
READER_MODULES = {
    "farm_platform.config": PACKAGE / "config.py",
    "farm_platform.config_values": PACKAGE / "config_values.py",
    "farm_platform.resources.environment": PACKAGE / "resources" / "environment.py",
}
# Module (or package prefix ending in ".") → why it may read settings from the environment.
ALLOWED = {
    "farm_platform.config": "the settings' names, defaults and readers",
    "farm_platform.config_values": "the validators, and the readers of derived values",
    "farm_platform.resources.environment": "fills resource fields for the definitions",
    "farm_platform.images.definitions": "the image location's wiring, once when it loads",
    "farm_platform.analytics.definitions": "the analytics location's wiring, once at load",
    "farm_platform.admin.": "command-line code, no Dagster",
    "farm_platform.cli": "the command line's entry point",
    "farm_platform.launcher.celery_app": "the Celery workers' broker, read when they start",
    "farm_platform.webserver_guard": "the guarded webserver process, not Dagster code",
    # A model card names its own server's address and token settings
    # (FARM_EXTERNAL_OIP_<NAME>): which ones is known only once a run loads the card, and a
    # token must not become a resource field's value that the launchpad shows.
    "farm_platform.ml.external_oip": "the variables an external_oip model card names",
}
# A resource's constructor from the environment (its VARIABLES), for the definitions and
# commands: it may read them; a call of it elsewhere is a read.
FROM_ENVIRONMENT = "from_environment"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def reads_environment(node: ast.AST) -> bool:
    """`os.environ` or `os.getenv` anywhere under `node`."""
    return any(
        isinstance(inner, ast.Attribute)
        and isinstance(inner.value, ast.Name)
        and inner.value.id == "os"
        and inner.attr in ("environ", "getenv")
        for inner in ast.walk(node)
    )


def called_names(node: ast.AST) -> set[str]:
    """The last name of every call under `node` (`config.value(...)` → `value`)."""
    names = set()
    for inner in ast.walk(node):
        if isinstance(inner, ast.Call):
            func = inner.func
            if isinstance(func, ast.Attribute):
                names.add(func.attr)
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


def readers() -> dict[str, set[str]]:
    """Module → its functions that read the environment, directly or through another
    reader of the reader modules (a fixed point over the three modules)."""
    functions = {
        module: {
            node.name: node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef)
        }
        for module, path in READER_MODULES.items()
    }
    found = {
        module: {name for name, node in defs.items() if reads_environment(node)}
        for module, defs in functions.items()
    }
    while True:
        known = set().union(*found.values())
        grown = {
            module: found[module]
            | {name for name, node in defs.items() if called_names(node) & known}
            for module, defs in functions.items()
        }
        if grown == found:
            return found
        found = grown


def imported_readers(tree: ast.AST, reader_functions: dict[str, set[str]]) -> dict[str, str]:
    """Local name → `module.function` for readers a module calls: bound by
    `from farm_platform.config import field_map_path`, or reached as an attribute of an
    imported reader module (`config.value`, `farm_config.models_dir`)."""
    local: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in reader_functions:  # a module: its functions by attribute
                    for function in reader_functions[target]:
                        local[f"{alias.asname or alias.name}.{function}"] = f"{target}.{function}"
                elif alias.name in reader_functions.get(node.module, ()):
                    local[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                for function in reader_functions.get(alias.name, ()):
                    local[f"{alias.asname or alias.name}.{function}"] = f"{alias.name}.{function}"
    return local


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def environment_key(node: ast.Subscript | ast.Call) -> ast.AST | None:
    """The key of `os.environ[KEY]`, `os.environ.get(KEY)` or `os.getenv(KEY)`."""
    if isinstance(node, ast.Subscript) and dotted(node.value) == "os.environ":
        return node.slice
    if isinstance(node, ast.Call) and dotted(node.func) in ("os.environ.get", "os.getenv"):
        return node.args[0] if node.args else None
    return None


def names_a_farm_setting(key: ast.AST) -> bool:
    """A `FARM_*` name or constant, or a key the source does not spell out (a variable or an
    expression: it may hold one)."""
    if isinstance(key, ast.Constant):
        return str(key.value).startswith("FARM_")
    name = dotted(key).rsplit(".", 1)[-1]
    return not name.isupper() or name.startswith("FARM_")


def setting_reads(path: Path, reader_functions: dict[str, set[str]], where: str) -> list[str]:
    """`where:line: what` for each read of a FARM_* setting in the module at `path`, in
    the order of its lines."""
    tree = ast.parse(path.read_text())
    local = imported_readers(tree, reader_functions)
    constructors = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == FROM_ENVIRONMENT
    ]
    inside = {id(inner) for node in constructors for inner in ast.walk(node)}
    found = []
    for node in sorted(ast.walk(tree), key=lambda node: getattr(node, "lineno", 0)):
        if id(node) in inside:
            continue
        key = environment_key(node) if isinstance(node, ast.Subscript | ast.Call) else None
        if key is not None and names_a_farm_setting(key):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in local:
                found.append(f"{where}:{node.lineno}: {name}() reads {local[name]}")
            elif name.endswith(f".{FROM_ENVIRONMENT}"):
                found.append(f"{where}:{node.lineno}: {name}() reads the environment")
    return found


def allowed(module: str) -> bool:
    return any(
        module.startswith(prefix) if prefix.endswith(".") else module == prefix
        for prefix in ALLOWED
    )


def test_dagster_code_reads_no_setting_from_the_environment():
    reader_functions = readers()
    reads = [
        read
        for path in sorted(PACKAGE.rglob("*.py"))
        if not allowed(module_name(path))
        for read in setting_reads(path, reader_functions, path.relative_to(REPO).as_posix())
    ]
    assert not reads, (
        "FARM_* settings read from the environment outside config.py, config_values.py, the "
        "definitions and the commands: give the value to the resource that owns the setting "
        "(its VARIABLES; the definitions fill it) or to run config, and read it there:\n"
        + "\n".join(reads)
    )


def test_the_scan_finds_each_kind_of_read(tmp_path):
    """The scan is no stronger than its detector: each spelling of a read is found."""
    reader_functions = readers()
    assert {"value", "field_map_path", "models_dir"} <= reader_functions["farm_platform.config"]
    assert "env_number" in reader_functions["farm_platform.config_values"]
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "from farm_platform import config as farm_config\n"
        "from farm_platform.config import field_map_path\n"
        "from farm_platform.config_values import env_number\n"
        "def tick():\n"
        "    os.environ['FARM_BUCKET']\n"
        "    os.environ.get(farm_config.FARM_WAREHOUSE)\n"
        "    os.getenv(name)\n"
        "    farm_config.value('FARM_INFERENCE')\n"
        "    field_map_path()\n"
        "    env_number('FARM_RUN_MAX_PHOTOS', 1)\n"
        "    TrialCalendarResource.from_environment()\n"
        "    os.environ.get('STORAGE_EMULATOR_HOST')\n"
    )
    lines = [read.split(":")[1] for read in setting_reads(sample, reader_functions, "sample")]
    assert lines == [str(line) for line in range(6, 13)]
