"""A TCP relay that holds every connection to a steady rate, with no burst.

nginx's ``limit_rate`` is per request and lets each one send a second's worth at once
(``rate x (elapsed + 1)``), so a parallel reader whose ranges are smaller than that is hardly
limited at all. This relay shapes what the server sends on each connection to ``rate``
bytes/s from the first byte, the way a per-flow cap of a CDN or an object store does, so the
benchmarks can show both.
"""

from __future__ import annotations

import asyncio
import threading
import time

from tests.servers.ports import free_port, wait_listening


class Throttle:
    """Listens on a free loopback port; relays to ``upstream_port`` at ``rate`` bytes/s per
    connection (downstream; requests go up unshaped)."""

    def __init__(self, upstream_port: int, rate: int) -> None:
        self.upstream_port, self.rate = upstream_port, rate
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_listening(self.port)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(_pipe(reader, up_writer, None), _pipe(up_reader, writer, self.rate),
                             return_exceptions=True)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: int | None) -> None:
    started, sent = time.monotonic(), 0
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
            sent += len(data)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
                elif ahead < -0.05:  # idle time (between requests) earns no burst
                    started += -ahead - 0.05
    finally:
        writer.close()
