"""AdmissionReview ``admission.k8s.io/v1``: the request as kube-apiserver sends it, the answers we give.

kube-apiserver POSTs ``{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request":
{...}}`` and expects the same envelope back with ``response.uid`` equal to ``request.uid``. A body
that is not such a review (not JSON, another kind, no ``request.uid``, no ``request.object``) is
refused with an HTTP 400 :class:`BadReview`: it did not come from kube-apiserver, and there is no
uid to answer to.

Three answers, as CDI's handler gives them:

* :func:`allow` (optionally with a JSON patch, base64 in ``response.patch``);
* :func:`reject`: ``allowed: false`` with a code (422 for invalid specs, 403 for a denied clone)
  and the causes in ``status.details.causes``; kube-apiserver shows the message to the user as
  ``admission webhook "<name>" denied the request: <message>``;
* :func:`error`: ``allowed: false``, code 400, for a check we could not make (a lookup failed).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from cdi.apiserver.authn import UserInfo
from cdi.apiserver.status import REASONS

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")


class BadReview(ValueError):
    """The body is not an AdmissionReview v1 request; the message says what is wrong."""


@dataclass(frozen=True)
class Cause:
    """One ``metav1.StatusCause``: why, and which field."""

    message: str
    field: str = ""
    type: str = "FieldValueInvalid"


@dataclass(frozen=True)
class Request:
    """The parts of ``request`` the webhooks read."""

    uid: str
    operation: str
    resource: dict[str, str]
    namespace: str
    name: str
    user: UserInfo
    object: dict[str, Any]
    old_object: dict[str, Any] | None = None
    dry_run: bool = False
    sub_resource: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def parse(body: bytes) -> Request:
    """The review's request, or :class:`BadReview`."""
    try:
        review = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadReview(f"the body is not JSON: {err}") from err
    if not isinstance(review, dict) or review.get("kind") != KIND or review.get("apiVersion") != API_VERSION:
        raise BadReview(f"the body is not an {API_VERSION} {KIND}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview(f"the {KIND} has no request")
    uid, operation = request.get("uid"), request.get("operation")
    if not isinstance(uid, str) or not uid:
        raise BadReview(f"the {KIND} request has no uid")
    if operation not in OPERATIONS:
        raise BadReview(f"the {KIND} request's operation {operation!r} is not one of {', '.join(OPERATIONS)}")
    obj, old = request.get("object"), request.get("oldObject")
    if not isinstance(obj, dict) or not (old is None or isinstance(old, dict)):
        raise BadReview(f"the {KIND} request's object and oldObject must be JSON objects")
    return Request(uid=uid, operation=operation, resource=_strings(request.get("resource")),
                   namespace=str(request.get("namespace") or ""), name=str(request.get("name") or ""),
                   user=_user(request.get("userInfo")), object=obj, old_object=old,
                   dry_run=bool(request.get("dryRun")), sub_resource=str(request.get("subResource") or ""),
                   raw=request)


def allow(uid: str, patch: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return _envelope(response)


def reject(uid: str, code: int, causes: list[Cause]) -> dict[str, Any]:
    """Refuse with ``causes`` (their messages joined make the status message, as CDI's do)."""
    status = {"code": code, "reason": REASONS.get(code, "Invalid"), "message": " ".join(c.message for c in causes),
              "details": {"causes": [{"type": c.type, "message": c.message, "field": c.field} for c in causes]}}
    return _envelope({"uid": uid, "allowed": False, "status": status})


def error(uid: str, message: str) -> dict[str, Any]:
    """Refuse because a check could not be made (CDI's ``toAdmissionResponseError``: code 400)."""
    return _envelope({"uid": uid, "allowed": False, "status": {"code": 400, "reason": "BadRequest",
                                                               "message": message}})


def _envelope(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: hostile input is read without crashing."""
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _user(value: Any) -> UserInfo:
    """``userInfo`` as the SubjectAccessReview needs it (user, groups, extras, uid)."""
    info = obj(value)
    groups = info["groups"] if isinstance(info.get("groups"), list) else []
    extra = {str(k): [str(x) for x in v] for k, v in obj(info.get("extra")).items() if isinstance(v, list)}
    return UserInfo(str(info.get("username") or ""), tuple(str(g) for g in groups), extra,
                    uid=str(info.get("uid") or ""))
