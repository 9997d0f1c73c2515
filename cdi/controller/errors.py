"""The controller's error vocabulary, like the importer's: temporary or permanent.

* :class:`TemporaryError` (and anything not known to be permanent: an API outage, a conflict, a
  bug): the key is looked at again with per-key exponential back-off, capped, with jitter, and
  the back-off resets once a pass succeeds.
* :class:`PermanentError`: the object cannot converge as it is (an invalid rendered body, a
  source that can never fit). Its reason and message are written to the object's status once
  and the key is not retried; a change to the object queues it afresh.

:func:`classify` maps what the ``kubernetes`` client raises: 400 and 422 mean the body we sent
is invalid and sending it again cannot help; 403 may be fixed by an administrator granting RBAC,
404/409/429/5xx by time, so they are temporary.
"""

from __future__ import annotations

from kubernetes.client.rest import ApiException

PERMANENT_API_STATUS = frozenset({400, 422})


class Explained(Exception):
    """Something a user is told about on the object: a CDI-style reason and a message. The
    controller's waits (a source not ready, a pod not done) and its errors all carry one."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ReconcileError(Explained):
    """An error of a reconcile pass; its subclass says whether retrying can help."""


class TemporaryError(ReconcileError):
    """Retry later, with back-off."""


class PermanentError(ReconcileError):
    """Say why on the object's status and stop retrying it."""


def classify(error: BaseException) -> ReconcileError:
    if isinstance(error, ReconcileError):
        return error
    if isinstance(error, ApiException):
        message = f"API request failed: {error.status} {error.reason}"
        if error.status in PERMANENT_API_STATUS:
            return PermanentError("InvalidRequest", message)
        return TemporaryError("APIError", message)
    return TemporaryError("InternalError", f"{type(error).__name__}: {error}")
