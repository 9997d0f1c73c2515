"""Progress, from one place: phases, bytes done, total when known, rate.

The pipeline owns one :class:`Progress`; listeners receive :class:`ProgressEvent` values at
most every ``interval`` seconds (and on every phase change and at the end). The CLI's tqdm
bar, the library's callback and the pod's Prometheus counter are all just listeners.

``overall`` is the share of the whole import done, 0..100: the pipeline announces its plan
(the weighted phases it will go through, e.g. transfer only when it converts while
streaming, or transfer then convert when it stages to scratch), so the number never jumps
back and the convert phase is counted too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

PROBE = "probe"
TRANSFER = "transfer"
CONVERT = "convert"
VERIFY = "verify"
RESIZE = "resize"
DONE = "done"


@dataclass(frozen=True)
class ProgressEvent:
    phase: str
    done: int
    """Bytes handled in this phase so far."""
    total: int | None
    """Bytes this phase will handle, when known."""
    rate: float
    """Bytes per second over the recent window."""
    overall: float | None
    """Percent of the whole import, 0..100, when it can be known."""

    @property
    def percent(self) -> float | None:
        if not self.total:
            return None
        return min(100.0, 100.0 * self.done / self.total)


ProgressListener = Callable[[ProgressEvent], None]


class Progress:
    """Thread-safe progress accounting that fans out throttled events to listeners."""

    def __init__(self, listeners: Iterable[ProgressListener] = (), interval: float = 0.5) -> None:
        self._listeners = list(listeners)
        self._interval = interval
        self._lock = threading.Lock()
        self._plan: list[tuple[str, float]] = [(TRANSFER, 1.0)]
        self._phase = PROBE
        self._done = 0
        self._total: int | None = None
        self._last_emit = 0.0
        self._window: tuple[float, int] = (time.monotonic(), 0)
        self._rate = 0.0

    def add_listener(self, listener: ProgressListener) -> None:
        self._listeners.append(listener)

    def plan(self, phases: Iterable[tuple[str, float]]) -> None:
        """Declare the weighted phases that count towards ``overall``."""
        with self._lock:
            self._plan = list(phases)

    def phase(self, name: str, total: int | None = None) -> None:
        self._emit(force=True)  # listeners see where the previous phase ended
        with self._lock:
            self._phase, self._done, self._total = name, 0, total
            self._window = (time.monotonic(), 0)
            self._rate = 0.0
        self._emit(force=True)

    def set_total(self, total: int | None) -> None:
        with self._lock:
            self._total = total

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes
        self._emit()

    def update(self, done: int, total: int | None = None) -> None:
        """Set the absolute count (for phases measured by someone else, e.g. qemu-img -p)."""
        with self._lock:
            self._done = done
            if total is not None:
                self._total = total
        self._emit()

    def finish(self) -> None:
        with self._lock:
            self._phase, self._done, self._total = DONE, 0, None
        self._emit(force=True)

    def snapshot(self) -> ProgressEvent:
        with self._lock:
            return self._event_locked(time.monotonic())

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_emit < self._interval:
                return
            self._last_emit = now
            event = self._event_locked(now)
        for listener in self._listeners:
            listener(event)

    def _event_locked(self, now: float) -> ProgressEvent:
        started, done_then = self._window
        if now - started >= 1.0:
            self._rate = (self._done - done_then) / (now - started)
            self._window = (now, self._done)
        elif self._rate == 0.0 and now > started:
            self._rate = (self._done - done_then) / (now - started)
        return ProgressEvent(self._phase, self._done, self._total, self._rate, self._overall_locked())

    def _overall_locked(self) -> float | None:
        if self._phase == DONE:
            return 100.0
        weights = sum(w for _, w in self._plan) or 1.0
        before = 0.0
        for name, weight in self._plan:
            if name == self._phase:
                if not self._total:
                    return 100.0 * before / weights if before else None
                fraction = min(1.0, self._done / self._total)
                # never claim 100 % before the pipeline says it is done
                return min(99.99, 100.0 * (before + weight * fraction) / weights)
            before += weight
        # a phase outside the plan (probe, resize): report what was reached so far
        return min(99.99, 100.0 * before / weights) if self._phase != PROBE else 0.0
