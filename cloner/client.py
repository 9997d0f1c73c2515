"""Talking to the target's upload server in clone mode: ask, create, send, resume.

One clone, from the cloner's side::

    GET  -> {"state", "offset", "size", "contentType"}    where the server is
    POST (Clone-Size, Clone-Content-Type) -> 201           a new clone; 400 if it cannot fit
    PUT  (Clone-Offset: n, frames from n on) -> 200        done; a cut leaves the server at its
                                                           last verified segment

A connection that breaks, a 5xx, a busy server are temporary: the cloner asks again where the
server is and sends from there, up to ``attempts`` times in a row (the count restarts whenever
the server's offset moved on), then gives up with a temporary error (exit 1: the pod restarts
and resumes the same way). A refusal that sending again cannot change (too small, checksum
mismatch, a client certificate the server does not accept) is permanent.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from importer.clonewire import CONTENT_TYPE_HEADER, OFFSET_HEADER, SIZE_HEADER
from importer.errors import AuthenticationFailed, CdiImportError, PermanentError, SourceUnavailable

log = logging.getLogger(__name__)
ERROR_HEADER = "Upload-Error"


@dataclass
class ServerState:
    state: str
    """``idle``, ``receiving``, ``paused``, ``done`` or ``failed``."""
    offset: int
    size: int
    content_type: str
    message: str = ""
    reason: str = ""
    permanent: bool = False
    """Of a failed clone: whether sending again can help."""


class CloneClient:
    def __init__(self, url: str, context: ssl.SSLContext, timeout: float = 300.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise PermanentError(f"UPLOAD_URL must be an https URL, not {url!r}", reason="InvalidSource")
        self.host, self.port = parts.hostname, parts.port or 443
        self.path = parts.path or "/"
        self.context = context
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout)

    def state(self) -> ServerState:
        status, body, _ = self._request("GET")
        _raise_for(status, body)
        data = json.loads(body or "{}")
        return ServerState(str(data.get("state", "idle")), int(data.get("offset", 0)), int(data.get("size", 0)),
                           str(data.get("contentType", "")), str(data.get("message", "")),
                           str(data.get("reason", "")), bool(data.get("permanent", False)))

    def create(self, size: int, content_type: str) -> None:
        status, body, _ = self._request("POST", headers={SIZE_HEADER: str(size), CONTENT_TYPE_HEADER: content_type})
        _raise_for(status, body)

    def send(self, offset: int, frames: Iterable[bytes]) -> dict[str, Any]:
        """PUT the frames; the server's final answer (it answers once everything is verified)."""
        status, body, _ = self._request("PUT", headers={OFFSET_HEADER: str(offset)}, body=frames)
        _raise_for(status, body)
        return dict(json.loads(body or "{}"))

    def _request(self, method: str, headers: dict[str, str] | None = None,
                 body: Iterable[bytes] | None = None) -> tuple[int, str, dict[str, str]]:
        connection = self._connection()
        try:
            connection.request(method, self.path, body=body, headers=headers or {},
                               encode_chunked=body is not None)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
            return response.status, text, dict(response.headers)
        except ssl.SSLCertVerificationError as error:
            raise AuthenticationFailed(f"the upload server's certificate is not trusted: {error}") from error
        except ssl.SSLError as error:
            if _refused_certificate(error):
                raise AuthenticationFailed(f"the upload server refused the cloner's certificate: {error}") from error
            raise SourceUnavailable(f"TLS with the upload server failed: {error}") from error
        except (OSError, http.client.HTTPException) as error:
            raise SourceUnavailable(f"the connection to the upload server failed: "
                                    f"{error or type(error).__name__}") from error
        finally:
            connection.close()


def _refused_certificate(error: ssl.SSLError) -> bool:
    text = str(error).lower()
    return any(alert in text for alert in ("unknown ca", "bad certificate", "certificate unknown",
                                           "certificate required", "access denied"))


class CloneRefused(CdiImportError):
    """The server answered with an error; ``permanent`` as it said."""

    def __init__(self, message: str, *, reason: str | None = None, permanent: bool = False) -> None:
        super().__init__(message, reason=reason)
        self.permanent = permanent


def _raise_for(status: int, body: str) -> None:
    if status < 300:
        return
    try:
        data = json.loads(body)
    except ValueError:
        data = {"message": body.strip()}
    message = str(data.get("message") or f"the upload server answered {status}")
    if status == 401:
        raise AuthenticationFailed(f"the upload server refused the cloner: {message}")
    if status == 409 and "offset" in data:
        raise OffsetMoved(int(data["offset"]))
    permanent = bool(data.get("permanent")) if "permanent" in data else 400 <= status < 500 and status != 409
    raise CloneRefused(message, reason=str(data.get("reason") or ("Error" if permanent else "TemporaryError")),
                       permanent=permanent)


class OffsetMoved(SourceUnavailable):
    """The server is at another offset than this request assumed: ask again."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"the upload server is at offset {offset}")
        self.offset = offset


@dataclass
class RetryPolicy:
    attempts: int = 8
    """Failed requests in a row before the run gives up (exit 1)."""
    first_delay: float = 1.0
    max_delay: float = 30.0


def with_retries(step: Callable[[], bool], policy: RetryPolicy, progress: Callable[[], int]) -> None:
    """Call ``step`` until it returns True. Temporary errors are retried with backoff; the
    count of failures in a row restarts whenever ``progress()`` moved."""
    failures, delay, last = 0, policy.first_delay, progress()
    while True:
        try:
            if step():
                return
            continue
        except CdiImportError as error:
            if error.permanent:
                raise
            now = progress()
            if now > last:
                failures, delay, last = 0, policy.first_delay, now
            failures += 1
            if failures >= policy.attempts:
                raise SourceUnavailable(f"gave up after {failures} failed attempts in a row: {error}") from error
            log.warning("%s; retrying in %.0fs (attempt %d of %d)", error, delay, failures, policy.attempts)
            time.sleep(delay)
            delay = min(policy.max_delay, delay * 2)
