"""HTTP(S) source: one GET, resumed with Range requests when the connection breaks.

Transitions: ``open`` (GET from byte 0; the response is kept and becomes the first stream)
-> ``chunks`` (that body; after a temporary fault, ``Range: bytes=N-`` with ``If-Range`` on
the ETag or Last-Modified, so a changed file is never spliced onto an old one)
-> ``read_at`` (ranged GETs, used for qcow2 metadata and by qemu-img through the NBD server
when the server advertises ``Accept-Ranges: bytes``). With working ranges and a known size,
``chunks`` may go on with several connections reading ranges in parallel, delivered in order,
where that measured faster than the one stream (:mod:`.ranged`).

What it copes with, because real servers do it: no HEAD support (never sends HEAD), no
``Accept-Ranges`` (a resume then skips the bytes it already has), a wrong ``Content-Type``
(ignored: the bytes decide the format), intermittent 503/429 (retried, honouring
``Retry-After``), resets and stalls mid-body (resumed). Credentials: basic auth from
``accessKeyId``/``secretKey``, extra headers and secret headers; ``Authorization`` and
secret headers are sent to the original scheme, host and port only, never across a redirect
to another host, another port, or from https to http.
Proxies come from the environment (``http_proxy``, ``https_proxy``, ``no_proxy``).

What it does not believe (:mod:`.guards`): a 206 whose ``Content-Range`` is not the range
asked for (error) or whose total is not the known size (the import starts over); a server
that advertises ranges but answers a ranged read with 200 makes the import start over
without random access (:class:`~importer.errors.RangesIgnored`). It asks for
``Accept-Encoding: identity``; gzip or deflate applied anyway are undone
(:mod:`.encoding`), a resume of an encoded body re-reads it from the start. Redirects to
other schemes (``file:``, ``ftp:``) and header values with control characters are permanent
errors at once. Each body is held to the speed floor of the retry policy.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Iterator, Mapping
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ..errors import (AuthenticationFailed, InvalidSource, PermanentError, RangesIgnored, SourceChanged,
                      SourceNotFound, SourceUnavailable)
from ..stream import CHUNK
from . import SourceOptions
from .base import Source, SourceInfo, redact, resuming_chunks, retry_after_seconds, retrying
from .encoding import ContentDecoder, content_encoding
from .guards import SpeedFloor, check_content_range, same_origin
from .ranged import adaptive_chunks
from .tls import verify_setting

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
USER_AGENT = "cdi-py-importer"
_CONNECT_PREFIX = "Unable to connect to http data source"
PART = 2 * 1024 * 1024
"""Bytes per ranged GET when reading with several connections (four at once: 8 MiB in flight
at most)."""


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def parse_headers(lines: list[str], secret: bool = False) -> dict[str, str]:
    """``Name: value`` lines as a dict. A name that is not an HTTP token, or a value with a
    control character (CR/LF would smuggle headers) or outside Latin-1, is a permanent error;
    a secret header's value is never repeated in the message."""
    headers: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        shown = f"secret header {number}" if secret else f"header {name[:40]!r}"
        if not sep or not _TOKEN.fullmatch(name):
            raise InvalidSource(f"invalid {shown}: expected 'Name: value' with a plain name")
        if _BAD_VALUE.search(value) or not _latin1(value):
            raise InvalidSource(f"invalid {shown}: its value holds control characters (CR/LF) "
                                "or characters HTTP cannot carry")
        headers[name] = value
    return headers


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True



class HttpSource(Source):
    kind = "http"

    def __init__(self, url: str, options: SourceOptions) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidSource(f"invalid http source URL {redact(url)!r}")
        self.url = url
        self.name = redact(url)
        self.options = options
        self._auth = self._credentials(parts)
        self._headers = {"User-Agent": USER_AGENT, **parse_headers(options.extra_headers),
                         "Accept-Encoding": "identity"}
        self._secret_headers = parse_headers(options.secret_headers, secret=True)
        self._verify = verify_setting(options)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        """Every thread's session (the range readers have their own), closed with the source."""
        self._sessions_lock = threading.Lock()
        self._first: requests.Response | None = None
        self.final_url = url
        self.size: int | None = None
        self.validator: str | None = None
        self.accepts_ranges = False
        self.encoding: str | None = None
        """gzip/deflate the server applied although asked not to (undone as we read)."""
        self._ranges_ignored = False
        """Once a ranged read got 200, random access is off for the rest of the import."""

    def _credentials(self, parts: object) -> tuple[str, str] | None:
        if self.options.access_key_id is not None:
            return (self.options.access_key_id, self.options.secret_key or "")
        username, password = getattr(parts, "username"), getattr(parts, "password")
        if username is not None:
            return (username, password or "")
        return None

    # -- requests ------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=8, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _get(self, extra: Mapping[str, str] | None = None) -> requests.Response:
        """GET following redirects by hand, so credentials stay with their origin."""
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            response = self._request(url, extra, same_origin(url, self.url))
            if response.is_redirect and "location" in response.headers:
                url = self._redirect_target(url, response)
                continue
            self.final_url = url
            return response
        raise PermanentError(f"{_CONNECT_PREFIX}: more than {MAX_REDIRECTS} redirects from {self.name}")

    def _redirect_target(self, url: str, response: requests.Response) -> str:
        """Where a redirect points; another scheme than http(s) is a permanent error."""
        target = urljoin(url, response.headers["location"])
        response.close()
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidSource(f"{_CONNECT_PREFIX}: {self.name} redirects to a {scheme or 'relative'}: "
                                "URL; only http and https redirects are followed")
        return target

    def _request(self, url: str, extra: Mapping[str, str] | None, trusted: bool) -> requests.Response:
        """One GET; credentials only when ``trusted`` (the URL's own scheme, host and port)."""
        headers = dict(self._headers, **(extra or {}))
        if trusted:
            headers.update(self._secret_headers)
        try:
            # verify= per request: a session's verify loses to REQUESTS_CA_BUNDLE
            return self._session().get(
                redact(url), headers=headers, stream=True, allow_redirects=False,
                verify=self._verify, auth=self._auth if trusted else None,
                timeout=(self.options.retry.connect_timeout, self.options.retry.stall_timeout))
        except requests.exceptions.SSLError as error:
            raise PermanentError(
                f"{_CONNECT_PREFIX}: TLS verification of {self.name} failed: {error}. "
                "Provide the server's CA (certConfigMap / --cert-dir) or set insecureSkipVerify",
                reason="TLSError") from error
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader,
                UnicodeError) as error:
            raise InvalidSource(f"invalid http request to {redact(url)!r}: {_describe(error)}") from error
        except requests.exceptions.RequestException as error:
            raise SourceUnavailable(f"{_CONNECT_PREFIX}: {_describe(error)}") from error

    def _check_status(self, response: requests.Response, allowed: tuple[int, ...] = (200,),
                      existed: bool = False) -> None:
        """Raise the error a status code means. ``existed``: the object was there a moment
        ago (resume, ranged read), so a 404 is a file being replaced or a server restarting,
        and is retried like a 503 instead of failing the import."""
        code = response.status_code
        if code in allowed:
            return
        detail = (f"{_CONNECT_PREFIX}: expected status code {allowed[0]}, got {code}. "
                  f"Status: {code} {response.reason}")
        response.close()
        if code in (404, 410):
            if existed:
                raise SourceUnavailable(detail + " (it existed when the import started)")
            raise SourceNotFound(detail)
        if code in (401, 403, 407):
            raise AuthenticationFailed(detail + ": check the credentials (accessKeyId/secretKey)")
        if code in (408, 425, 429) or code >= 500:
            raise SourceUnavailable(detail, retry_after=retry_after_seconds(response.headers.get("retry-after")))
        raise PermanentError(detail)

    # -- Source ---------------------------------------------------------------------------

    def open(self) -> SourceInfo:
        def first_response() -> requests.Response:
            response = self._get()
            self._check_status(response)
            return response

        response = self._first = retrying(self.options.retry, self.name, first_response)
        length = response.headers.get("content-length")
        self.encoding = content_encoding(response.headers.get("content-encoding"), self.name)
        # an encoded body's length is not the file's: the size is learned by reading it
        self.size = int(length) if length and length.isdigit() and not self.encoding else None
        self.validator = _validator(response)
        self.accepts_ranges = response.headers.get("accept-ranges", "").lower() == "bytes"
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("text/"):
            log.warning("%s is served as %s; importing it anyway (the bytes decide the format)",
                        self.name, content_type)
        random_access = (self.accepts_ranges and self.size is not None and not self.encoding
                         and not self._ranges_ignored)
        return SourceInfo(size=self.size, random_access=random_access, name=self.name)

    def chunks(self, start: int = 0) -> Iterator[bytes]:
        if self._parallel_allowed():
            assert self.size is not None
            return adaptive_chunks(self._stream, self._range_pieces, start, self.size, PART,
                                   self.options.connections)
        return self._stream(start)

    def _stream(self, start: int) -> Iterator[bytes]:
        """One GET from ``start`` (the first response when at 0), resumed after faults."""
        return resuming_chunks(self._open_at, start, self.options.retry, self.name)

    def _parallel_allowed(self) -> bool:
        """Ranges that work and a known size: parallel ranges may be tried."""
        return (self.options.connections > 1 and self.accepts_ranges and not self.encoding
                and not self._ranges_ignored and self.size is not None)

    def _open_at(self, offset: int) -> Iterator[bytes]:
        if offset == 0 and self._first is not None:
            response, self._first = self._first, None
        else:
            response = self._resume(offset)
        return self._body(response, skip=self._skip_for(response, offset))

    def _resume(self, offset: int) -> requests.Response:
        """The body from ``offset``: a checked 206, or a 200 of the same object (skipped
        ahead by the caller). An encoded body cannot be resumed by range: it is re-read."""
        headers = {} if self.encoding else {"Range": f"bytes={offset}-"}
        if self.validator and not self.encoding:
            headers["If-Range"] = self.validator
        response = self._get(headers)
        self._check_status(response, (206, 200), existed=True)
        if response.status_code == 206:
            self._check_range(response, offset, None)
        elif offset:
            now = _validator(response)
            if self.validator and now != self.validator:
                response.close()
                raise SourceChanged(f"{self.name} changed while it was being imported "
                                    f"(validator {self.validator} -> {now}); starting over")
        if content_encoding(response.headers.get("content-encoding"), self.name) != self.encoding:
            response.close()
            raise SourceChanged(f"{self.name} changed its Content-Encoding while it was being imported")
        return response

    def _check_range(self, response: requests.Response, start: int, end: int | None) -> None:
        try:
            total = check_content_range(response.headers.get("content-range"), start, end,
                                        self.size, self.name)
        except BaseException:
            response.close()
            raise
        if self.size is None:
            self.size = total

    @staticmethod
    def _skip_for(response: requests.Response, offset: int) -> int:
        """Bytes to drop from a 200 answer to a Range request (a server without ranges)."""
        return offset if response.status_code == 200 else 0

    def _body(self, response: requests.Response, skip: int) -> Iterator[bytes]:
        try:
            pieces: Iterator[bytes] = _coalesced(response.raw)
            encoding = content_encoding(response.headers.get("content-encoding"), self.name)
            if encoding:
                pieces = ContentDecoder(encoding, self.name).decode(pieces)
            for chunk in pieces:
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                yield chunk
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as error:
            raise SourceUnavailable(f"transfer from {self.name} broke: {_describe(error)}") from error
        finally:
            response.close()

    def read_at(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        end = offset + length - 1
        if self.size is not None:
            end = min(end, self.size - 1)
            if offset > end:
                return b""
        return retrying(self.options.retry, self.name, lambda: self._fetch_range(offset, end))

    def _fetch_range(self, offset: int, end: int) -> bytes:
        response = self._ranged_response(offset, end)
        try:
            return self._read_exactly(response, end - offset + 1)
        finally:
            response.close()

    def _ranged_response(self, offset: int, end: int) -> requests.Response:
        """A checked 206 for ``bytes=offset-end`` of the object first seen."""
        headers = {"Range": f"bytes={offset}-{end}"}
        if self.validator:  # an ETag is matched; a Last-Modified date must not have moved
            headers["If-Match" if self.validator.startswith('"') else "If-Unmodified-Since"] = self.validator
        response = self._get(headers)
        if response.status_code == 412:
            response.close()
            raise SourceChanged(f"{self.name} changed while it was being imported")
        if response.status_code == 200:
            response.close()
            self._ranges_ignored = True
            raise RangesIgnored(f"{self.name}: the server advertises ranges but answered a ranged "
                                "read with the whole file; starting over, reading it in order")
        self._check_status(response, (206,), existed=True)
        self._check_range(response, offset, end)
        return response

    def _range_pieces(self, offset: int, length: int) -> Iterator[bytes]:
        """One range of a parallel read, as it arrives; a fault resumes at the next byte."""
        end = offset + length - 1
        return resuming_chunks(lambda at: self._range_body(self._ranged_response(at, end), end - at + 1),
                               offset, self.options.retry, self.name)

    def _range_body(self, response: requests.Response, count: int) -> Iterator[bytes]:
        """``count`` body bytes (never more) in the pieces they arrive in (joined later, by
        the consumer); ending short is a temporary fault."""
        got = 0
        try:
            while got < count:
                piece = response.raw.read1(min(CHUNK, count - got), decode_content=False)
                if not piece:
                    break
                got += len(piece)
                yield piece
            if got == count:
                return
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as error:
            raise SourceUnavailable(f"ranged read from {self.name} broke: {_describe(error)}") from error
        finally:
            response.close()
        raise SourceUnavailable(f"short ranged read from {self.name}: {got} of {count} bytes")

    def _read_exactly(self, response: requests.Response, count: int) -> bytes:
        """``count`` body bytes (never more, even from a server that sends past the range
        end), held to the speed floor; short is a temporary failure."""
        policy = self.options.retry
        floor = SpeedFloor(policy.speed_limit, policy.speed_time, self.name)
        parts: list[bytes] = []
        got = 0
        try:
            while got < count:
                began = time.monotonic()
                data = response.raw.read1(min(CHUNK, count - got), decode_content=False)
                if not data:
                    break
                floor.tick(len(data), time.monotonic() - began)
                parts.append(data)
                got += len(data)
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as error:
            raise SourceUnavailable(f"ranged read from {self.name} broke: {_describe(error)}") from error
        if got != count:
            raise SourceUnavailable(f"short ranged read from {self.name}")
        return b"".join(parts)

    def close(self) -> None:
        if self._first is not None:
            self._first.close()
            self._first = None
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()


def _coalesced(raw: urllib3.response.BaseHTTPResponse, linger: float = 0.25) -> Iterator[bytes]:
    """The body in chunks of up to CHUNK bytes, handed on early when the link is slow.

    ``read(CHUNK)`` would wait for a full 4 MiB, so on a slow link progress (and the
    decompressor) would move in 4 MiB jumps; ``read1`` returns what has arrived, and small
    reads are joined until a chunk is full or ``linger`` seconds have passed.
    """
    parts: list[bytes] = []
    size = 0
    since = time.monotonic()
    while True:
        try:
            data = raw.read1(CHUNK - size, decode_content=False)
        except Exception:
            if parts:  # what arrived before the fault counts: the resume starts after it
                yield b"".join(parts)
            raise
        if not data:
            break
        parts.append(data)
        size += len(data)
        if size >= CHUNK or time.monotonic() - since >= linger:
            yield parts[0] if len(parts) == 1 else b"".join(parts)
            parts, size, since = [], 0, time.monotonic()
    if parts:
        yield b"".join(parts)


def _validator(response: requests.Response) -> str | None:
    etag = response.headers.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("last-modified")



def _describe(error: BaseException) -> str:
    """A one-line cause, without urllib3's nested repr noise."""
    text = str(error)
    for marker in ("Failed to resolve", "Name or service not known", "Connection refused",
                   "Connection reset", "timed out", "Read timed out", "IncompleteRead"):
        if marker in text:
            return f"{marker.lower()} ({text[:200]})"
    return text[:300] or type(error).__name__


__all__ = ["HttpSource", "parse_headers"]
