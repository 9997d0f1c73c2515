"""A work queue of object keys, as controller-runtime's: deduplicated, one worker per key.

Watch events only *name* the object that needs attention; the reconciler then reads the
current state and converges. So ten events for one DataVolume while it is queued cost one
reconcile, and a key is never reconciled by two workers at once: one added while it is being
processed is queued again once that worker is done. ``add_after`` schedules a later look
(progress polling, back-off after an error).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
import logging

log = logging.getLogger("cdi.controller.queue")


class WorkQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}

    def add(self, key: Hashable) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        """Look at ``key`` again in ``delay`` seconds; an earlier pending look wins."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None and existing.when() <= loop.time() + delay:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def __len__(self) -> int:
        return len(self._queued) + len(self._processing)

    async def run_worker(self, handle: Callable[[Hashable], Awaitable[float | None]]) -> None:
        """Process keys forever; ``handle`` returns seconds until the key wants another look."""
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._processing.add(key)
            try:
                again = await handle(key)
            except Exception:  # a bug or an API outage: log, back off, try again
                log.exception("reconciling %s failed; retrying in 5s", key)
                again = 5.0
            finally:
                self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif again is not None:
                self.add_after(key, again)
