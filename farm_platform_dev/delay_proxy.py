"""A TCP proxy that adds a one-way delay to every byte it forwards, in both directions: the
latency between hosts where the kernel has no `tc netem` (farm_platform_dev.netns).

`python -m farm_platform_dev.delay_proxy DELAY_FILE LISTEN_HOST:PORT=TARGET_HOST:PORT ...`
listens on each LISTEN address and forwards to its TARGET. DELAY_FILE holds the delay in
milliseconds (missing or empty: 0) and is read again every second, so one running topology is
measured at several delays. Each chunk read is sent on once `delay` has passed since it
arrived, in order: a round trip through the proxy costs twice the delay, as a link delayed
by netem on both ends would; bandwidth is not limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

CHUNK = 1 << 16


class Delay:
    """The current delay in seconds, from a file re-read every second."""

    def __init__(self, path: Path) -> None:
        self.path, self.seconds, self._read_at = path, 0.0, 0.0

    def now(self) -> float:
        if time.monotonic() - self._read_at > 1.0:
            self._read_at = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                self.seconds = float(self.path.read_text().strip() or 0) / 1000.0
        return self.seconds


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(CHUNK):
            queue.put_nowait((time.monotonic() + delay.now(), data))
    finally:
        queue.put_nowait((time.monotonic() + delay.now(), b""))
        with contextlib.suppress(OSError, ConnectionError):
            await sender


async def _serve(listen: str, target: str, delay: Delay) -> asyncio.Server:
    target_host, target_port = target.rsplit(":", 1)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                target_host, int(target_port)
            )
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(
                _pump(reader, upstream_writer, delay),
                _pump(upstream_reader, writer, delay),
                return_exceptions=True,
            )
        finally:
            for side in (writer, upstream_writer):
                side.close()

    host, port = listen.rsplit(":", 1)
    return await asyncio.start_server(connection, host, int(port))


async def main(delay_file: Path, routes: list[str]) -> None:
    delay = Delay(delay_file)
    servers = [await _serve(*route.split("=", 1), delay) for route in routes]
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
