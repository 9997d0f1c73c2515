"""What the webhooks read from the cluster, and the SubjectAccessReviews they ask for.

:class:`Cluster` is the seam: the webhooks ask it for a PVC, VolumeSnapshot or DataSource by
namespace and name (``None`` when there is none), whether a namespace exists, and whether a
SubjectAccessReview allows something. :class:`KubeCluster` asks the real kube-apiserver with the
server's own credentials; ``deploy/`` grants it ``get`` on exactly these (see
:mod:`cdi.apiserver.manifests`). The official client is synchronous, so every call runs in a
worker thread. A failure other than 404 is :class:`LookupFailed`, and the webhook refuses the
request (with ``failurePolicy: Fail`` a webhook must not guess).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.rest import ApiException

PVCS = "persistentvolumeclaims"
SNAPSHOTS = "volumesnapshots"
DATASOURCES = "datasources"
SNAPSHOT_GROUP, SNAPSHOT_VERSION = "snapshot.storage.k8s.io", "v1"
CDI_GROUP, CDI_VERSION = "cdi.kubevirt.io", "v1beta1"


class LookupFailed(RuntimeError):
    """kube-apiserver did not answer a read or a review (other than 404)."""


class Cluster(Protocol):
    async def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def namespace_exists(self, name: str) -> bool: ...

    async def allowed(self, review_spec: dict[str, Any]) -> bool: ...


class KubeCluster:
    """:class:`Cluster` over a ``kubernetes.client.ApiClient``."""

    def __init__(self, api_client: Any) -> None:
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._authz = client.AuthorizationV1Api(api_client)

    async def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, resource, namespace, name)

    async def namespace_exists(self, name: str) -> bool:
        return await asyncio.to_thread(self._namespace_exists, name)

    async def allowed(self, review_spec: dict[str, Any]) -> bool:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": review_spec}
        try:
            result = await asyncio.to_thread(self._authz.create_subject_access_review, body)
        except ApiException as err:
            raise LookupFailed(_why(err, "SubjectAccessReview")) from err
        return bool(result.status.allowed)

    def _get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            if resource == PVCS:
                raw = self._core.read_namespaced_persistent_volume_claim(name, namespace, _preload_content=False)
                return dict(json.loads(raw.data))
            group, version = (SNAPSHOT_GROUP, SNAPSHOT_VERSION) if resource == SNAPSHOTS else (CDI_GROUP, CDI_VERSION)
            return dict(self._custom.get_namespaced_custom_object(group, version, namespace, resource, name))
        except ApiException as err:
            if err.status == 404:  # also: the VolumeSnapshot CRD is not installed
                return None
            raise LookupFailed(_why(err, f"{resource} {namespace}/{name}")) from err

    def _namespace_exists(self, name: str) -> bool:
        try:
            self._core.read_namespace(name, _preload_content=False)
            return True
        except ApiException as err:
            if err.status == 404:
                return False
            raise LookupFailed(_why(err, f"namespace {name}")) from err


def _why(err: ApiException, what: str) -> str:
    try:
        message = json.loads(err.body or "{}").get("message") or err.reason
    except (ValueError, AttributeError):
        message = err.reason
    return f"reading {what}: {err.status} {message}"
