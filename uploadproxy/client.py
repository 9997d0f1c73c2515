"""Uploading a file through the upload proxy: what ``virtctl image-upload`` does once the
volume is ready and a token is in hand, plus resume and a checksum.

:func:`upload` probes the proxy first: ``HEAD /v1beta1/upload-resumable`` answering 200 means
the resumable protocol (:mod:`uploadproxy.resumable`), where a broken connection costs only
the bytes in flight; otherwise ``HEAD /v1beta1/upload-async`` chooses CDI's async or sync path
(as virtctl does), where a retry starts again from byte 0. Retries back off exponentially; the
budget refills whenever bytes get through. A 401 fails at once unless ``token`` is a callable,
which is then asked for a fresh token (CDI's tokens live 5 minutes). Other 4xx answers are
final (the image is too large, the checksum did not match, ...), and so is any failure our
server marks ``Upload-Error: permanent`` (an invalid image); other 5xx and 503 are retried.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import requests
from requests.adapters import HTTPAdapter

from . import paths

log = logging.getLogger(__name__)

Token = str | Callable[[], str]
ProgressCallback = Callable[[int, int], None]
"""``(bytes acknowledged or sent so far, total bytes)``."""
BLOCK = 1 << 20
RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class UploadFailed(Exception):
    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class AuthenticationFailed(UploadFailed):
    pass


@dataclass
class UploadResult:
    status: int
    mode: str
    """``resumable``, ``async`` or ``sync``."""
    size: int
    bytes_sent: int
    """Bytes put on the wire, retries included."""
    attempts: int
    resumes: int
    text: str = ""


class _BigBlockAdapter(HTTPAdapter):
    """http.client sends a file body in 8-16 KiB reads by default; 1 MiB costs far less CPU."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = BLOCK
        super().init_poolmanager(*args, **kwargs)


class FileBody:
    """Bytes ``[start, end)`` of a file as a request body with a known length."""

    def __init__(self, path: Path, start: int, end: int, on_bytes: Callable[[int], None]) -> None:
        self._file = open(path, "rb")
        self._file.seek(start)
        self._left = end - start
        self._length = end - start
        self._on_bytes = on_bytes

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = BLOCK) -> bytes:
        data = self._file.read(min(max(size, BLOCK), self._left))
        self._left -= len(data)
        if data:
            self._on_bytes(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while data := self.read():
            yield data

    def close(self) -> None:
        self._file.close()


class _Progress:
    def __init__(self, progress: ProgressCallback | bool | None, total: int) -> None:
        self.total = total
        self.sent = 0
        self.position = 0
        self._callback: ProgressCallback | None = None
        self._bar: Any = None
        if progress is True:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024)
        elif callable(progress):
            self._callback = progress

    def advance(self, nbytes: int) -> None:
        self.sent += nbytes
        self.move_to(self.position + nbytes)

    def move_to(self, position: int) -> None:
        if self._bar is not None:
            self._bar.update(position - self.position)
        self.position = position
        if self._callback is not None:
            self._callback(position, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(4 * BLOCK):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


class Uploader:
    """One upload: the HTTP session, token, retries and progress."""

    def __init__(self, proxy_url: str, token: Token, path: Path, *, ca: Path | None, insecure: bool,
                 progress: ProgressCallback | bool | None, retries: int, checksum: str | None) -> None:
        self.base = (proxy_url if "://" in proxy_url else f"https://{proxy_url}").rstrip("/")
        self.token = token
        self.path = path
        self.size = path.stat().st_size
        self.retries = retries
        self.checksum = checksum
        self.http = requests.Session()
        self.http.mount("https://", _BigBlockAdapter())
        self.http.mount("http://", _BigBlockAdapter())
        self.verify: str | bool = str(ca) if ca else not insecure
        """Passed with every request: requests lets REQUESTS_CA_BUNDLE override a session's."""
        self.progress = _Progress(progress, self.size)
        self.attempts = 0
        self.resumes = 0
        self._failures = 0
        self._refreshed = 0
        self._bearer = token() if callable(token) else token

    # -- plumbing -------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._bearer}", **kwargs.pop("headers", {})}
        return self.http.request(method, self.base + path, headers=headers, timeout=(30, None),
                                 verify=self.verify, **kwargs)

    def body(self, start: int) -> FileBody:
        self.progress.move_to(start)
        return FileBody(self.path, start, self.size, self.progress.advance)

    def setback(self, why: str) -> None:
        """Count a failed attempt; wait before the next one, or give up."""
        self._failures += 1
        if self._failures > self.retries:
            raise UploadFailed(f"upload failed after {self.retries} retries: {why}")
        delay = min(30.0, 0.5 * 2 ** (self._failures - 1))
        log.warning("%s; retrying in %.1fs", why, delay)
        time.sleep(delay)

    def progressed(self) -> None:
        self._failures = 0

    def check_auth(self, response: requests.Response) -> None:
        """401: refresh the token when we can (not on the very first try, as virtctl)."""
        if response.status_code != 401:
            return
        if not callable(self.token) or self.attempts <= 1 or self._refreshed >= 3:
            raise AuthenticationFailed("authentication failed: the upload token was refused",
                                       401, response.text)
        self._refreshed += 1
        self._bearer = self.token()

    def checksum_headers(self) -> dict[str, str]:
        return {paths.CHECKSUM_HEADER: self.checksum} if self.checksum else {}

    def result(self, response: requests.Response, mode: str) -> UploadResult:
        self.progress.move_to(self.size)
        return UploadResult(response.status_code, mode, self.size, self.progress.sent, self.attempts,
                            self.resumes, response.text)

    @staticmethod
    def final(response: requests.Response) -> None:
        """Answers no retry can change: most 4xx, and any failure the server calls permanent."""
        permanent = response.headers.get(paths.ERROR_HEADER) == "permanent"
        if permanent or 400 <= response.status_code < 500 and response.status_code not in (401, 404, 409):
            raise UploadFailed(f"unexpected return value {response.status_code}, {response.text}",
                               response.status_code, response.text)

    # -- discovery ------------------------------------------------------------------------

    def probe(self, path: str) -> bool:
        try:
            return self.request("HEAD", path).status_code == 200
        except RETRYABLE:
            return False

    # -- CDI's one-shot paths -------------------------------------------------------------

    def one_shot(self, asynchronous: bool) -> UploadResult:
        path = paths.ASYNC if asynchronous else paths.SYNC
        mode = "async" if asynchronous else "sync"
        while True:
            self.attempts += 1
            body = self.body(0)
            try:
                response = self.request("POST", path, data=body, headers={
                    "Content-Type": "application/octet-stream", **self.checksum_headers()})
            except RETRYABLE as error:
                self.setback(f"the upload broke: {error}")
                continue
            finally:
                body.close()
            if response.status_code == 200:
                return self.result(response, mode)
            self.check_auth(response)
            self.final(response)
            self.setback(f"unexpected return value {response.status_code}, {response.text.strip()}")

    # -- resumable ------------------------------------------------------------------------

    def resumable(self, asynchronous: bool) -> UploadResult:
        upload_id: str | None = None
        offset = 0
        while True:
            self.attempts += 1
            try:
                if upload_id is None:
                    upload_id, offset = self.create(asynchronous)
                    if upload_id is None:
                        continue
                response = self.send_from(upload_id, offset)
            except RETRYABLE as error:
                self.setback(f"the upload broke at byte {offset}: {error}")
                if upload_id is not None:
                    upload_id, offset = self.where(upload_id, offset)
                continue
            if response.status_code == 200:
                return self.result(response, "resumable")
            upload_id, offset = self.after(response, upload_id, offset)

    def create(self, asynchronous: bool) -> tuple[str | None, int]:
        response = self.request("POST", paths.RESUMABLE, headers={
            paths.LENGTH_HEADER: str(self.size), paths.MODE_HEADER: "async" if asynchronous else "sync",
            **self.checksum_headers()})
        if response.status_code == 201:
            return response.headers[paths.ID_HEADER], 0
        self.check_auth(response)
        self.final(response)
        self.setback(f"cannot start the upload: {response.status_code} {response.text.strip()}")
        return None, 0

    def send_from(self, upload_id: str, offset: int) -> requests.Response:
        body = self.body(offset)
        try:
            return self.request("PATCH", paths.RESUMABLE, data=body, headers={
                paths.ID_HEADER: upload_id, paths.OFFSET_HEADER: str(offset),
                "Content-Type": "application/offset+octet-stream"})
        finally:
            body.close()

    def where(self, upload_id: str, offset: int) -> tuple[str | None, int]:
        """Ask the server where the upload stands after a broken connection."""
        try:
            response = self.request("HEAD", paths.RESUMABLE, headers={paths.ID_HEADER: upload_id})
        except RETRYABLE:
            return upload_id, offset
        if response.status_code == 200 and paths.OFFSET_HEADER in response.headers:
            return self.moved(upload_id, offset, int(response.headers[paths.OFFSET_HEADER]))
        if response.status_code == 404:
            return None, 0
        self.final(response)
        return upload_id, offset

    def after(self, response: requests.Response, upload_id: str | None,
              offset: int) -> tuple[str | None, int]:
        """The next step after a PATCH that did not finish the upload."""
        status = response.status_code
        if status in (204, 409) and paths.OFFSET_HEADER in response.headers:
            if status == 409 and response.headers.get(paths.STATE_HEADER) == "receiving":
                self.setback("the server is still receiving the previous attempt")
            return self.moved(upload_id, offset, int(response.headers[paths.OFFSET_HEADER]))
        if status == 404:
            self.setback("the server lost the upload; starting over")
            return None, 0
        self.check_auth(response)
        self.final(response)
        self.setback(f"unexpected return value {status}, {response.text.strip()}")
        return self.where(upload_id, offset) if upload_id else (None, 0)

    def moved(self, upload_id: str | None, offset: int, new_offset: int) -> tuple[str | None, int]:
        if new_offset > offset:
            self.progressed()
        if new_offset != offset or self.attempts > 1:
            self.resumes += 1
        return upload_id, new_offset


def upload(proxy_url: str, token: Token, path: str | os.PathLike[str], *, async_: bool | None = None,
           resumable: bool | None = None, ca: str | os.PathLike[str] | None = None, insecure: bool = False,
           progress: ProgressCallback | bool | None = None, retries: int = 5,
           checksum: str | bool | None = None) -> UploadResult:
    """Upload the file at ``path`` through the proxy at ``proxy_url`` with an upload token.

    ``async_``/``resumable``: None discovers what the proxy offers (HEAD probes). ``ca``: the
    proxy's CA (else the system's; ``insecure`` skips verification). ``progress``: a callback
    ``(done, total)`` or True for a tqdm bar. ``checksum``: ``"sha256:<hex>"`` for the server to
    verify, or True to compute the sha256 first (one extra read of the file).
    """
    file = Path(path)
    digest = sha256_of(file) if checksum is True else (checksum or None)
    uploader = Uploader(proxy_url, token, file, ca=Path(ca) if ca else None, insecure=insecure,
                        progress=progress, retries=retries, checksum=digest)
    try:
        if resumable is None:
            resumable = uploader.probe(paths.RESUMABLE)
        if async_ is None:
            async_ = True if resumable else uploader.probe(paths.ASYNC)
        return uploader.resumable(async_) if resumable else uploader.one_shot(async_)
    finally:
        uploader.progress.close()
        uploader.http.close()
