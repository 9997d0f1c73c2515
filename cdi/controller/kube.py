"""The controller's writes to the apiserver, over the official ``kubernetes`` client.

Reads come from the :mod:`cache`; every write goes through :class:`Kube`, which speaks plain
JSON dicts (no generated models: the controller builds and compares bodies as dicts), treats
"already exists" on create and "not found" on delete as success (reconciles are idempotent and
may race a stale cache), stores every returned body in the cache, and counts its requests.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from ..api.v1beta1 import GROUP, VERSION
from .cache import Body, ObjectCache

log = logging.getLogger("cdi.controller.kube")

MERGE_PATCH = "application/merge-patch+json"
CDI_PLURALS = {"dv": "datavolumes", "storageprofile": "storageprofiles", "cdiconfig": "cdiconfigs",
               "datasource": "datasources"}
CLUSTER_SCOPED = {"storageprofile", "cdiconfig", "storageclass"}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    def __init__(self, api: client.ApiClient, cache: ObjectCache) -> None:
        self.api = api
        self.cache = cache
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.requests = 0
        self._lock = threading.Lock()

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    @staticmethod
    def _json(response: Any) -> Body:
        return json.loads(response.data) if response.data else {}

    def _keep(self, kind: str, body: Body) -> Body:
        if body.get("metadata", {}).get("name"):
            self.cache.store(kind, body)
        return body

    # -- create ----------------------------------------------------------------------------

    def create(self, kind: str, body: Body) -> Body | None:
        """Create ``body``; None if an object of that name already exists."""
        ns = body["metadata"].get("namespace", "")
        self._count()
        try:
            if kind == "pvc":
                resp = self.core.create_namespaced_persistent_volume_claim(ns, body, _preload_content=False)
            elif kind == "pod":
                resp = self.core.create_namespaced_pod(ns, body, _preload_content=False)
            elif kind == "service":
                resp = self.core.create_namespaced_service(ns, body, _preload_content=False)
            elif kind == "secret":  # never cached: the controller keeps no key material around
                self.core.create_namespaced_secret(ns, body, _preload_content=False)
                return {"metadata": dict(body["metadata"])}
            elif kind in CLUSTER_SCOPED:
                resp = self.custom.create_cluster_custom_object(GROUP, VERSION, CDI_PLURALS[kind], body,
                                                                _preload_content=False)
            else:
                raise ValueError(f"cannot create {kind}")
        except ApiException as error:
            if error.status == 409:
                return None
            raise
        return self._keep(kind, self._json(resp))

    # -- patch -----------------------------------------------------------------------------

    def patch(self, kind: str, namespace: str, name: str, patch: Body) -> Body | None:
        """A JSON merge patch of the object; None if it is gone."""
        self._count()
        kw: dict[str, Any] = {"_content_type": MERGE_PATCH, "_preload_content": False}
        try:
            if kind == "pvc":
                resp = self.core.patch_namespaced_persistent_volume_claim(name, namespace, patch, **kw)
            elif kind == "dv":
                resp = self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "datavolumes", name,
                                                                  patch, **kw)
            elif kind in CLUSTER_SCOPED:
                resp = self.custom.patch_cluster_custom_object(GROUP, VERSION, CDI_PLURALS[kind], name, patch, **kw)
            else:
                raise ValueError(f"cannot patch {kind}")
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self._keep(kind, self._json(resp))

    def patch_status(self, kind: str, namespace: str, name: str, status: Body) -> Body | None:
        """Merge ``status`` into the status subresource of a CDI object."""
        self._count()
        kw: dict[str, Any] = {"_content_type": MERGE_PATCH, "_preload_content": False}
        try:
            if kind in CLUSTER_SCOPED:
                resp = self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, CDI_PLURALS[kind], name, {"status": status}, **kw)
            else:
                resp = self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, CDI_PLURALS[kind], name, {"status": status}, **kw)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self._keep(kind, self._json(resp))

    # -- delete ----------------------------------------------------------------------------

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete in the background (dependents go with it); a missing object is fine."""
        self._count()
        body = client.V1DeleteOptions(propagation_policy="Background")
        try:
            if kind == "pod":
                self.core.delete_namespaced_pod(name, namespace, body=body, _preload_content=False)
            elif kind == "pvc":
                self.core.delete_namespaced_persistent_volume_claim(name, namespace, body=body,
                                                                    _preload_content=False)
            elif kind == "service":
                self.core.delete_namespaced_service(name, namespace, body=body, _preload_content=False)
            else:
                raise ValueError(f"cannot delete {kind}")
        except ApiException as error:
            if error.status != 404:
                raise

    # -- events ----------------------------------------------------------------------------

    def event(self, regarding: Body, kind: str, event_type: str, reason: str, message: str,
              component: str) -> None:
        """A core/v1 Event about ``regarding``, as ``kubectl describe`` shows them."""
        meta = regarding["metadata"]
        stamp = now()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": regarding.get("apiVersion"), "kind": kind, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message[:1024], "type": event_type,
            "source": {"component": component}, "reportingComponent": component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        self._count()
        try:
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except ApiException as error:  # an event is never worth failing a reconcile for
            log.warning("cannot record event %s on %s: %s", reason, meta["name"], error.reason)
