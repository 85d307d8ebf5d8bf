"""Operations on running hosts (farm_platform_dev.hosts): a service restarted inside its
host, a simulated farm's positions shipped to every host that runs platform code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm_platform_dev.emulators import StackError
from farm_platform_dev.hosts import (
    INSTANCE_HOSTS,
    Hosts,
    load_hosts,
    read_state,
    run_agent,
    write_state,
)


def publish_field_map(hosts: Hosts, farm: Any) -> None:
    """The positions of the simulated `farm` (a FarmConfig) on every host that runs platform
    code, as the trial's field map ships with the code, before any photo arrives."""
    from farm_platform_dev.simulate.publish import field_map, write_field_map

    for host in INSTANCE_HOSTS:
        write_field_map(field_map(farm), hosts.field_map(host))


def restart_service(state_dir: Path, host: str, service: str) -> int:
    """Start `host`'s `service` again (after it died or was killed) inside the host, and
    record its new pid."""
    hosts, state = load_hosts(state_dir), read_state(state_dir)
    if hosts is None or state is None:
        raise StackError(f"no hosts are running from {state_dir}")
    started = run_agent(hosts, state, host, only=service)
    state["pids"][host].update(started)
    write_state(state_dir, state)
    return started[service]
