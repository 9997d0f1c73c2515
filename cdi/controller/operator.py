"""The controller process: kopf watches, a work queue, and the reconcilers on worker threads.

kopf does what it is good at: login, API discovery, list+watch of every resource with
reconnects and back-off, and per-object event ordering. Its handlers here only record the object
in the :class:`~.cache.ObjectCache` and queue the key of whatever must react (a pod names its
PVC, a PVC its DataVolume). The reconcilers are level-based, idempotent functions of the cached
state that write with the official ``kubernetes`` client; they run on a thread pool so that a
slow apiserver or a progress scrape never blocks the watch streams.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Hashable
from typing import Any

import kopf
from kubernetes import client

from . import annotations as ann
from . import datavolume, profiles, pvc_import, pvc_upload
from . import upload_pod
from .context import CONFIG_NAME, Context
from .workqueue import WorkQueue

log = logging.getLogger("cdi.controller")

Reconciler = Callable[[Context, str, str], "float | None"]
RECONCILERS: dict[str, Reconciler] = {
    "dv": datavolume.reconcile,
    "pvc": pvc_import.reconcile,
    "upload": pvc_upload.reconcile,
    "storageclass": profiles.reconcile_profile,
    "cdiconfig": profiles.reconcile_config,
}


def _meta(body: dict[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return meta.get("namespace") or "", meta["name"]


def _owners(body: dict[str, Any], kind: str) -> list[str]:
    return [ref["name"] for ref in (body.get("metadata") or {}).get("ownerReferences") or []
            if ref.get("kind") == kind]


class Controller:
    def __init__(self, ctx: Context, workers: int = 8) -> None:
        self.ctx = ctx
        self.workers = workers
        self.queue = WorkQueue()
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="reconcile")

    # -- watch events -> cache -> queue ------------------------------------------------------

    def _observe(self, kind: str, event: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = event["object"]
        namespace, name = _meta(body)
        if event.get("type") == "DELETED":
            self.ctx.cache.forget(kind, namespace, name)
        else:
            self.ctx.cache.store(kind, body)
        return body

    def on_datavolume(self, event: dict[str, Any]) -> None:
        body = self._observe("dv", event)
        self.queue.add(("dv", *_meta(body)))

    def on_claim(self, event: dict[str, Any]) -> None:
        body = self._observe("pvc", event)
        namespace, name = _meta(body)
        if pvc_import.is_import_claim(body):
            self.queue.add(("pvc", namespace, name))
        if pvc_upload.is_upload_claim(body):
            self.queue.add(("upload", namespace, name))
        for owner in _owners(body, "DataVolume"):
            self.queue.add(("dv", namespace, owner))

    def on_pod(self, event: dict[str, Any]) -> None:
        body = self._observe("pod", event)
        namespace, _ = _meta(body)
        worker = "upload" if (body.get("metadata") or {}).get("labels", {}).get(ann.COMPONENT_LABEL) == \
            upload_pod.COMPONENT else "pvc"
        for owner in _owners(body, "PersistentVolumeClaim"):
            self.queue.add((worker, namespace, owner))

    def on_storage_class(self, event: dict[str, Any]) -> None:
        body = self._observe("storageclass", event)
        self.queue.add(("storageclass", "", _meta(body)[1]))
        self.queue.add(("cdiconfig", "", CONFIG_NAME))

    def on_storage_profile(self, event: dict[str, Any]) -> None:
        body = self._observe("storageprofile", event)
        self.queue.add(("storageclass", "", _meta(body)[1]))

    def on_config(self, event: dict[str, Any]) -> None:
        body = self._observe("cdiconfig", event)
        self.queue.add(("cdiconfig", "", _meta(body)[1]))

    def registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        watches: list[tuple[tuple[str, ...], Callable[[dict[str, Any]], None], dict[str, Any]]] = [
            (("cdi.kubevirt.io", "v1beta1", "datavolumes"), self.on_datavolume, {}),
            (("v1", "persistentvolumeclaims"), self.on_claim, {}),
            (("v1", "pods"), self.on_pod, {"labels": {ann.APP_LABEL: ann.APP}}),
            (("storage.k8s.io", "v1", "storageclasses"), self.on_storage_class, {}),
            (("cdi.kubevirt.io", "v1beta1", "storageprofiles"), self.on_storage_profile, {}),
            (("cdi.kubevirt.io", "v1beta1", "cdiconfigs"), self.on_config, {}),
        ]
        for resource, observe, filters in watches:
            kopf.on.event(*resource, registry=registry, id=observe.__name__, **filters)(_handler(observe))
        return registry

    # -- the work ---------------------------------------------------------------------------

    async def _handle(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        kind, namespace, name = str(key[0]), str(key[1]), str(key[2])
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, RECONCILERS[kind], self.ctx, namespace, name)

    async def run(self, *, stop_flag: asyncio.Event | None = None, ready_flag: asyncio.Event | None = None,
                  liveness_endpoint: str | None = None, connection: kopf.ConnectionInfo) -> None:
        registry = self.registry()
        kopf.on.login(registry=registry)(lambda **_: connection)
        settings = kopf.OperatorSettings()
        settings.posting.enabled = False      # events are ours to write, with CDI's reasons
        # scanning stays on: kopf notices CRDs applied after the controller started (RBAC: list/watch CRDs)
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        self.queue.add(("cdiconfig", "", CONFIG_NAME))
        workers = [asyncio.create_task(self.queue.run_worker(self._handle)) for _ in range(self.workers)]
        try:
            await kopf.operator(registry=registry, settings=settings, clusterwide=True, standalone=True,
                                stop_flag=stop_flag, ready_flag=ready_flag, liveness_endpoint=liveness_endpoint)
        finally:
            for task in workers:
                task.cancel()
            self.pool.shutdown(wait=False, cancel_futures=True)


def _handler(observe: Callable[[dict[str, Any]], None]) -> Callable[..., Any]:
    async def handler(event: dict[str, Any], **_: Any) -> None:
        observe(event)
    return handler


def connection_from(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the ``kubernetes`` client's (kubeconfig or in-cluster)."""
    keys = configuration.api_key or {}
    token = keys.get("BearerToken") or keys.get("authorization") or ""  # the key's name varies by client version
    scheme, _, value = token.partition(" ") if " " in token else ("Bearer", "", token)
    return kopf.ConnectionInfo(
        server=configuration.host, ca_path=configuration.ssl_ca_cert, insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file, private_key_path=configuration.key_file,
        scheme=scheme if value else None, token=value or None)
