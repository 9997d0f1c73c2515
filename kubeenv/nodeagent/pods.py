"""Which pods run here: a watch on pods bound to this node, one :class:`PodWorker` per pod.

A pod that is already finished when the agent first sees it (say, from before an agent restart)
is not run again; a pod marked for deletion that no worker owns is confirmed deleted at once.
"""

from __future__ import annotations

import threading

from kubernetes.client import CoreV1Api

from kubeenv.nodeagent.kube import Informer, Obj, confirm_pod_deleted
from kubeenv.nodeagent.podworker import NodeResources, PodWorker

TERMINAL = ("Succeeded", "Failed")


class PodManager:
    """Dispatches watch events on this node's pods to their workers."""

    def __init__(self, node: NodeResources, node_name: str) -> None:
        self.node = node
        self.core = CoreV1Api(node.api)
        self.workers: dict[str, PodWorker] = {}
        self._done: set[str] = set()
        self._lock = threading.Lock()
        self.informer = Informer("pods", self.core.list_pod_for_all_namespaces, self._on_event,
                                 field_selector=f"spec.nodeName={node_name}", resync=5)

    def start(self) -> None:
        self.informer.start().wait_synced()

    def stop(self) -> None:
        """Stop watching, then kill every pod's processes (their objects stay) and wait for the cleanup."""
        self.informer.stop()
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(timeout=self.node.grace_cap + 15)

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        with self._lock:
            for worker in self.workers.values():
                meta = worker.pod["metadata"]
                if (meta["namespace"], meta["name"]) == (namespace, name):
                    return worker
        return None

    def _on_event(self, event: str, pod: Obj) -> None:
        self._reap()
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self.workers.get(uid)
            if worker is None and event != "DELETED" and uid not in self._done:
                worker = self._adopt(pod)
                if worker is None:
                    return
                self.workers[uid] = worker.start()
                return
        if worker is None:
            return
        if event == "DELETED":
            worker.gone()
        else:
            worker.update(pod)

    def _adopt(self, pod: Obj) -> PodWorker | None:
        """A worker for a pod new to us, unless it is finished or being deleted already."""
        meta = pod["metadata"]
        deleting = bool(meta.get("deletionTimestamp"))
        if pod.get("status", {}).get("phase") in TERMINAL or deleting:
            if deleting:
                confirm_pod_deleted(self.core, pod)
            self._done.add(meta["uid"])
            return None
        return PodWorker(self.node, pod)

    def _reap(self) -> None:
        with self._lock:
            for uid in [uid for uid, worker in self.workers.items() if worker.finished.is_set()]:
                del self.workers[uid]
                self._done.add(uid)
