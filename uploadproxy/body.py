"""Reading an upload body into a session's channel.

:func:`raw_body` yields the request body as it arrives; :func:`form_file` yields the part named
``file`` of a ``multipart/form-data`` body (CDI ignores the other parts) and only ends after the
closing boundary, so a form cut short is an error and not a shorter file. :func:`pump` moves the
bytes into the channel in pieces of about :data:`PIECE` bytes: fewer, larger hand-offs to the
pipeline thread, no copy of the image beyond one piece.
"""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import BodyPartReader, web

from .channel import ConsumerGone
from .errors import BadUploadRequest
from .session import Session

PIECE = 1 << 20


async def raw_body(request: web.Request) -> AsyncIterator[bytes]:
    async for data in request.content.iter_any():
        yield data


async def form_file(request: web.Request) -> AsyncIterator[bytes]:
    reader = await request.multipart()
    found = False
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue  # a nested multipart: never the file
        if part.name != "file" or found:
            await part.release()
            continue
        found = True
        while data := await part.read_chunk(PIECE):
            yield data
    if not found:
        raise BadUploadRequest("the form has no part named 'file'")


class BodyError(Exception):
    """Reading the request body failed (the client went away, the body was cut short)."""


async def pump(body: AsyncIterator[bytes], session: Session, limit: int | None = None) -> int:
    """Feed ``body`` into the session; returns the bytes moved. Raises BodyError when the body
    breaks, BadUploadRequest when it is malformed or longer than ``limit``, and the channel's
    ConsumerGone when the import stopped reading."""
    pending: list[bytes] = []
    size = moved = 0
    try:
        async for data in body:
            if limit is not None and moved + size + len(data) > limit:
                raise BadUploadRequest(f"the body is longer than the {limit} bytes announced")
            pending.append(data)
            size += len(data)
            if size >= PIECE:
                moved += await _flush(pending, size, session)
                pending, size = [], 0
    except (BadUploadRequest, BodyError, ConsumerGone):
        raise
    except Exception as error:  # aiohttp's payload and connection errors have no common base
        if size:
            moved += await _flush(pending, size, session)
        raise BodyError(f"the upload body broke after {session.received} bytes: {error or type(error).__name__}") from error
    if size:
        moved += await _flush(pending, size, session)
    return moved


async def _flush(pending: list[bytes], size: int, session: Session) -> int:
    piece = pending[0] if len(pending) == 1 else b"".join(pending)
    await session.channel.put(piece)
    session.received += size
    return size
