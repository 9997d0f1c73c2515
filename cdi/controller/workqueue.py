"""A work queue of :class:`~.keys.Key` s, as controller-runtime's: deduplicated, one worker per key,
per-key exponential back-off after failures.

Watch events only *name* the object that needs attention; the reconciler then reads the
current state and converges. So ten events for one DataVolume while it is queued cost one
reconcile, and a key is never reconciled by two workers at once: one added while it is being
processed is queued again once that worker is done. ``add_after`` schedules a later look
(progress polling). A failing key is retried after ``base * 2**failures`` seconds (capped, with
jitter so a failing fleet does not retry in lockstep); a permanent error is handed to the
reconciler's ``fail`` and not retried; a success forgets the key's failures.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import PermanentError, ReconcileError, classify
from .keys import Key

log = logging.getLogger("cdi.controller.queue")

Handler = Callable[[Key], Awaitable[float | None]]
FailHandler = Callable[[Key, PermanentError], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    cap: float = 300.0
    jitter: float = 0.2
    """The delay is scaled by a random factor in ``[1 - jitter, 1]``."""

    def delay(self, failures: int) -> float:
        raw = min(self.cap, self.base * float(2 ** min(failures - 1, 30)))
        return raw * (1.0 - self.jitter * random.random())


class WorkQueue:
    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}

    def add(self, key: Key) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, delay: float) -> None:
        """Look at ``key`` again in ``delay`` seconds; an earlier pending look wins."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None and existing.when() <= loop.time() + delay:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def failures(self, key: Key) -> int:
        return self._failures.get(key, 0)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def __len__(self) -> int:
        return len(self._queued) + len(self._processing)

    async def run_worker(self, handle: Handler, fail: FailHandler | None = None) -> None:
        """Process keys forever; ``handle`` returns seconds until the key wants another look."""
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._processing.add(key)
            try:
                again = await self._process(key, handle, fail)
            finally:
                self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif again is not None:
                self.add_after(key, again)

    async def _process(self, key: Key, handle: Handler, fail: FailHandler | None) -> float | None:
        try:
            again = await handle(key)
        except Exception as raised:  # noqa: BLE001 - every error is classified, none kills a worker
            return await self._failed(key, classify(raised), raised, fail)
        self._failures.pop(key, None)
        return again

    async def _failed(self, key: Key, error: ReconcileError, raised: Exception,
                      fail: FailHandler | None) -> float | None:
        if isinstance(error, PermanentError):
            self._failures.pop(key, None)
            log.warning("%s: permanent error, not retried: %s: %s", key, error.reason, error.message)
            if fail is not None:
                try:
                    await fail(key, error)
                except Exception:  # noqa: BLE001 - reporting failed: the next change to the object retries
                    log.exception("%s: cannot record the permanent error", key)
            return None
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = self.backoff.delay(failures)
        if error is raised:
            log.warning("%s: %s (attempt %d); retrying in %.1fs", key, error.message, failures, delay)
        else:
            log.warning("%s: failed (attempt %d); retrying in %.1fs", key, failures, delay, exc_info=raised)
        return delay
