"""The documentation's own guarantees: README stays a front door, every relative link
resolves, docs/configuration.md is CONFIG_VARIABLES', and each benchmark rewrites only
its own table in docs/benchmarks.md. Fast: files only, no benchmark runs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from farm_platform import config
from farm_platform.admin import config_docs

REPO = config.REPO_ROOT
README_MAX_LINES = 250
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PAGES += [REPO / "deploy" / "README.md", REPO / "models" / "EVALUATION.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _docs_table():
    """benchmarks/docs_table.py (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "docs_table", REPO / "benchmarks" / "docs_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings: lower case, punctuation dropped, - for spaces."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_is_a_front_door():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, more than {README_MAX_LINES}: move reference to a "
        "page under docs/ and link it from README's table of docs pages"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_and_heading(page: Path):
    assert page.is_file(), f"{page.relative_to(REPO)} is missing"
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    assert not broken, f"broken links in {page.relative_to(REPO)}:\n" + "\n".join(broken)


def test_configuration_page_is_config_variables():
    assert (REPO / "docs" / "configuration.md").read_text() == config_docs.render(), (
        "docs/configuration.md disagrees with farm_platform.config.CONFIG_VARIABLES: "
        f"regenerate it with `{config_docs.REGENERATE}`"
    )
    documented = re.findall(r"^\| `([A-Z0-9_]+)` \|", config_docs.render(), re.MULTILINE)
    assert set(config.CONFIG_VARIABLES) <= set(documented)


def test_a_setting_is_documented_from_its_comment_or_named_when_it_has_none(monkeypatch):
    source = "# Where the foo goes.\nFARM_FOO = 'FARM_FOO'\nFARM_BAR = 'FARM_BAR'\n"
    monkeypatch.setattr(config_docs.inspect, "getsource", lambda _: source)
    monkeypatch.setattr(config, "CONFIG_VARIABLES", ("FARM_FOO",))
    monkeypatch.setattr(config, "DEFAULT_FOO", 2.5, raising=False)
    assert config_docs.settings_rows() == [("FARM_FOO", "Where the foo goes.", "`2.5`")]
    monkeypatch.setattr(config, "CONFIG_VARIABLES", ("FARM_FOO", "FARM_BAR"))
    with pytest.raises(config_docs.ConfigDocsError, match="FARM_BAR has no meaning.*--write"):
        config_docs.settings_rows()


def test_a_benchmark_replaces_exactly_its_own_section(tmp_path: Path):
    docs_table = _docs_table()
    page = tmp_path / "benchmarks.md"
    before = "# B\n\nintro\n<!-- BEGIN a -->\nold a\n<!-- END a -->\nmiddle\n"
    other = "<!-- BEGIN b -->\nold b\n<!-- END b -->\ntail\n"
    page.write_text(before + other)
    docs_table.write_docs("a", ["k", "photos/s"], [(1, 0.5), (2, 0.75)], note="n.", page=page)
    text = page.read_text()
    assert text.startswith("# B\n\nintro\n<!-- BEGIN a -->\n| k | photos/s |\n| --- | --- |\n")
    assert "| 1 | 0.5 |\n| 2 | 0.75 |\n\nn.\n\nMeasured on " in text
    assert text.endswith(" as it ended).\n<!-- END a -->\nmiddle\n" + other)
    assert "old a" not in text


@pytest.mark.parametrize(
    "text",
    [
        "<!-- BEGIN b -->\n<!-- END b -->\n",
        "<!-- BEGIN a -->\n",
        "<!-- END a -->\n<!-- BEGIN a -->",
    ],
)
def test_a_missing_marker_is_a_clear_error(tmp_path: Path, text: str):
    docs_table = _docs_table()
    page = tmp_path / "benchmarks.md"
    page.write_text(text)
    with pytest.raises(docs_table.DocsSectionError, match="<!-- BEGIN a -->.*<!-- END a -->"):
        docs_table.write_docs("a", ["x"], [(1,)], page=page)
    assert page.read_text() == text


def test_every_benchmark_script_has_its_section():
    text = (REPO / "docs" / "benchmarks.md").read_text()
    sections = re.findall(r"<!-- BEGIN (\S+) -->", text)
    assert sorted(sections) == sorted(set(re.findall(r"<!-- END (\S+) -->", text)))
    scripts = {  # the runnable ones; helper modules (docs_table, effect_layouts) have no main
        path.stem
        for path in (REPO / "benchmarks").glob("*.py")
        if 'if __name__ == "__main__":' in path.read_text()
    }
    writers = {s for s in scripts if "write_docs(" in (REPO / "benchmarks" / f"{s}.py").read_text()}
    assert writers == scripts - {"production_faults"}  # fault_campaign --production writes its rows
    assert {section.split("-")[0] for section in sections} == writers
