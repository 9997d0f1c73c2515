"""The importer's error vocabulary: every failure is either temporary or permanent.

    CdiImportError                  base; carries a CDI-style ``reason`` and ``permanent``
    ├── TemporaryError              retry (with backoff, resuming where possible)
    │   └── SourceUnavailable       5xx, 429, reset connection, timeout, stalled transfer
    ├── PermanentError              fail now: retrying cannot help
    │   ├── SourceNotFound          404 / 410 / no such key / no such tag
    │   ├── AuthenticationFailed    401 / 403 / bad credentials / TLS verification failed
    │   ├── InvalidSource           a URL or option that cannot work
    │   ├── InvalidImage            corrupt, truncated or unsupported image
    │   ├── UnsafeImage             backing files, external data, path escapes
    │   ├── ImageTooLarge           the image does not fit the target
    │   └── ChecksumMismatch        the bytes received are not the bytes promised
    ├── SourceChanged               the object changed mid-transfer: start the import over
    ├── RangesIgnored               ranges advertised, not honoured: start over, sequentially
    └── ScratchSpaceRequired        a named outcome: this import needs a scratch directory

The pod entrypoint turns these into CDI's termination message and an exit code; the
controller reads ``permanent`` to stop retrying. Messages are written for the user: they say
what went wrong and, where it helps, what to do.
"""

from __future__ import annotations


class CdiImportError(Exception):
    """Base of every error the import pipeline raises on purpose."""

    reason = "Error"
    permanent = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class TemporaryError(CdiImportError):
    """A fault that may clear by itself; the caller retries with backoff."""

    reason = "TemporaryError"
    permanent = False


class SourceUnavailable(TemporaryError):
    """The source did not answer usefully this time (5xx, 429, reset, timeout, stall)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(CdiImportError):
    """Retrying cannot help; the import fails now with this message."""

    reason = "Error"
    permanent = True


class SourceNotFound(PermanentError):
    reason = "NotFound"


class AuthenticationFailed(PermanentError):
    reason = "Unauthorized"


class InvalidSource(PermanentError):
    reason = "InvalidSource"


class InvalidImage(PermanentError):
    reason = "InvalidImage"


class UnsafeImage(PermanentError):
    reason = "UnsafeImage"


class ImageTooLarge(PermanentError):
    """The image needs more room than the target has.

    The message keeps CDI's wording ("is larger than the reported available storage"), which
    CDI's controller, and ours, shorten to "DataVolume too small to contain image".
    """

    reason = "TooSmall"

    def __init__(self, needed: int, available: int, what: str = "virtual image size") -> None:
        super().__init__(
            f"{what} {needed} is larger than the reported available storage {available}. "
            "A larger PVC is required"
        )
        self.needed = needed
        self.available = available


class ChecksumMismatch(PermanentError):
    reason = "ChecksumError"

    def __init__(self, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(
            f"checksum mismatch: checksum validation failed: expected {algorithm}:{expected}, "
            f"got {algorithm}:{actual}"
        )


class RangesIgnored(CdiImportError):
    """The server advertised ``Accept-Ranges`` but answered a ranged read with the whole
    object. The source stops offering random access and the import starts over, reading in
    order (a scratch file where the format needs one)."""

    reason = "RangesIgnored"
    permanent = False


class ScratchSpaceRequired(CdiImportError):
    """The source and format need a scratch directory, and none was given."""

    reason = "ScratchSpaceRequired"
    permanent = False


class SourceChanged(CdiImportError):
    """The object changed while it was being read (new ETag / Last-Modified).

    Not a TemporaryError: resuming the same stream cannot help and must not splice two
    versions together. The pipeline starts the whole import over, a bounded number of times.
    """

    reason = "SourceChanged"
    permanent = False
