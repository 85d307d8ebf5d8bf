"""`farm-platform code-server-check`: whether a code server serves (the production
topology's watchdog and the Kubernetes liveness probe of the code servers ask it).

A pid says nothing about whether a code server serves. `dagster code-server start` serves
from a child process, which shuts itself down after 30 s without a heartbeat from its
parent: after a pause of the parent (SIGSTOP, a VM paused or migrated) the parent keeps its
pid and port and answers nothing, and every sensor of its location stops. Dagster's gRPC
health check answers for the parent alone (it still says SERVING then); `GetServerId` is
forwarded to the child, so it is the question asked here, with a timeout, since a stopped
process accepts connections (the kernel does) and never replies.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from farm_platform import config, config_values


def code_server_answers(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """True if the code server on `port` answers `GetServerId` within `timeout` seconds:
    its serving child is there, not only the process that holds the port."""
    from dagster._grpc.client import DagsterGrpcClient

    try:
        DagsterGrpcClient(port=port, host=host).get_server_id(timeout=math.ceil(timeout))
    except Exception:  # unreachable, timed out, or no child to forward to
        return False
    return True


def _code_server_check(args: argparse.Namespace) -> int:
    timeout = args.timeout or config_values.code_server_check_timeout_seconds()
    if code_server_answers(args.port, timeout, host=args.host):
        print(f"code server {args.host}:{args.port} answers")
        return 0
    where = f"{args.host}:{args.port}"
    print(f"code server {where} did not answer (unreachable, or silent for {timeout:g} s)")
    return 1


def add_code_server_check_command(commands: Any) -> None:
    parser = commands.add_parser(
        "code-server-check",
        help="exit 0 if the gRPC code server on --port answers (its serving child, not only "
        "the process holding the port), else 1: the watchdog's question, and the Kubernetes "
        "liveness probe of the code servers",
    )
    parser.add_argument("--port", type=int, required=True, help="the code server's port")
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for the answer (default: $FARM_CODE_SERVER_CHECK_TIMEOUT_SECONDS "
        f"or {config.DEFAULT_CODE_SERVER_CHECK_TIMEOUT_SECONDS:g})",
    )
    parser.set_defaults(handler=_code_server_check)
