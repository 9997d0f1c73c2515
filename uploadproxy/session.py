"""One volume, one upload at a time: the upload server's state machine.

::

    idle --begin--> receiving --body ends--> processing --import ok--> done (409 from now on)
      ^               |   ^                      |
      |          (resumable: the request          +--import failed--> idle (the client may retry)
      |           broke or sent a part)
      |               v   |
      +--expired---- paused  (503 for anyone else until resumed or expired)

Each upload is one :class:`Session`: a :class:`~uploadproxy.channel.ByteChannel` that request
handlers fill, and one run of the importer pipeline (:func:`importer.pipeline.run_import`) on a
worker thread that drains it into the target. Two futures tell the handlers when to answer:
``transferred`` (every byte is in, the checksum matched and the image validated: the async
paths answer here while conversion and resizing go on) and ``finished`` (the import committed:
the sync paths answer here). A failure resolves both with the error; the pipeline has already
removed what it wrote, so nothing that looks complete is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from importer import progress as phases
from importer.checksum import Checksum
from importer.pipeline import ImportOptions, ImportResult, run_import
from importer.metrics import ProgressMetric
from importer.progress import Progress, ProgressEvent
from importer.sources.upload import UploadSource

from .channel import ByteChannel
from .errors import UploadInterrupted, UploadAbandoned, UploadAlreadyDone, UploadBusy
from .settings import ServerSettings

log = logging.getLogger(__name__)

UPLOAD_METRIC = "kubevirt_cdi_upload_progress_total"
_AFTER_TRANSFER = (phases.CONVERT, phases.RESIZE, phases.DONE)
"""Phases the pipeline reaches only after the last byte was read, hashed and validated."""


@dataclass(frozen=True)
class UploadSpec:
    """What one request (or a resumable creation) asks for."""

    length: int | None
    """Bytes the client will send, when it said."""
    archive: bool = False
    checksum: Checksum | None = None
    resumable: bool = False
    asynchronous: bool = False


class Session:
    def __init__(self, spec: UploadSpec, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.id = uuid.uuid4().hex
        self.spec = spec
        self.channel = ByteChannel(loop, limit)
        self.received = 0
        """Bytes accepted into the channel: the offset a resumed upload continues from."""
        self.sending = False
        """A request is feeding the channel right now."""
        self.transferred: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[ImportResult] = loop.create_future()
        self.expires_at: float | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def complete(self) -> bool:
        return self.spec.length is not None and self.received >= self.spec.length

    @property
    def state(self) -> str:
        if self.finished.done():
            return "failed" if self.finished.exception() else "done"
        if self.complete:
            return "processing"
        return "receiving" if self.sending else "paused"

    def pause(self, timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        """Keep the import waiting for the client to resume, for ``timeout`` seconds."""
        self.resume()
        self.expires_at = time.time() + timeout
        self._expiry = loop.call_later(timeout, self._expire, timeout)

    def resume(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.expires_at = None

    def _expire(self, timeout: float) -> None:
        log.warning("resumable upload %s not resumed within %.0fs at byte %d: abandoned",
                    self.id, timeout, self.received)
        self.channel.fail(UploadAbandoned(
            f"the upload was not resumed within {timeout:.0f}s (stopped at byte {self.received})"))


Outcome = Callable[[Session, "ImportResult | BaseException"], None]


class Uploads:
    """The server's one upload slot."""

    def __init__(self, settings: ServerSettings, on_outcome: Outcome | None = None) -> None:
        self.settings = settings
        self.session: Session | None = None
        self.result: ImportResult | None = None
        self.result_id = ""
        self._failures: dict[str, BaseException] = {}
        self._on_outcome = on_outcome
        self.progress = ProgressMetric(settings.owner_uid, UPLOAD_METRIC)
        """The running upload's overall percent (received, converted, resized), for ``/metrics``."""

    @property
    def busy(self) -> bool:
        return self.session is not None

    def begin(self, spec: UploadSpec) -> Session:
        """Claim the volume for a new upload and start the import that will read it."""
        if self.result is not None:
            raise UploadAlreadyDone("the upload already completed; this volume accepts no other")
        if self.session is not None:
            raise UploadBusy(self._busy_message(self.session))
        loop = asyncio.get_running_loop()
        session = Session(spec, loop, self.settings.channel_limit)
        self.session = session
        self.progress = ProgressMetric(self.settings.owner_uid, UPLOAD_METRIC)  # a retry starts from 0
        run = loop.run_in_executor(None, self._import, session, loop)
        run.add_done_callback(lambda done: self._finish(session, done))
        return session

    async def abort(self, why: str, timeout: float = 30.0) -> None:
        """Stop a running or paused upload (the server is shutting down) and wait until its
        import has given up and removed what it wrote: the import thread must not outlive the
        server, waiting for bytes that will never come."""
        session = self.session
        if session is None or session.finished.done():
            return
        session.resume()
        session.channel.fail(UploadInterrupted(why))
        try:
            await asyncio.wait_for(asyncio.shield(session.finished), timeout)
        except Exception as error:  # the upload's own failure, now expected
            log.info("upload %s stopped: %s", session.id, error)

    def find(self, upload_id: str) -> Session | None:
        session = self.session
        return session if session is not None and session.id == upload_id else None

    @property
    def last_failure(self) -> BaseException | None:
        return next(iter(self._failures.values()), None)

    def failure(self, upload_id: str) -> BaseException | None:
        """Why upload ``upload_id`` failed, for a client that asks after losing the answer."""
        return self._failures.get(upload_id)

    def _busy_message(self, session: Session) -> str:
        if session.state == "paused" and session.expires_at is not None:
            wait = max(0, int(session.expires_at - time.time()))
            return (f"a resumable upload is paused at byte {session.received}; it can be resumed "
                    f"for {wait}s more, after which the volume accepts a new upload")
        return "an upload to this volume is already in progress"

    # -- the import, on a worker thread -------------------------------------------------

    def _import(self, session: Session, loop: asyncio.AbstractEventLoop) -> ImportResult:
        def listener(event: ProgressEvent) -> None:
            if event.phase in _AFTER_TRANSFER:
                loop.call_soon_threadsafe(_resolve, session.transferred, None)

        spec = session.spec
        source = UploadSource(session.channel, spec.length, name="upload")
        options = ImportOptions(checksum=spec.checksum, content_type="archive" if spec.archive else "kubevirt",
                                scratch_dir=self.settings.scratch_dir, progress=Progress([listener, self.progress]))
        return run_import(source, self.settings.target(spec.archive), options)

    def _finish(self, session: Session, run: "asyncio.Future[ImportResult]") -> None:
        session.resume()
        error = run.exception()
        answered = session.transferred.done() and session.spec.asynchronous
        if error is None:
            self.result, self.result_id = run.result(), session.id
            log.info("upload complete: %s (%s, %d bytes)", self.result.path, self.result.format,
                     self.result.disk_size)
            _resolve(session.transferred, None)
            session.finished.set_result(self.result)
        else:
            log.error("upload failed: %s", error)
            self._failures = {session.id: error}
            _fail(session.transferred, error)
            session.finished.set_exception(error)
            session.finished.exception()  # retrieved: an unanswered failure is not a bug
        self.session = None
        if self._on_outcome is not None and (error is None or answered):
            self._on_outcome(session, error if error is not None else run.result())


def _resolve(future: "asyncio.Future[None]", value: None) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: "asyncio.Future[None]", error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()
