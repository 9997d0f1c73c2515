"""Failures as Kubernetes ``v1 Status`` objects, the only error body kubectl and client-go decode.

Handlers raise :class:`StatusError`; the server's middleware renders it (and aiohttp's own 404/405)
with :func:`status_body`, so every non-2xx answer looks like kube-apiserver's own: kubectl then
prints ``Error from server (Forbidden): <message>`` rather than an undecodable blob.
"""

from __future__ import annotations

from typing import Any

# HTTP code -> the StatusReason kube-apiserver uses for it (metav1.StatusReason*)
REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    406: "NotAcceptable", 409: "AlreadyExists", 415: "UnsupportedMediaType", 422: "Invalid",
    429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


class StatusError(Exception):
    """An answer other than success: HTTP ``code``, a message for humans, optional ``details``."""

    def __init__(self, code: int, message: str, *, reason: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def body(self) -> dict[str, Any]:
        return status_body(self.code, self.message, reason=self.reason, details=self.details)


def status_body(code: int, message: str, *, reason: str | None = None,
                details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``Status`` with kube-apiserver's field order and ``status: Failure``."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason or REASONS.get(code, "Unknown")}
    if details:
        body["details"] = details
    body["code"] = code
    return body


def field_error(kind: str, group: str, name: str, field: str, cause: str, detail: str) -> StatusError:
    """422 ``Invalid`` for one bad field, worded as apimachinery's field errors are
    (``<Kind>.<group> "<name>" is invalid: <field>: <Required value|Invalid value: ...>``)."""
    reason = "FieldValueRequired" if cause.startswith("Required value") else "FieldValueInvalid"
    message = f"{cause}: {detail}" if detail else cause
    return StatusError(
        422, f'{kind}.{group} "{name}" is invalid: {field}: {message}', reason="Invalid",
        details={"name": name, "group": group, "kind": kind,
                 "causes": [{"reason": reason, "message": message, "field": field}]})
