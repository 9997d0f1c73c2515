"""Guest writes on a worker thread, so the target's pwrite overlaps the next read.

A format reader hands over (disk offset, bytes) as it finds them. Neighbouring small writes
are coalesced into one of up to :data:`GuestWriter.LIMIT` bytes; at most ``DEPTH`` batches
wait in the queue, so memory stays bounded whatever the image. Both the pwrite and the
reader's own I/O release the GIL, so on two cores they run side by side.
"""

from __future__ import annotations

import queue
import threading

from ..target import DiskTarget


class GuestWriter:
    """Writes (and, on devices, zeroes) guest ranges in order on one worker thread."""

    LIMIT = 1024 * 1024
    DEPTH = 4

    def __init__(self, target: DiskTarget) -> None:
        self.target = target
        self.data_bytes = 0
        """Guest bytes handed over (zero blocks among them end up as holes)."""
        self.start = 0
        self.size = 0
        self.parts: list[bytes] = []
        self.queue: queue.Queue[tuple[int, bytes | int] | None] = queue.Queue(maxsize=self.DEPTH)
        self.worker: threading.Thread | None = None
        self.error: BaseException | None = None
        self.stopping = False

    def write(self, offset: int, data: bytes) -> None:
        if self.parts and offset == self.start + self.size and \
                self.size + len(data) <= self.LIMIT:
            self.parts.append(data)
            self.size += len(data)
            return
        self.flush()
        if len(data) >= self.LIMIT:
            self._submit(offset, data)
            return
        self.start, self.size, self.parts = offset, len(data), [data]

    def zero(self, offset: int, length: int) -> None:
        """Make a guest range read as zeros (a device keeps old data where nothing is
        written; a new file needs nothing, so callers skip this for files)."""
        if length > 0:
            self.flush()
            self._submit(offset, length)

    def flush(self) -> None:
        if self.parts:
            data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
            self.parts = []
            self._submit(self.start, data)

    def close(self) -> None:
        """Flush, wait for every queued write and re-raise the first write error."""
        self.flush()
        self._stop()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop the worker without writing what is still queued (the import failed)."""
        self.stopping = True
        self.parts = []
        self._stop()

    def _submit(self, offset: int, item: bytes | int) -> None:
        if self.error is not None:
            raise self.error
        if self.worker is None:
            self.worker = threading.Thread(target=self._run, name="guest-writer", daemon=True)
            self.worker.start()
        self.queue.put((offset, item))
        if isinstance(item, bytes):
            self.data_bytes += len(item)

    def _run(self) -> None:
        while True:
            entry = self.queue.get()
            if entry is None:
                return
            if self.error is not None or self.stopping:
                continue  # keep draining so the producer never blocks
            offset, item = entry
            try:
                if isinstance(item, bytes):
                    self.target.write_at(offset, item)
                else:
                    self.target.zero_range(offset, item)
            except BaseException as error:  # handed to the producer at its next write
                self.error = error

    def _stop(self) -> None:
        if self.worker is not None:
            self.queue.put(None)
            self.worker.join()
            self.worker = None
