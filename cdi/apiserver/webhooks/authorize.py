"""May this user clone from that namespace? CDI's rule, asked of kube-apiserver's authorizer.

Cloning reads a volume, and the controller that does it can read every namespace; so the user who
creates the DataVolume must be allowed something in the **source** namespace that already implies
reading it. CDI's rule (``authorize_utils.go`` in its API):

* same namespace: always allowed, no review;
* a PVC source: ``create`` on ``cdi.kubevirt.io`` ``datavolumes/source`` (the resource name being
  the PVC), **or** ``create pods`` there (a pod could mount the PVC anyway);
* a VolumeSnapshot source: ``datavolumes/source``, **or** both ``create pods`` and ``create`` PVCs
  (a PVC could be restored from the snapshot and mounted).

Each alternative is a list of SubjectAccessReviews that must all allow; the first alternative that
does wins, so the common case costs one review. CDI asks about the PVCs as the resource ``pvcs``,
which no built-in role names (``persistentvolumeclaims`` is the real resource); we accept either, so a
role written for CDI works and so does a real ``create persistentvolumeclaims`` grant.

The reviews carry the requester exactly as kube-apiserver authenticated it (user, groups, uid,
extras); a ServiceAccount is the user ``system:serviceaccount:<ns>:<name>`` with its groups, like
anyone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdi.apiserver.authn import UserInfo

from .cluster import Cluster
from .sources import CloneSource

CDI_GROUP = "cdi.kubevirt.io"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def alternatives(source: CloneSource) -> list[list[dict[str, str]]]:
    """The ``resourceAttributes`` that together allow cloning ``source``, alternative by alternative."""
    def attrs(resource: str, group: str = "", subresource: str = "") -> dict[str, str]:
        found = {"namespace": source.namespace, "verb": "create", "group": group, "resource": resource,
                 "name": source.name}
        return {**found, "subresource": subresource} if subresource else found

    explicit = [attrs("datavolumes", CDI_GROUP, "source")]
    if source.kind == "pvc":
        return [explicit, [attrs("pods")]]
    return [explicit, [attrs("pods"), attrs("persistentvolumeclaims")], [attrs("pods"), attrs("pvcs")]]


def review_spec(user: UserInfo, attributes: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"user": user.name, "resourceAttributes": dict(attributes)}
    if user.groups:
        spec["groups"] = list(user.groups)
    if user.uid:
        spec["uid"] = user.uid
    if user.extra:
        spec["extra"] = {key: list(values) for key, values in user.extra.items()}
    return spec


def denied_message(user: UserInfo, namespace: str) -> str:
    """CDI's words, which KubeVirt and users grep for."""
    return f"User {user.name} has insufficient permissions in clone source namespace {namespace}"


async def authorize(cluster: Cluster, user: UserInfo, source: CloneSource, target_namespace: str) -> Decision:
    if source.namespace == target_namespace:
        return Decision(True)
    for alternative in alternatives(source):
        if await _all_allowed(cluster, user, alternative):
            return Decision(True)
    return Decision(False, denied_message(user, source.namespace))


async def _all_allowed(cluster: Cluster, user: UserInfo, attributes: list[dict[str, str]]) -> bool:
    for attrs in attributes:
        if not await cluster.allowed(review_spec(user, attrs)):
            return False
    return True
