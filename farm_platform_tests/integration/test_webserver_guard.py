"""Issue 40, item 4: the webserver launched runs from a plain GET, and from any web page.

The real guarded webserver (`python -m farm_platform.webserver_guard`, what the production
topology and the cluster's image run) on a one-job code location, over real HTTP and
websockets, and once from headless Chromium: a mutation sent by GET is refused however it
is spelled, a page of another origin can change nothing, the UI's own requests still work,
and the viewers' read-only webserver cannot launch. A launched run is only queued (no
daemon), so that the number of runs says whether a mutation took effect."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from farm_platform import config
from farm_platform.admin.instance import prepare_dagster_home
from farm_platform.webserver_guard import foreign_origin, non_query_operations
from farm_platform_dev.ui import webserver

DEFS = Path(__file__).with_name("webserver_guard_defs.py")
# What the project's image runs as `dagster-webserver` (Dockerfile): Dagster's Helm chart
# starts its webservers, the read-only one included, by that name.
IMAGE_WEBSERVER = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "dagster-webserver"
LAUNCH = (
    "mutation Launch { launchRun(executionParams: { selector: { repositoryLocationName: "
    '"webserver_guard_defs.py", repositoryName: "__repository__", jobName: "hello" } }) '
    "{ __typename } }"
)
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[str, str, Path]]:
    """The operators' and the viewers' (read-only) webservers on one instance, and its home;
    the viewers' one through the image's dagster-webserver script, as the cluster runs it."""
    workdir = tmp_path_factory.mktemp("guard")
    home = workdir / "dagster"
    prepare_dagster_home(home)
    environment = {**_base_environment(), config.DAGSTER_HOME: str(home)}
    # The image's `python` for the viewers' one, started as the cluster starts it.
    image_path = {"PATH": f"{Path(sys.executable).parent}:{environment.get('PATH', '')}"}
    workspace = ("-f", str(DEFS))
    with (
        webserver(environment, workdir / "operators.log", workspace=workspace) as operators,
        webserver(
            {**environment, **image_path},
            workdir / "viewers.log",
            workspace=workspace,
            read_only=True,
            launcher=[str(IMAGE_WEBSERVER)],
        ) as viewers,
    ):
        yield operators, viewers, home


def _base_environment() -> dict[str, str]:
    import os

    return {
        name: value
        for name, value in os.environ.items()
        if name != config.FARM_WEBSERVER_ALLOWED_ORIGINS
    }


def runs(home: Path) -> int:
    with DagsterInstance.from_config(str(home)) as instance:
        return instance.get_runs_count()


def send(
    url: str, body: dict | bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    """(status, JSON answer) of a GET (no body) or POST to `url`."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": "application/json", **(headers or {})} if body else headers
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


GET_MUTATIONS = {
    "plain": urllib.parse.urlencode({"query": LAUNCH}),
    # %6D is "m": the document Dagster would execute after decoding is still a mutation.
    "percent-encoded": "query=%6Dutation%20%7B%20launchRun(executionParams%3A%20%7Bselector%3A"
    + urllib.parse.quote(LAUNCH.split("selector:", 1)[1]),
    "encoded parameter name": "%71uery=" + urllib.parse.quote(LAUNCH),
    "plus for space": urllib.parse.urlencode({"query": LAUNCH}).replace("%20", "+"),
    "operationName selects it": urllib.parse.urlencode(
        {"query": "query Look { version } " + LAUNCH, "operationName": "Launch"}
    ),
    "beside a query it names": urllib.parse.urlencode(
        {"query": LAUNCH + " query Look { version }", "operationName": "Look"}
    ),
    "second query parameter": "query=%7B%20version%20%7D&"
    + urllib.parse.urlencode({"query": LAUNCH}),
}


@pytest.mark.slow
@pytest.mark.parametrize("query_string", GET_MUTATIONS.values(), ids=GET_MUTATIONS.keys())
# Starlette routes on the decoded path: /%67raphql is /graphql.
@pytest.mark.parametrize("path", ["/graphql", "/graphql/", "/%67raphql"])
def test_a_mutation_sent_by_get_is_refused_and_launches_nothing(servers, query_string, path):
    operators, _, home = servers
    before = runs(home)
    status, answer = send(f"{operators}{path}?{query_string}", headers={"Origin": operators})
    assert status == 405, answer
    assert "GET carries queries only" in answer["errors"][0]["message"]
    assert runs(home) == before


@pytest.mark.slow
def test_a_query_sent_by_get_is_still_answered_and_an_unreadable_one_refused(servers):
    operators, _, _ = servers
    status, answer = send(
        f"{operators}/graphql?" + urllib.parse.urlencode({"query": "{ version }"})
    )
    assert status == 200 and answer["data"]["version"]
    status, answer = send(f"{operators}/graphql?" + urllib.parse.urlencode({"query": "mutation {"}))
    assert status == 400 and "does not parse" in answer["errors"][0]["message"]


FOREIGN = {
    "Origin": ({"Origin": EVIL}, {"query": LAUNCH}),
    "Origin null (sandboxed frame)": ({"Origin": "null"}, {"query": LAUNCH}),
    "same site, another port": ({"Origin": "http://127.0.0.1:1"}, {"query": LAUNCH}),
    "Sec-Fetch-Site only": ({"Sec-Fetch-Site": "cross-site"}, {"query": LAUNCH}),
    "Referer only": ({"Referer": f"{EVIL}/page.html"}, {"query": LAUNCH}),
    # A form's body: Dagster then reads the document from the URL's query string.
    "form POST": ({"Origin": EVIL, "Content-Type": "text/plain"}, b"x"),
}


@pytest.mark.slow
@pytest.mark.parametrize("headers,body", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_post_from_another_origin_is_refused(servers, headers, body):
    operators, _, home = servers
    before = runs(home)
    url = f"{operators}/graphql?" + urllib.parse.urlencode({"query": LAUNCH})
    status, answer = send(url, body, headers)
    assert status == 403, answer
    assert config.FARM_WEBSERVER_ALLOWED_ORIGINS in answer["errors"][0]["message"]
    assert runs(home) == before


@pytest.mark.slow
def test_a_foreign_page_cannot_report_an_asset_event_either(servers):
    operators, _, _ = servers
    status, _ = send(f"{operators}/report_asset_materialization/x", {}, {"Origin": EVIL})
    assert status == 403


@pytest.mark.slow
@pytest.mark.parametrize(
    "headers",
    [{"Origin": "own"}, {"Sec-Fetch-Site": "same-origin"}, {}],
    ids=["the UI's Origin", "Sec-Fetch-Site same-origin", "no browser (curl, client)"],
)
def test_the_uis_own_post_still_launches_a_run(servers, headers):
    operators, _, home = servers
    before = runs(home)
    headers = {name: operators if value == "own" else value for name, value in headers.items()}
    status, answer = send(f"{operators}/graphql", {"query": LAUNCH}, headers)
    assert status == 200 and answer["data"]["launchRun"]["__typename"] == "LaunchRunSuccess"
    assert runs(home) == before + 1


@pytest.mark.slow
def test_the_read_only_webserver_refuses_to_launch(servers):
    _, viewers, home = servers
    before = runs(home)
    status, answer = send(f"{viewers}/graphql", {"query": LAUNCH}, {"Origin": viewers})
    assert status == 200 and answer["data"]["launchRun"]["__typename"] == "UnauthorizedError"
    status, _ = send(f"{viewers}/graphql?" + urllib.parse.urlencode({"query": LAUNCH}))
    assert status == 405
    status, answer = send(f"{viewers}/graphql", {"query": "{ version }"}, {"Origin": viewers})
    assert status == 200 and answer["data"]["version"]
    assert runs(home) == before


@pytest.mark.slow
def test_the_uis_subscriptions_pass_and_a_foreign_pages_websocket_is_refused(servers):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    operators, _, _ = servers
    url = operators.replace("http://", "ws://") + "/graphql"
    query = 'subscription { pipelineRunLogs(runId: "none") { __typename } }'
    with connect(url, subprotocols=["graphql-ws"], origin=operators, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(ws.recv(30))["type"] == "connection_ack"
        ws.send(json.dumps({"type": "start", "id": "1", "payload": {"query": query}}))
        data = json.loads(ws.recv(30))
    assert data["payload"]["data"]["pipelineRunLogs"]["__typename"].startswith("PipelineRunLogs")
    with pytest.raises(InvalidStatus) as refused:
        connect(url, subprotocols=["graphql-ws"], origin=EVIL, open_timeout=30)
    assert refused.value.response.status_code == 403


ATTACK_PAGE = """<html><body>
<img src="{target}/graphql?{get}">
<form id="f" method="POST" enctype="text/plain" action="{target}/graphql?{get}" target="sink">
<input name="x" value="y"></form><iframe name="sink"></iframe>
<script>
fetch("{target}/graphql?{get}", {{mode: "no-cors"}});
fetch("{target}/graphql", {{method: "POST", mode: "no-cors",
  headers: {{"Content-Type": "text/plain; charset=application/json"}},
  body: JSON.stringify({{query: {launch}}})}});
document.getElementById("f").submit();
</script></body></html>"""


@contextlib.contextmanager
def attack_site(page: str, folder: Path) -> Iterator[str]:
    """A page served from another origin (127.0.0.1 on another port)."""
    (folder / "attack.html").write_text(page)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/attack.html"
    finally:
        server.shutdown()


@pytest.mark.slow
def test_in_a_browser_a_foreign_page_launches_nothing_and_the_ui_still_does(servers, tmp_path):
    from farm_platform_dev.ui import Browser

    operators, _, home = servers
    get = urllib.parse.urlencode({"query": LAUNCH})
    page = ATTACK_PAGE.format(target=operators, get=get, launch=json.dumps(LAUNCH))
    before = runs(home)
    with Browser() as browser, attack_site(page, tmp_path) as attack:
        browser.page.goto(attack, wait_until="networkidle")
        browser.page.wait_for_timeout(2000)  # the form's navigation and the fetches land
        assert runs(home) == before
        text = browser.open(f"{operators}/runs", settle_ms=1000)
        assert "Runs" in text  # the UI loads through the guard
        launched = browser.page.evaluate(
            "async (q) => (await (await fetch('/graphql', {method: 'POST', headers: "
            "{'Content-Type': 'application/json'}, body: JSON.stringify({query: q})})).json())",
            LAUNCH,
        )
    assert launched["data"]["launchRun"]["__typename"] == "LaunchRunSuccess"
    assert runs(home) == before + 1


def test_every_operation_but_a_query_is_found():
    assert non_query_operations("{ a } query B { b }") == []
    assert non_query_operations("query A { a } mutation B { b }") == ["mutation"]
    assert non_query_operations("subscription { s }") == ["subscription"]


@pytest.mark.parametrize(
    "headers,allowed,foreign",
    [
        ({"origin": "HTTP://127.0.0.1:3000", "host": "127.0.0.1:3000"}, set(), False),
        ({"origin": "https://ui.example", "host": "ui.example"}, set(), False),  # TLS in front
        ({"origin": "http://127.0.0.1:3001", "host": "127.0.0.1:3000"}, set(), True),
        ({"origin": "https://ui.example"}, {"https://ui.example"}, False),
        # DNS rebinding: the Host agrees with the Origin, the configured list does not.
        (
            {"origin": "http://evil.example:3000", "host": "evil.example:3000"},
            {"http://a:3000"},
            True,
        ),
        ({"sec-fetch-site": "same-site"}, set(), True),
        ({"sec-fetch-site": "none"}, set(), False),
        ({"referer": "http://a:3000/runs", "host": "a:3000"}, set(), False),
        ({}, set(), False),
    ],
)
def test_a_browsers_origin_is_read_from_origin_then_sec_fetch_site_then_referer(
    headers, allowed, foreign
):
    assert (foreign_origin(headers, frozenset(allowed)) is not None) == foreign


def test_allowed_origins_are_validated(monkeypatch):
    from farm_platform.config_values import webserver_allowed_origins

    given = "https://UI.example:443/, http://a:3000"
    assert webserver_allowed_origins(given) == {"https://ui.example", "http://a:3000"}
    for bad in ("ui.example", "https://ui.example/dagster", "ftp://ui.example", "http://u@h"):
        with pytest.raises(config.ConfigError, match=config.FARM_WEBSERVER_ALLOWED_ORIGINS):
            webserver_allowed_origins(bad)
