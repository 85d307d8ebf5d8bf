"""The real Dagster UI for tests and screenshots: `dagster-webserver` on the project's
workspace, read with Playwright driving Debian's headless Chromium (no browser download:
`apt-get install chromium`, `pip install playwright`); and what the UI's buttons do, through
the webserver's GraphQL."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from farm_platform.config import IMAGE_LOCATION, WORKSPACE_FILE
from farm_platform_dev.processes import free_port, terminate

CHROMIUM_HINT = "install Debian's browser: apt-get install chromium"


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise FileNotFoundError(f"no chromium for the UI check: {CHROMIUM_HINT}")
    return path


@contextlib.contextmanager
def webserver(
    environment: Mapping[str, str],
    log_path: Path,
    timeout: float = 180,
    workspace: Sequence[str] = ("-w", str(WORKSPACE_FILE)),
    read_only: bool = False,
    launcher: Sequence[str] | None = None,
) -> Iterator[str]:
    """`dagster-webserver`, guarded as in production (farm_platform/webserver_guard.py), on
    a free port with `environment`; its base URL once its code locations have loaded.
    `launcher`: what runs it with dagster-webserver's options (default: webservers.GUARDED)."""
    from farm_platform_dev.webservers import GUARDED, webserver_command

    port = free_port()
    process = subprocess.Popen(
        webserver_command(port, workspace, read_only, launcher or GUARDED),
        env=dict(environment),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not _locations_loaded(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the webserver did not come up: {log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        terminate(process)


def _locations_loaded(base: str) -> bool:
    """True once the server answers and no code location is still loading."""
    query = (
        b'{"query": "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"}'
    )
    request = urllib.request.Request(
        f"{base}/graphql", data=query, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            body = response.read().decode()
    except OSError:
        return False
    return '"loadStatus"' in body and "LOADING" not in body


class Browser:
    """Headless Chromium through Playwright: a page, and what a user reads on it."""

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        browser = self._playwright.chromium.launch(
            executable_path=chromium(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        self.page: Any = browser.new_page(viewport={"width": 1500, "height": 900})
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._playwright.stop()

    def open(self, url: str, click: Sequence[str] = (), settle_ms: int = 3000) -> str:
        """`url` after clicking, in order, the first element showing each text of `click`;
        the page's visible text once it has settled."""
        self.page.goto(url, wait_until="networkidle")
        skip = self.page.get_by_role("button", name="Skip")  # the first-visit newsletter modal
        if skip.count():
            skip.first.click()
        for text in click:
            self.page.get_by_text(text, exact=True).first.click(timeout=60_000)
            self.page.wait_for_load_state("networkidle")
        self.page.wait_for_timeout(settle_ms)  # asset health and graph layout settle
        return self.page.inner_text("body")

    def screenshot(self, url: str, path: Path, click: Sequence[str] = ()) -> None:
        self.open(url, click, settle_ms=4000)
        self.page.screenshot(path=str(path))
        print(f"wrote {path} ({url})")


def launch_day_run(webserver_url: str, day: str) -> str:
    """Launch a run of a whole day partition of the image assets through the webserver's
    GraphQL, as the UI's "Materialize" of one partition does; returns its run id."""
    from farm_platform.images.keys import IMAGE_PIPELINE

    query = """mutation Launch($params: ExecutionParams!) {
      launchRun(executionParams: $params) {
        __typename ... on LaunchRunSuccess { run { runId } }
        ... on PythonError { message }
      }
    }"""
    params = {
        "selector": {
            "repositoryLocationName": IMAGE_LOCATION,
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": key.path} for key in IMAGE_PIPELINE],
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]},
    }
    request = urllib.request.Request(
        f"{webserver_url}/graphql",
        data=json.dumps({"query": query, "variables": {"params": params}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    launched = (answer.get("data") or {}).get("launchRun") or {}
    if launched.get("__typename") != "LaunchRunSuccess":
        raise RuntimeError(f"the run of {day} was not launched: {answer}")
    return launched["run"]["runId"]
