"""The production topology's two Dagster webservers, both guarded (farm_platform/
webserver_guard.py): the operators' one, which launches, cancels and wipes, and the viewers'
one, started with dagster-webserver's --read-only, which cannot. Each takes changes only from
pages of its own loopback address."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from farm_platform import config

# production.json's keys of the webservers' pids and ports, and whether each is read-only.
WEBSERVERS = {"webserver": False, "viewer_webserver": True}


def port_key(name: str) -> str:
    return f"{name}_port"


GUARDED = (sys.executable, "-m", "farm_platform.webserver_guard")


def webserver_command(
    port: int,
    workspace: Sequence[str],
    read_only: bool = False,
    launcher: Sequence[str] = GUARDED,
    host: str = "127.0.0.1",
) -> list[str]:
    """dagster-webserver's command line, guarded, on `host`:`port`; `workspace`: its
    workspace options (`-w FILE`, `-f FILE`, ...); `launcher`: what takes dagster-webserver's
    options (the image's deploy/docker/dagster-webserver, say)."""
    args = [*launcher, "-h", host, "-p", str(port), *workspace]
    return args + (["--read-only"] if read_only else [])


def own_origins(port: int, environment: dict[str, str]) -> dict[str, str]:
    """The guard's setting for a webserver on 127.0.0.1:`port`: its loopback addresses,
    and any origin the environment already allows (an SSH tunnel's, say)."""
    extra = environment.get(config.FARM_WEBSERVER_ALLOWED_ORIGINS, "")
    origins = [f"http://127.0.0.1:{port}", f"http://localhost:{port}", *extra.split(",")]
    return {config.FARM_WEBSERVER_ALLOWED_ORIGINS: ",".join(filter(None, origins))}
