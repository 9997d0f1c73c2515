"""API plumbing shared by the agent's parts: a client, plain-dict calls, and a small informer.

Everything here works on plain dicts (the JSON the apiserver sends), not the client's models: the
models refuse objects with fields they do not know or required fields missing, and a test node
must not fall over on that. Nothing here reads, modifies and writes back: status and annotation
writes are JSON merge patches of only the fields the agent owns, so they never conflict on
resourceVersion, and creates that race (409 AlreadyExists) are treated as done.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import kubernetes
from kubernetes.client import ApiClient, ApiException
from kubernetes.watch.watch import iter_resp_lines

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
log = logging.getLogger("kubeenv.nodeagent")


def make_client(kubeconfig: Path) -> ApiClient:
    """An API client of its own (not the global default), with a pool big enough for the watches."""
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = 32
    return ApiClient(configuration)


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
    """Call a generated API method and return the response body as a dict, skipping the models."""
    response = call(*args, _preload_content=False, **kwargs)
    data = response.data
    return json.loads(data) if data else {}


def ignore_missing(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj | None:
    """:func:`raw`, but None when the object is already gone (deletes and patches race with GC)."""
    try:
        return raw(call, *args, **kwargs)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def confirm_pod_deleted(core: Any, pod: Obj) -> None:
    """Remove a pod object with grace period 0, as kubelet does once the pod's processes are gone.

    The uid precondition keeps a new pod of the same name safe (that is a 409, ignored like 404).
    Grace and preconditions must both be in the body: with a body, the apiserver reads no query.
    """
    meta = pod["metadata"]
    body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
    try:
        raw(core.delete_namespaced_pod, meta["name"], meta["namespace"], body=body)
    except ApiException as error:
        if error.status not in (404, 409):
            raise


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def now_micro() -> str:
    """MicroTime, as Lease.renewTime wants it."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


Handler = Callable[[str, Obj], None]


class Informer:
    """List, then watch, one kind of object; keep a cache; call ``handler(event, obj)`` for changes.

    Events are ``ADDED``, ``MODIFIED``, ``DELETED`` and ``SYNC`` (every cached object again every
    ``resync`` seconds, so a handler that failed earlier gets another go without its own retry
    loop). A watch that expires (410 Gone) or breaks is followed by a fresh list, and objects that
    vanished meanwhile are reported as ``DELETED``. Handlers run on the informer's thread.
    """

    def __init__(self, name: str, list_call: Callable[..., Any], handler: Handler, *,
                 field_selector: str | None = None, resync: float = 10.0) -> None:
        self.name = name
        self._list_call = list_call
        self._handler = handler
        self._selector = {"field_selector": field_selector} if field_selector else {}
        self._resync = resync
        self._cache: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; closing the open response wakes the thread at once instead of at the timeout."""
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:  # noqa: BLE001 - best effort, the read timeout catches it otherwise
                pass
        self._thread.join(timeout=15)

    def wait_synced(self, timeout: float = 30) -> bool:
        return self._synced.wait(timeout)

    def get(self, name: str, namespace: str = "") -> Obj | None:
        with self._lock:
            return self._cache.get(f"{namespace}/{name}")

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._cache.values())

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                version = self._relist()
                self._synced.set()
                self._watch(version)
                delay = 0.5
            except Exception as error:  # noqa: BLE001 - an informer must outlive any API hiccup
                if self._stop.is_set():
                    return
                log.debug("informer %s: %s; relisting in %.1fs", self.name, error, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _relist(self) -> str:
        body = raw(self._list_call, **self._selector)
        fresh = {key(obj): obj for obj in body.get("items", [])}
        with self._lock:
            gone = [obj for k, obj in self._cache.items() if k not in fresh]
            previous = self._cache
            self._cache = dict(fresh)
        for obj in gone:
            self._dispatch("DELETED", obj)
        for k, obj in fresh.items():
            self._dispatch("MODIFIED" if k in previous else "ADDED", obj)
        version: str = body["metadata"]["resourceVersion"]
        return version

    def _watch(self, version: str) -> None:
        """Watch from ``version`` until stopped; return (so the caller relists) on 410 Gone or errors."""
        next_resync = time.monotonic() + self._resync
        while not self._stop.is_set():
            for event in self._stream(version, timeout=max(1.0, next_resync - time.monotonic())):
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    log.debug("informer %s: watch error %s", self.name, obj.get("message"))
                    return
                version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self._apply(kind, obj)
            if time.monotonic() >= next_resync:
                for obj in self.items():
                    self._dispatch("SYNC", obj)
                next_resync = time.monotonic() + self._resync

    def _stream(self, version: str, timeout: float) -> Iterator[Obj]:
        response = self._list_call(watch=True, resource_version=version, allow_watch_bookmarks=True,
                                   timeout_seconds=max(1, int(timeout)), _preload_content=False,
                                   _request_timeout=(10, timeout + 30), **self._selector)
        self._response = response
        try:
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            self._response = None
            response.close()
            response.release_conn()

    def _apply(self, kind: str, obj: Obj) -> None:
        with self._lock:
            if kind == "DELETED":
                self._cache.pop(key(obj), None)
            else:
                self._cache[key(obj)] = obj
        self._dispatch(kind, obj)

    def _dispatch(self, kind: str, obj: Obj) -> None:
        try:
            self._handler(kind, obj)
        except Exception:  # noqa: BLE001 - one bad object must not stop the watch; SYNC retries it
            log.exception("informer %s: handler failed on %s %s", self.name, kind, key(obj))
