"""farm_platform_dev/delay_proxy.py, the latency between hosts where the kernel has no netem:
every byte reaches the other side, in order, both ways, with or without a delay, and a
half-closed connection is passed on. Loopback only; a second or two."""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm_platform_dev.processes import free_port, terminate


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    delay_file, port = tmp_path / "delay_ms", free_port()
    route = f"127.0.0.1:{port}=127.0.0.1:{server.server_address[1]}"
    proxy = subprocess.Popen(
        [sys.executable, "-m", "farm_platform_dev.delay_proxy", str(delay_file), route]
    )
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield port, delay_file
    finally:
        terminate(proxy)
        server.shutdown()


def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("delay_ms", ["", "5"])
def test_every_byte_comes_back_in_order_through_the_proxy(proxied, delay_ms):
    port, delay_file = proxied
    delay_file.write_text(delay_ms)
    payload = os.urandom(1 << 20)
    assert _round_trip(port, payload) == payload
