"""Upload outcomes and the HTTP answers CDI gives for them.

=========================================  ======  =============================================
outcome                                    status  body
=========================================  ======  =============================================
another upload is running or paused        503     why, and (paused) until when it can resume
the volume already holds a finished upload 409     ``the upload already completed``
image larger than the target / disk full   400     ``Saving stream failed: ... too small ...``
checksum mismatch, truncated or empty body 400     ``Saving stream failed: ...``
anything else                              500     ``Saving stream failed: <reason>``
=========================================  ======  =============================================
"""

from __future__ import annotations

from importer.errors import CdiImportError, ChecksumMismatch, PermanentError, ScratchSpaceRequired

from .paths import ERROR_HEADER

TOO_SMALL = "DataVolume too small to contain image"


class UploadBusy(Exception):
    """One upload at a time: another one holds the volume."""


class UploadAlreadyDone(Exception):
    """The volume already received a complete upload."""


class BadUploadRequest(Exception):
    """The request itself is malformed (missing header, no ``file`` part, bad offset)."""


class UploadInterrupted(PermanentError):
    """The body ended before all of it arrived (the client went away or sent less)."""

    reason = "UploadInterrupted"


class UploadAbandoned(PermanentError):
    """A paused resumable upload was not resumed in time."""

    reason = "UploadAbandoned"


def is_too_small(error: BaseException) -> bool:
    return isinstance(error, CdiImportError) and error.reason == "TooSmall"


def error_headers(error: BaseException) -> dict[str, str]:
    """Whether retrying the same bytes could succeed, for clients that read it (ours)."""
    if isinstance(error, (UploadBusy, UploadAlreadyDone, BadUploadRequest)):
        return {}
    permanent = isinstance(error, (PermanentError, ScratchSpaceRequired))
    return {ERROR_HEADER: "permanent" if permanent else "temporary"}


def http_status(error: BaseException) -> int:
    if isinstance(error, UploadBusy):
        return 503
    if isinstance(error, UploadAlreadyDone):
        return 409
    if isinstance(error, BadUploadRequest) or is_too_small(error):
        return 400
    if isinstance(error, (ChecksumMismatch, UploadInterrupted)):
        return 400
    if isinstance(error, CdiImportError) and error.reason == "EmptyImage":
        return 400
    return 500


def http_message(error: BaseException) -> str:
    """The body of the answer: CDI's "Saving stream failed: ..." for failed imports."""
    if isinstance(error, (UploadBusy, UploadAlreadyDone, BadUploadRequest)):
        return str(error)
    message = str(error) or type(error).__name__
    if is_too_small(error) and "too small" not in message:
        message = f"{message}: {TOO_SMALL}"
    return f"Saving stream failed: {message}"
