"""The controller's view of the cluster: the latest body of every watched object.

Reconcilers read from here instead of GETting from the apiserver (as controller-runtime's cached
client does), which keeps API requests per DataVolume low. The watch streams fill it; the
controller's own writes are stored too, so the next reconcile does not act on a stale copy.
A write's response is kept only if it is newer than what is cached (resourceVersions from one
etcd are increasing integers), so a late watch event can't roll the cache back either.
"""

from __future__ import annotations

import builtins
import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .resources import Resource

Body = dict[str, Any]
CacheKey = tuple[Resource, str, str]  # (resource, namespace or "", name)


def key_of(resource: Resource, body: Body) -> CacheKey:
    meta = body.get("metadata") or {}
    return resource, meta.get("namespace") or "", meta["name"]


def _version(body: Body) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class ObjectCache:
    """Thread-safe map from (resource, namespace, name) to the newest body seen."""

    def __init__(self) -> None:
        self._objects: dict[CacheKey, Body] = {}
        self._lock = threading.Lock()

    def store(self, resource: Resource, body: Body) -> None:
        """Keep ``body`` unless a newer version of the object is already cached."""
        if not resource.cached:
            return
        key = key_of(resource, body)
        with self._lock:
            current = self._objects.get(key)
            if current is None or _version(body) >= _version(current) or _version(body) == 0:
                self._objects[key] = body

    def forget(self, resource: Resource, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((resource, namespace, name), None)

    def get(self, resource: Resource, namespace: str, name: str) -> Body | None:
        """A deep copy, so a reconciler can modify what it got without touching the cache."""
        with self._lock:
            body = self._objects.get((resource, namespace, name))
        return copy.deepcopy(body) if body is not None else None

    def list(self, resource: Resource, namespace: str | None = None) -> list[Body]:
        with self._lock:
            bodies = [b for (r, ns, _), b in self._objects.items()
                      if r == resource and (namespace is None or ns == namespace)]
        return copy.deepcopy(bodies)

    def select(self, resource: Resource, matches: Callable[[Body], bool]) -> "builtins.list[tuple[str, str]]":
        """(namespace, name) of every cached ``resource`` for which ``matches`` holds. No copies are
        made, so ``matches`` must only read; this is how watch events find the objects that refer
        to the one that changed."""
        with self._lock:
            return [(ns, name) for (r, ns, name), body in self._objects.items() if r == resource and matches(body)]

    def __iter__(self) -> Iterator[CacheKey]:
        with self._lock:
            return iter(list(self._objects))
