"""The controller's writes to the apiserver, over the official ``kubernetes`` client.

Reads come from the :mod:`cache`; every write goes through :class:`Kube`, which speaks plain
JSON dicts to the REST path of a :class:`~.resources.Resource` (one code path for every kind,
core or custom), treats "already exists" on create and "not found" on patch and delete as
answers rather than errors (reconciles are idempotent and may race a stale cache), stores every
returned body in the cache, and counts its requests.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from . import resources as res
from .cache import Body, ObjectCache
from .resources import Resource

log = logging.getLogger("cdi.controller.kube")

MERGE_PATCH = "application/merge-patch+json"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    def __init__(self, api: client.ApiClient, cache: ObjectCache) -> None:
        self.api = api
        self.cache = cache
        self.requests = 0
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Body:
        with self._lock:
            self.requests += 1
        response = self.api.call_api(
            path, method, header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True)
        data = response.data
        return json.loads(data) if data else {}

    def _keep(self, resource: Resource, body: Body) -> Body:
        if body.get("metadata", {}).get("name"):
            self.cache.store(resource, body)
        return body

    def create(self, resource: Resource, body: Body) -> Body | None:
        """Create ``body``; None if an object of that name already exists."""
        namespace = body["metadata"].get("namespace", "")
        try:
            created = self._call("POST", resource.path(namespace), body)
        except ApiException as error:
            if error.status == 409:
                return None
            raise
        if not resource.cached:  # Secrets: the controller keeps no key material around
            return {"metadata": dict(created.get("metadata") or body["metadata"])}
        return self._keep(resource, created)

    def get(self, resource: Resource, namespace: str, name: str) -> Body | None:
        """A live read, for the rare object the cache does not hold; None if it does not exist."""
        try:
            return self._call("GET", resource.path(namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, resource: Resource, namespace: str = "") -> list[Body]:
        """A live list, for kinds the controller does not watch (every pod of a namespace)."""
        return list(self._call("GET", resource.path(namespace)).get("items") or [])

    def patch(self, resource: Resource, namespace: str, name: str, patch: Body) -> Body | None:
        """A JSON merge patch of the object; None if it is gone."""
        try:
            return self._keep(resource, self._call("PATCH", resource.path(namespace, name), patch, MERGE_PATCH))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch_status(self, resource: Resource, namespace: str, name: str, status: Body) -> Body | None:
        """Merge ``status`` into the status subresource."""
        try:
            return self._keep(resource, self._call("PATCH", resource.path(namespace, name, "status"),
                                                   {"status": status}, MERGE_PATCH))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def delete(self, resource: Resource, namespace: str, name: str) -> None:
        """Delete in the background (dependents go with it); a missing object is fine."""
        try:
            self._call("DELETE", resource.path(namespace, name), {"propagationPolicy": "Background"})
        except ApiException as error:
            if error.status != 404:
                raise

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
            "reason": reason, "message": message[:1024], "type": str(event_type),
            "source": {"component": component}, "reportingComponent": component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            self._call("POST", res.EVENT.path(meta["namespace"]), body)
        except ApiException as error:  # an event is never worth failing a reconcile for
            log.warning("cannot record event %s on %s: %s", reason, meta["name"], error.reason)
