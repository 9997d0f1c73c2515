"""The one interface every source implements, and the retry/resume loop they share.

A source is opened once (:meth:`Source.open`, which learns the size and whether random access
works), then read either as one sequential stream (:meth:`Source.chunks`) or, when
``info.random_access`` is true, by ranges (:meth:`Source.read_at`). Sources raise the errors
of :mod:`importer.errors`; temporary faults inside ``chunks`` are retried by
:func:`resuming_chunks`, which reopens the stream at the byte where it broke.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import TemporaryError
from .guards import RetryBudget, SpeedFloor

log = logging.getLogger(__name__)


@dataclass
class SourceInfo:
    size: int | None
    """Bytes the source will deliver (as served, before any decompression), when known."""
    random_access: bool
    """True when :meth:`Source.read_at` works (HTTP ranges, S3, a local file)."""
    name: str = ""
    """A short name for messages: the URL without credentials, or the path."""
    labels: dict[str, str] = field(default_factory=dict)
    """Labels learned from the source (registry image env ``*_KUBEVIRT_IO_*``)."""


@dataclass
class RetryPolicy:
    """How long temporary faults are retried inside one process before giving up, and the
    rate below which a transfer counts as failed."""

    attempts: int = 8
    """Retries in a row; the count refills once the source delivers healthily again."""
    initial_delay: float = 0.5
    max_delay: float = 15.0
    stall_timeout: float = 30.0
    """Seconds without a byte before a connection counts as dead."""
    connect_timeout: float = 20.0
    speed_limit: int = 1024
    """Bytes/s: a transfer below this rate for ``speed_time`` seconds fails (temporarily, and
    is resumed); 0 turns the floor off. Like curl's ``--speed-limit``."""
    speed_time: float = 60.0
    """Seconds the rate must stay below ``speed_limit`` to fail. Like curl's ``--speed-time``."""
    retry_time: float = 300.0
    """Seconds one transfer may spend, in all, recovering from faults (waits, reconnects,
    slow recovery); past it the import fails with a temporary error that says so."""

    def delays(self) -> Iterator[float]:
        delay = self.initial_delay
        for _ in range(self.attempts):
            yield delay
            delay = min(self.max_delay, delay * 2)


class Source(ABC):
    """A place an image comes from."""

    kind = "source"

    @abstractmethod
    def open(self) -> SourceInfo:
        """Connect, check that the object exists and is readable, and describe it.

        Raises a PermanentError for what retrying cannot fix (404, 401/403, bad URL)."""

    @abstractmethod
    def chunks(self, start: int = 0) -> Iterator[bytes]:
        """The bytes from ``start`` to the end, in order, resuming over temporary faults."""

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer only at the end). Needs ``random_access``."""
        raise NotImplementedError(f"{self.kind} source has no random access")

    def close(self) -> None:
        """Release connections and temporary files."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def redact(url: str) -> str:
    """The URL without any ``user:password@``, for names, messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (the delta-seconds form; a date is ignored)."""
    value = (value or "").strip()
    return float(value) if value.isdigit() else None


OpenAt = Callable[[int], Iterator[bytes]]
T = TypeVar("T")


def retrying(policy: RetryPolicy, describe: str, action: Callable[[], T]) -> T:
    """Run ``action`` (a request that is not a stream: a manifest, a token, a range), retrying
    temporary faults within the policy's budget."""
    budget = RetryBudget(policy, describe)
    while True:
        try:
            return action()
        except TemporaryError as error:
            delay = budget.next_delay(error)
            log.warning("%s: %s; retrying in %.1fs", describe, error, delay)
            time.sleep(delay)


def resuming_chunks(
    open_at: OpenAt,
    start: int,
    policy: RetryPolicy,
    describe: str,
    on_retry: Callable[[TemporaryError, float], None] | None = None,
) -> Iterator[bytes]:
    """Yield the stream from ``start``; on a temporary fault, wait and reopen at the next byte.

    ``open_at(offset)`` must return an iterator that starts exactly at ``offset`` (the source
    decides how: a Range request, skipping bytes when the server ignores ranges, ...). Each
    connection is held to the policy's speed floor; the retries are bounded by its
    :class:`~importer.sources.guards.RetryBudget` (so many in a row, so many seconds in all),
    so a flaky link that keeps delivering finishes, while a source that is down, silent or
    dripping fails in bounded time with a message that says what was spent.
    """
    position = start
    budget = RetryBudget(policy, describe)
    while True:
        try:
            floor = SpeedFloor(policy.speed_limit, policy.speed_time, describe)
            for chunk in floor.watch(open_at(position)):
                if chunk:
                    position += len(chunk)
                    budget.progress(len(chunk))
                    yield chunk
            return
        except TemporaryError as error:
            delay = budget.next_delay(error)
            log.warning("%s: %s; resuming at byte %d in %.1fs", describe, error, position, delay)
            if on_retry:
                on_retry(error, delay)
            time.sleep(delay)
