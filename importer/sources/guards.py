"""What a source may believe of a server, and how long it may wait for one.

Four small checks every network source shares:

* :func:`check_content_range`: a 206 answer must carry exactly the range that was asked for,
  and its total must be the size known so far. Another total means the object changed (start
  over); another range means the server's ranges cannot be trusted (fail: splicing the answer
  in would make a disk that is silently wrong).
* :func:`same_origin`: credentials go only to the scheme, host and port they were given for.
* :class:`SpeedFloor`: like curl's ``--speed-limit``/``--speed-time``, a transfer whose rate
  stays below ``speed_limit`` bytes/s for ``speed_time`` seconds of waiting on the source is a
  temporary failure (the time a slow consumer keeps the producer waiting does not count).
* :class:`RetryBudget`: how many retries in a row (``attempts``), and how many seconds in all
  (``retry_time``) one transfer may spend recovering from faults; the error says what was spent.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple
from urllib.parse import urlsplit

from ..errors import PermanentError, SourceChanged, SourceUnavailable, TemporaryError

if TYPE_CHECKING:
    from .base import RetryPolicy

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_content_range(header: str | None, start: int, end: int | None, size: int | None,
                        name: str) -> int:
    """Check a 206's ``Content-Range`` against the request ``bytes=start-end`` (``end``
    inclusive, None: to the end) and the known ``size``; returns the total it states."""
    match = _CONTENT_RANGE.fullmatch((header or "").strip())
    asked = f"bytes {start}-{'' if end is None else end}"
    if not match:
        raise PermanentError(f"{name}: the server answered a request for {asked} with 206 but "
                             f"Content-Range {header!r}; its ranges cannot be trusted",
                             reason="BadRangeResponse")
    first, last, total_text = int(match.group(1)), int(match.group(2)), match.group(3)
    total = size if total_text == "*" else int(total_text)
    if size is not None and total != size:
        raise SourceChanged(f"{name} changed while it was being imported (it had {size} bytes, "
                            f"a ranged answer says {total_text}); starting over")
    want_last = end if end is not None else (total - 1 if total is not None else last)
    if first != start or last != want_last or total is None:
        raise PermanentError(f"{name}: asked for {asked}, the server answered with "
                             f"{header!r}; its ranges cannot be trusted (a resumed or ranged "
                             "read would splice the wrong bytes into the disk)",
                             reason="BadRangeResponse")
    return total


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


def origin(url: str) -> Origin:
    """Scheme, host and port (the default one when not written) of ``url``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return Origin(scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme, 0))


def same_origin(a: str, b: str) -> bool:
    return origin(a) == origin(b)


class SpeedFloor:
    """Fails a transfer whose rate stays below ``limit`` bytes/s for ``window`` seconds."""

    def __init__(self, limit: int, window: float, name: str) -> None:
        self.limit, self.window, self.name = limit, window, name
        self._waited = 0.0
        self._got = 0

    def tick(self, nbytes: int, waited: float) -> None:
        """Count ``nbytes`` that took ``waited`` seconds of waiting on the source."""
        if self.limit <= 0:
            return
        self._waited += waited
        self._got += nbytes
        if self._waited < self.window:
            return
        if self._got < self.limit * self._waited:
            raise SourceUnavailable(
                f"transfer from {self.name} is too slow: {self._got} bytes in {self._waited:.1f}s, "
                f"below the floor of {self.limit} bytes/s held for {self.window:g}s "
                "(speed limit / speed time)")
        self._waited, self._got = 0.0, 0

    def watch(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks``, timed: only the time spent waiting for the next chunk counts."""
        iterator = iter(chunks)
        try:
            while True:
                began = time.monotonic()
                try:
                    chunk = next(iterator)
                except StopIteration:
                    return
                self.tick(len(chunk), time.monotonic() - began)
                yield chunk
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


class RetryBudget:
    """Retries of one transfer: ``attempts`` in a row, ``retry_time`` seconds in all.

    A streak of faults ends only when the source delivered a window's worth of data at the
    floor rate (``speed_limit * speed_time`` bytes) since the last fault: a server that drips,
    stalls or resets after every few bytes cannot refill the budget by trickling. The seconds
    counted are those from each fault to the end of its streak (waiting, reconnecting, slow
    recovery)."""

    def __init__(self, policy: "RetryPolicy", name: str) -> None:
        self.policy, self.name = policy, name
        self.healthy_bytes = max(1, int(policy.speed_limit * policy.speed_time))
        self._delays = policy.delays()
        self.retries = 0
        self.spent = 0.0
        self._streak_began: float | None = None
        self._since_fault = 0

    def progress(self, nbytes: int) -> None:
        if self._streak_began is None:
            return
        self._since_fault += nbytes
        if self._since_fault >= self.healthy_bytes:
            self.spent += time.monotonic() - self._streak_began
            self._streak_began = None
            self._delays = self.policy.delays()

    def next_delay(self, error: TemporaryError) -> float:
        """The wait before the next try, or SourceUnavailable saying what was spent."""
        now = time.monotonic()
        if self._streak_began is None:
            self._streak_began = now
        self._since_fault = 0
        spent = self.spent + now - self._streak_began
        delay = next(self._delays, None)
        if isinstance(error, SourceUnavailable) and error.retry_after and delay is not None:
            delay = max(delay, min(error.retry_after, self.policy.max_delay))
        if delay is None or spent + delay > self.policy.retry_time:
            raise SourceUnavailable(
                f"{error} ({self.name}: gave up after {self.retries} retries over {spent:.1f}s; "
                f"the retry budget is {self.policy.attempts} retries in a row and "
                f"{self.policy.retry_time:g}s in all)") from error
        self.retries += 1
        return delay
