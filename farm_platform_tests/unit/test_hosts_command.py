"""`farm-platform hosts env|status` on recorded hosts (no namespaces needed): the variables a
shell needs, the passwords left as references, and a status that fails while nothing runs."""

from __future__ import annotations

import json

from farm_platform.cli import main
from farm_platform_dev.hosts import HOSTS, STATE_FILE


def _record(tmp_path, init: dict) -> None:
    state = {
        "prefix": "fp45",
        "subnet": "10.45.0.0/24",
        "max_concurrent_runs": 4,
        "quick_polling": False,
        "settings": {},
        "init": init,
        "pids": {},
    }
    (tmp_path / STATE_FILE).write_text(json.dumps(state))


def test_hosts_env_names_the_shared_services_by_address_and_no_password(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("FARM_PG_PASSWORD", "pg-secret-value")
    _record(tmp_path, {})
    assert main(["hosts", "env", "--state-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "pg-secret-value" not in printed
    assert "export FARM_WAREHOUSE=postgresql://farm:${FARM_PG_PASSWORD}@10.45.0.11:5432/farm" in (
        printed
    )
    assert "export PUBSUB_EMULATOR_HOST=10.45.0.10:8085" in printed
    assert "grpc://10.45.0.15:8081,grpc://10.45.0.16:8081" in printed
    assert "127.0.0.1" not in printed


def test_hosts_status_fails_while_a_host_is_dead_and_says_so_without_hosts(tmp_path, capsys):
    assert main(["hosts", "status", "--state-dir", str(tmp_path)]) == 1
    assert "no hosts are running" in capsys.readouterr().out
    _record(tmp_path, {host: 999999999 for host in HOSTS})
    assert main(["hosts", "status", "--state-dir", str(tmp_path)]) == 1
    assert "cloud     init" in capsys.readouterr().out


def test_hosts_delay_needs_delayed_hosts_and_sets_the_proxy_s_delay(tmp_path, capsys):
    _record(tmp_path, {})
    assert main(["hosts", "delay", "--ms", "5", "--state-dir", str(tmp_path)]) == 1
    assert "hosts up --delayed" in capsys.readouterr().out
    state = json.loads((tmp_path / STATE_FILE).read_text())
    (tmp_path / STATE_FILE).write_text(json.dumps({**state, "delayed": True}))
    assert main(["hosts", "delay", "--ms", "5", "--state-dir", str(tmp_path)]) == 0
    assert (tmp_path / "delay_ms").read_text().strip() == "5.0"
