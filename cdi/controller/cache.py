"""The controller's view of the cluster: the latest body of every watched object.

Reconcilers read from here instead of GETting from the apiserver (as controller-runtime's cached
client does), which keeps API requests per DataVolume low. The watch stream fills it; the
controller's own writes are stored too, so the next reconcile does not act on a stale copy.
A write's response is kept only if it is newer than what is cached (resourceVersions from one
etcd are increasing integers), so a late watch event can't roll the cache back either.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

Body = dict[str, Any]
Key = tuple[str, str, str]  # (kind, namespace or "", name)


def key_of(kind: str, body: Body) -> Key:
    meta = body.get("metadata") or {}
    return kind, meta.get("namespace") or "", meta["name"]


def _version(body: Body) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class ObjectCache:
    """Thread-safe map from (kind, namespace, name) to the newest body seen."""

    def __init__(self) -> None:
        self._objects: dict[Key, Body] = {}
        self._lock = threading.Lock()

    def store(self, kind: str, body: Body) -> None:
        """Keep ``body`` unless a newer version of the object is already cached."""
        key = key_of(kind, body)
        with self._lock:
            current = self._objects.get(key)
            if current is None or _version(body) >= _version(current) or _version(body) == 0:
                self._objects[key] = body

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((kind, namespace, name), None)

    def get(self, kind: str, namespace: str, name: str) -> Body | None:
        """A deep copy, so a reconciler can modify what it got without touching the cache."""
        with self._lock:
            body = self._objects.get((kind, namespace, name))
        return copy.deepcopy(body) if body is not None else None

    def list(self, kind: str, namespace: str | None = None) -> list[Body]:
        with self._lock:
            bodies = [b for (k, ns, _), b in self._objects.items()
                      if k == kind and (namespace is None or ns == namespace)]
        return copy.deepcopy(bodies)

    def __iter__(self) -> Iterator[Key]:
        with self._lock:
            return iter(list(self._objects))
