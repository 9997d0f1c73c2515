"""One clone from the cloner's side: open the source, find the server's resume point, send.

Transitions: open source -> ask the server -> (create | resume at its offset) -> send frames
-> done; a temporary failure goes back to *ask* (within the retry budget).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from importer.errors import InvalidSource

from .client import CloneClient, CloneRefused, RetryPolicy, ServerState, with_retries
from .frames import Counters, Prefetch, Segmenter
from .source import CloneSource

log = logging.getLogger(__name__)


@dataclass
class CloneOutcome:
    size: int
    content_type: str
    wire_bytes: int
    data_bytes: int
    resumed_from: list[int]
    """The offsets sending (re)started from; ``[0]`` for a clone that was never cut."""
    seconds: float


class Cloner:
    def __init__(self, source: CloneSource, client: CloneClient, *, compress: bool = True,
                 segment_bytes: int = 16 << 20, policy: RetryPolicy | None = None,
                 on_position: Callable[[int], None] | None = None) -> None:
        self.source = source
        self.client = client
        self.compress = compress
        self.segment_bytes = segment_bytes
        self.policy = policy or RetryPolicy()
        self.counters = Counters(listeners=[on_position] if on_position else [])
        self.resumed_from: list[int] = []
        self.acknowledged = 0
        self.finished = False

    def run(self) -> CloneOutcome:
        started = time.monotonic()
        with_retries(self._attempt, self.policy, lambda: self.acknowledged)
        return CloneOutcome(self.source.size, self.source.content_type, self.counters.wire_bytes,
                            self.counters.data_bytes, self.resumed_from, time.monotonic() - started)

    def _attempt(self) -> bool:
        server = self.client.state()
        if server.state == "done" and server.content_type == self.source.content_type:
            log.info("the upload server already completed this clone (its answer was lost)")
            self.finished = True
            return True
        start = self._start_offset(server)
        self.acknowledged = max(self.acknowledged, start)
        self.resumed_from.append(start)
        log.info("sending %s content from offset %d of %d", self.source.content_type, start, self.source.size)
        segmenter = Segmenter(self.source, start, segment_data=self.segment_bytes, compress=self.compress,
                              counters=self.counters)
        prefetch = Prefetch(segmenter.frames())
        try:
            self.client.send(start, self._counted(prefetch))
        finally:
            prefetch.stop()
        self.finished = True
        return True

    def _start_offset(self, server: ServerState) -> int:
        """Resume where the server is, if it holds this clone; otherwise start a new one."""
        if server.state == "done":
            raise InvalidSource(f"the target already holds a completed {server.content_type} clone")
        if server.state == "failed" and server.permanent:
            raise CloneRefused(server.message, reason=server.reason, permanent=True)
        same = server.size == self.source.size and server.content_type == self.source.content_type
        if server.state in ("receiving", "paused") and same:
            return server.offset
        self.client.create(self.source.size, self.source.content_type)
        return 0

    def _counted(self, frames: Prefetch) -> Iterator[bytes]:
        for data, position in frames:
            self.counters.wire_bytes += len(data)
            yield data
            self.counters.sent(position)  # the connection took it and came back for more
