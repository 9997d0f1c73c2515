"""What can go wrong in an image upload, drawn so a caller can act on it.

:class:`ImageUploadError` is the one type callers catch; ``permanent`` says whether running
the same request again could help (a timeout or a dropped connection: yes; a volume that
already holds an image: no). :class:`InvalidUploadRequest` means the request itself must
change (a flag, a path) and is found before anything in the cluster is touched.

::

    ImageUploadError (permanent: bool)
    +-- InvalidUploadRequest    bad flags or file; nothing was changed       (CLI exit 3)
    +-- VolumeNotUsable         the DV/PVC cannot take this upload           (exit 2)
    +-- UploadWaitTimedOut      the cluster did not get there in time        (exit 1)
    +-- TransferFailed          the proxy refused or the bytes did not go    (exit 1 or 2)
"""

from __future__ import annotations


class ImageUploadError(Exception):
    permanent: bool = True

    def __init__(self, message: str, *, permanent: bool | None = None) -> None:
        super().__init__(message)
        if permanent is not None:
            self.permanent = permanent


class InvalidUploadRequest(ImageUploadError):
    """The request is wrong as given: fix the command line or the arguments."""


class VolumeNotUsable(ImageUploadError):
    """The target volume exists in a state that cannot take this upload, or failed."""


class UploadWaitTimedOut(ImageUploadError):
    permanent = False


class TransferFailed(ImageUploadError):
    """The proxy answered with an error, or retries ran out; ``permanent`` for 4xx answers."""
