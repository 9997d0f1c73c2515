"""CDI's one-shot upload paths at the upload server (sync, async, form, archive).

A ``POST`` claims the volume (503 if another upload holds it, 409 once one finished), streams
the body into the import as it arrives and answers when the import says so: the async paths
once every byte is in and validated, the sync paths when the image is committed. A body that
breaks fails the import (which removes what it wrote) and frees the volume for a retry.
``HEAD`` on an async path answers 200 (clients probe it to choose async); other methods get
404, as in CDI.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Mapping

from aiohttp import web

from importer.checksum import Checksum
from importer.errors import InvalidSource

from .body import BodyError, form_file, pump, raw_body
from .channel import ConsumerGone
from .errors import BadUploadRequest, UploadInterrupted, error_headers, http_message, http_status
from .paths import CHECKSUM_HEADER, ROUTES
from .session import Session, UploadSpec, Uploads


def parse_checksum(request: web.Request) -> Checksum | None:
    value = request.headers.get(CHECKSUM_HEADER)
    if not value:
        return None
    try:
        return Checksum.parse(value)
    except InvalidSource as error:
        raise BadUploadRequest(str(error)) from error


def error_response(error: BaseException, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=http_status(error), text=http_message(error),
                        headers={**error_headers(error), **(headers or {})})


async def wait_outcome(session: Session, headers: Mapping[str, str] | None = None) -> web.Response:
    """Answer when the session says: transferred (async) or finished (sync)."""
    waiting = session.transferred if session.spec.asynchronous else session.finished
    await asyncio.wait([waiting])
    error = waiting.exception()
    if error is not None:
        return error_response(error, headers)
    return web.Response(status=200, headers=headers)


class OneShot:
    """The handler of every CDI upload path."""

    def __init__(self, uploads: Uploads) -> None:
        self.uploads = uploads

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = ROUTES[request.path]
        if request.method == "HEAD" and route.asynchronous:
            return web.Response(status=200)
        if request.method != "POST":
            return web.Response(status=404)
        try:
            spec = UploadSpec(length=None if route.form else request.content_length, archive=route.archive,
                              checksum=parse_checksum(request), asynchronous=route.asynchronous)
            session = self.uploads.begin(spec)
        except Exception as error:
            return error_response(error)
        body = form_file(request) if route.form else raw_body(request)
        refused = await self._receive(body, session)
        outcome = await wait_outcome(session)
        return error_response(refused) if refused is not None and outcome.status == 400 else outcome

    async def _receive(self, body: AsyncIterator[bytes], session: Session) -> BadUploadRequest | None:
        """Pump the body; a broken or malformed body fails the import. Returns the reason
        when the request itself was malformed (answered instead of the import's error)."""
        session.sending = True
        try:
            await pump(body, session)
            session.channel.end()
        except BodyError as error:
            session.channel.fail(UploadInterrupted(str(error)))
        except BadUploadRequest as error:
            session.channel.fail(UploadInterrupted(str(error)))
            return error
        except ConsumerGone:
            pass  # the import stopped first; its error is the answer
        finally:
            session.sending = False
        return None
