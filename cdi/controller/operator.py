"""The controller process: kopf watches, a work queue, and the reconcilers on worker threads.

kopf does what it is good at: login, API discovery, list+watch of every resource with
reconnects and back-off, and per-object event ordering. Its handlers here only record the object
in the :class:`~.cache.ObjectCache` and queue the :class:`~.keys.Key` s of whatever must react
(:mod:`.routing` says which). The reconcilers are level-based, idempotent functions of the
cached state that write with the official ``kubernetes`` client; they run on a thread pool so
that a slow apiserver or a progress scrape never blocks the watch streams.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes import client

from . import annotations as ann
from . import datasource, datavolume, profiles, pvc_clone, pvc_import, pvc_upload, routing
from .context import CONFIG_NAME, Context
from .cron import reconciler as cron
from .errors import PermanentError
from .keys import Key, Reconciler
from .resources import POD, WATCHED, Resource
from .workqueue import WorkQueue

log = logging.getLogger("cdi.controller")


@dataclass(frozen=True)
class Route:
    reconcile: Callable[[Context, str, str], float | None]
    fail: Callable[[Context, str, str, PermanentError], None] | None = None
    """Records a permanent error on the object (its status), so the user sees why it stopped."""


ROUTES: dict[Reconciler, Route] = {
    Reconciler.DATAVOLUME: Route(datavolume.reconcile, datavolume.fail),
    Reconciler.IMPORT: Route(pvc_import.reconcile),
    Reconciler.UPLOAD: Route(pvc_upload.reconcile),
    Reconciler.CLONE: Route(pvc_clone.reconcile, pvc_clone.fail),
    Reconciler.DATASOURCE: Route(datasource.reconcile),
    Reconciler.CRON: Route(cron.reconcile),
    Reconciler.STORAGE_PROFILE: Route(profiles.reconcile_profile),
    Reconciler.CONFIG: Route(profiles.reconcile_config),
}


class Controller:
    def __init__(self, ctx: Context, workers: int = 8) -> None:
        self.ctx = ctx
        self.workers = workers
        self.queue = WorkQueue()
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="reconcile")

    def observe(self, resource: Resource, event: dict[str, Any]) -> None:
        """Watch event -> cache -> the keys that must react."""
        body: dict[str, Any] = event["object"]
        meta = body.get("metadata") or {}
        if event.get("type") == "DELETED":
            self.ctx.cache.forget(resource, meta.get("namespace") or "", meta["name"])
        else:
            self.ctx.cache.store(resource, body)
        for key in routing.keys_for(self.ctx.cache, resource, body):
            self.queue.add(key)

    def registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        for resource in WATCHED:
            filters: dict[str, Any] = {"labels": {ann.APP_LABEL: ann.APP}} if resource == POD else {}
            group_version = (resource.group, resource.version) if resource.group else ("v1",)
            kopf.on.event(*group_version, resource.plural,  # type: ignore[call-arg]
                          registry=registry, id=f"observe-{resource.plural}", **filters)(self._handler(resource))
        return registry

    def _handler(self, resource: Resource) -> Callable[..., Any]:
        async def handler(event: dict[str, Any], **_: Any) -> None:
            self.observe(resource, event)
        return handler

    # -- the work ---------------------------------------------------------------------------

    async def _handle(self, key: Key) -> float | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, ROUTES[key.reconciler].reconcile, self.ctx,
                                          key.namespace, key.name)

    async def _fail(self, key: Key, error: PermanentError) -> None:
        fail = ROUTES[key.reconciler].fail
        if fail is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.pool, fail, self.ctx, key.namespace, key.name, error)

    async def run(self, *, stop_flag: asyncio.Event | None = None, ready_flag: asyncio.Event | None = None,
                  liveness_endpoint: str | None = None, connection: kopf.ConnectionInfo) -> None:
        registry = self.registry()
        kopf.on.login(registry=registry)(lambda **_: connection)
        settings = kopf.OperatorSettings()
        settings.posting.enabled = False      # events are ours to write, with CDI's reasons
        # scanning stays on: kopf notices CRDs applied after the controller started (RBAC: list/watch CRDs)
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        self.queue.add(Key(Reconciler.CONFIG, "", CONFIG_NAME))
        workers = [asyncio.create_task(self.queue.run_worker(self._handle, self._fail)) for _ in range(self.workers)]
        try:
            await kopf.operator(registry=registry, settings=settings, clusterwide=True, standalone=True,
                                stop_flag=stop_flag, ready_flag=ready_flag, liveness_endpoint=liveness_endpoint)
        finally:
            for task in workers:
                task.cancel()
            self.pool.shutdown(wait=False, cancel_futures=True)


def connection_from(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the ``kubernetes`` client's (kubeconfig or in-cluster)."""
    keys = configuration.api_key or {}
    token = keys.get("BearerToken") or keys.get("authorization") or ""  # the key's name varies by client version
    scheme, _, value = token.partition(" ") if " " in token else ("Bearer", "", token)
    return kopf.ConnectionInfo(
        server=configuration.host, ca_path=configuration.ssl_ca_cert, insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file, private_key_path=configuration.key_file,
        scheme=scheme if value else None, token=value or None)
