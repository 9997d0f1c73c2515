"""May this user create an UploadTokenRequest here? kube-apiserver decides, we ask.

The aggregation layer authenticates but does not authorize requests for an aggregated group:
kube-apiserver's RBAC only runs when *we* ask it, with a SubjectAccessReview carrying the user,
groups and extras from the front-proxy headers. The review is about the resource, not the PVC:
CDI issues tokens without checking that the PVC exists, and so do we (the upload proxy checks the
PVC when the upload starts). Creating reviews needs ``create`` on
``authorization.k8s.io/subjectaccessreviews``, which the ClusterRole ``system:auth-delegator`` grants.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client

from .authn import UserInfo
from .discovery import GROUP, RESOURCE, VERSION

log = logging.getLogger("cdi.apiserver.authz")

VERB = "create"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class Authorizer(Protocol):
    """The seam the request handler needs; tests may put a table behind it."""

    async def authorize(self, user: UserInfo, namespace: str) -> Decision: ...


def access_review(user: UserInfo, namespace: str) -> dict[str, Any]:
    """The ``authorization.k8s.io/v1`` SubjectAccessReview for creating a token request in ``namespace``."""
    spec: dict[str, Any] = {
        "user": user.name,
        "resourceAttributes": {"namespace": namespace, "verb": VERB, "group": GROUP, "version": VERSION,
                               "resource": RESOURCE},
    }
    if user.groups:
        spec["groups"] = list(user.groups)
    if user.extra:
        spec["extra"] = {key: list(values) for key, values in user.extra.items()}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def forbidden_message(user: UserInfo, namespace: str, reason: str = "") -> str:
    """kube-apiserver's wording for an RBAC denial, so users recognise it; the review's reason appended."""
    message = (f'{RESOURCE}.{GROUP} is forbidden: User "{user.name}" cannot {VERB} resource "{RESOURCE}" '
               f'in API group "{GROUP}" in the namespace "{namespace}"')
    return f"{message}: {reason}" if reason else message


class SubjectAccessReviewer:
    """:class:`Authorizer` backed by the real apiserver (a ``kubernetes.client.ApiClient``).

    The official client is synchronous; each review runs in a worker thread so one slow answer
    does not stall the event loop.
    """

    def __init__(self, api_client: Any) -> None:
        self._api = client.AuthorizationV1Api(api_client)

    async def authorize(self, user: UserInfo, namespace: str) -> Decision:
        review = access_review(user, namespace)
        result = await asyncio.to_thread(self._api.create_subject_access_review, review)
        status = result.status
        decision = Decision(bool(status.allowed), str(status.reason or status.evaluation_error or ""))
        log.info("SubjectAccessReview: %s create %s in %s: %s%s", user.name, RESOURCE, namespace,
                 "allowed" if decision.allowed else "denied", f" ({decision.reason})" if decision.reason else "")
        return decision
