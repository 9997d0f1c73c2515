"""Resumable uploads: an offset protocol beside CDI's one-shot paths (all on
``/v1beta1/upload-resumable``; the proxy passes it through like the others).

1. ``POST`` with ``Upload-Length: <bytes>`` (required), optionally ``Upload-Checksum:
   sha256:<hex>``, ``Upload-Mode: sync|async`` (default ``async``) -> ``201`` with
   ``Upload-Id`` and ``Upload-Offset: 0``. The import starts and waits for bytes.
2. ``PATCH`` with ``Upload-Id``, ``Upload-Offset: <n>`` and the bytes from ``n`` on (all of the
   rest or a part). The offset must be the server's (else ``409`` with the server's
   ``Upload-Offset``). A part that ends cleanly -> ``204`` with the new ``Upload-Offset``; the
   request that brings the last byte is answered like CDI's paths: ``200`` when the bytes are
   validated (async) or the import finished (sync), or the CDI error status.
3. ``HEAD`` with ``Upload-Id`` -> ``200`` with ``Upload-Offset``, ``Upload-Length`` and
   ``Upload-State`` (receiving, paused, processing, done); ``404`` when the server does not
   know the upload (it restarted: start over); a failed upload answers its error status.
   ``HEAD`` without ``Upload-Id`` -> ``200``: the capability probe.
4. ``DELETE`` with ``Upload-Id`` abandons the upload; nothing is left on the volume.

Bytes are never buffered on disk to make this possible: the import keeps running, blocked on
its input, while the upload is paused; a connection that breaks leaves the offset at the last
byte the import accepted. A paused upload that is not resumed within ``resume_timeout`` is
abandoned (its partial target removed) and the volume accepts a new upload.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .body import BodyError, pump, raw_body
from .channel import ConsumerGone
from .errors import BadUploadRequest, UploadAbandoned, error_headers, http_message, http_status
from .paths import ID_HEADER, LENGTH_HEADER, MODE_HEADER, OFFSET_HEADER, STATE_HEADER, CONTENT_TYPE_HEADER
from .session import Session, UploadSpec, Uploads
from .upload import error_response, parse_checksum, wait_outcome


class Resumable:
    def __init__(self, uploads: Uploads, resume_timeout: float) -> None:
        self.uploads = uploads
        self.resume_timeout = resume_timeout

    async def handle(self, request: web.Request) -> web.StreamResponse:
        handlers = {"POST": self.create, "PATCH": self.patch, "HEAD": self.head, "DELETE": self.delete}
        handler = handlers.get(request.method)
        if handler is None:
            return web.Response(status=405, text=f"{request.method} is not allowed here")
        try:
            return await handler(request)
        except BadUploadRequest as error:
            return error_response(error)

    async def create(self, request: web.Request) -> web.StreamResponse:
        length = _int_header(request, LENGTH_HEADER)
        if length <= 0:
            raise BadUploadRequest(f"{LENGTH_HEADER} must be a positive number of bytes")
        mode = request.headers.get(MODE_HEADER, "async").lower()
        if mode not in ("sync", "async"):
            raise BadUploadRequest(f"{MODE_HEADER} must be sync or async, not {mode!r}")
        spec = UploadSpec(length=length, checksum=parse_checksum(request),
                          archive=request.headers.get(CONTENT_TYPE_HEADER, "kubevirt") == "archive",
                          resumable=True, asynchronous=mode == "async")
        try:
            session = self.uploads.begin(spec)
        except Exception as error:
            return error_response(error)
        session.pause(self.resume_timeout, asyncio.get_running_loop())
        return web.Response(status=201, headers=_headers(session))

    async def patch(self, request: web.Request) -> web.StreamResponse:
        found = self._session(request)
        if not isinstance(found, Session):
            return found
        session = found
        offset = _int_header(request, OFFSET_HEADER)
        if session.sending or offset != session.received or session.complete:
            why = "another request is sending to this upload" if session.sending else \
                f"the upload is at byte {session.received}, not {offset}"
            return web.Response(status=409, text=why, headers=_headers(session))
        assert session.spec.length is not None
        remaining = session.spec.length - session.received
        if request.content_length is not None and request.content_length > remaining:
            raise BadUploadRequest(f"the body has {request.content_length} bytes; only {remaining} remain")
        return await self._receive(request, session, remaining)

    async def _receive(self, request: web.Request, session: Session, remaining: int) -> web.StreamResponse:
        session.resume()
        session.sending = True
        try:
            await pump(raw_body(request), session, limit=remaining)
        except (BodyError, BadUploadRequest) as error:
            session.sending = False
            session.pause(self.resume_timeout, asyncio.get_running_loop())
            return web.Response(status=400, text=f"{error}; resume at byte {session.received}",
                                headers=_headers(session))
        except ConsumerGone:
            pass
        finally:
            session.sending = False
        if session.complete:
            session.channel.end()
        elif not session.channel.closed:
            session.pause(self.resume_timeout, asyncio.get_running_loop())
            return web.Response(status=204, headers=_headers(session))
        return await wait_outcome(session, headers=_headers(session))

    async def head(self, request: web.Request) -> web.StreamResponse:
        if ID_HEADER not in request.headers:
            return web.Response(status=200)
        found = self._session(request)
        if not isinstance(found, Session):
            return found
        return web.Response(status=200, headers=_headers(found))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        found = self._session(request)
        if not isinstance(found, Session):
            return found
        found.channel.fail(UploadAbandoned("the client cancelled the upload"))
        await asyncio.wait([found.finished])
        return web.Response(status=204)

    def _session(self, request: web.Request) -> Session | web.Response:
        upload_id = request.headers.get(ID_HEADER, "")
        session = self.uploads.find(upload_id)
        if session is not None:
            return session
        failure = self.uploads.failure(upload_id)
        if failure is not None:
            return web.Response(status=http_status(failure), text=http_message(failure),
                                headers=error_headers(failure))
        if self.uploads.result is not None and upload_id == self.uploads.result_id:
            return web.Response(status=200, headers={STATE_HEADER: "done", ID_HEADER: upload_id})
        return web.Response(status=404, text=f"no upload {upload_id!r} here: start a new one")


def _headers(session: Session) -> dict[str, str]:
    headers = {ID_HEADER: session.id, OFFSET_HEADER: str(session.received), STATE_HEADER: session.state,
               "Cache-Control": "no-store"}
    if session.spec.length is not None:
        headers[LENGTH_HEADER] = str(session.spec.length)
    return headers


def _int_header(request: web.Request, name: str) -> int:
    value = request.headers.get(name, "").strip()
    if not value.isdigit():
        raise BadUploadRequest(f"header {name} must be a number of bytes, got {value!r}")
    return int(value)
