"""Binding pods to this node when nothing else does, as the scheduler would.

The control plane may run kube-scheduler, or not. A pod for the default scheduler is bound here
only after it has waited unscheduled for ``after`` seconds without any scheduler having looked at
it (no PodScheduled condition), so a running scheduler always gets the first go and this binder
never fights it. A pod whose ``schedulerName`` is :data:`SCHEDULER_NAME` is bound at once.
``nodeSelector`` is honoured loosely: a pod is skipped only if it asks for a label this node has
with another value. For a claim of a WaitForFirstConsumer class, the binder first sets
``volume.kubernetes.io/selected-node`` on the claim, as the scheduler's volume binding does.
"""

from __future__ import annotations

import threading
import time

from kubernetes.client import ApiClient, ApiException, CoreV1Api, StorageV1Api

from kubeenv.nodeagent.kube import MERGE_PATCH, Informer, Obj, ignore_missing, log, raw
from kubeenv.nodeagent.storage import SELECTED_NODE

DEFAULT_SCHEDULERS = ("", "default-scheduler")
SCHEDULER_NAME = "kubeenv-node-agent"


class Binder:
    """Watches unscheduled pods and binds the ones a scheduler has left alone to this node."""

    def __init__(self, api: ApiClient, node_name: str, node_labels: dict[str, str], after: float = 2.0) -> None:
        self.core = CoreV1Api(api)
        self.storage = StorageV1Api(api)
        self.node_name = node_name
        self.node_labels = node_labels
        self.after = after
        self._first_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self.informer = Informer("unscheduled", self.core.list_pod_for_all_namespaces, self._on_event,
                                 field_selector="spec.nodeName=", resync=0.5)

    def start(self) -> None:
        self.informer.start().wait_synced()

    def stop(self) -> None:
        self.informer.stop()

    def _on_event(self, event: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if event == "DELETED" or not self._eligible(pod):
            with self._lock:
                self._first_seen.pop(uid, None)
            return
        with self._lock:
            first = self._first_seen.setdefault(uid, time.monotonic())
        if pod["spec"].get("schedulerName") == SCHEDULER_NAME or time.monotonic() - first >= self.after:
            self._bind(pod)

    def _eligible(self, pod: Obj) -> bool:
        spec, meta = pod["spec"], pod["metadata"]
        if spec.get("nodeName") or meta.get("deletionTimestamp") or \
                spec.get("schedulerName", "") not in (*DEFAULT_SCHEDULERS, SCHEDULER_NAME):
            return False
        if any(c.get("type") == "PodScheduled" for c in pod.get("status", {}).get("conditions") or []):
            return False
        selector = spec.get("nodeSelector") or {}
        return all(self.node_labels.get(k, v) == v for k, v in selector.items())

    def _bind(self, pod: Obj) -> None:
        meta = pod["metadata"]
        for volume in pod["spec"].get("volumes") or []:
            if "persistentVolumeClaim" in volume:
                self._select_node(meta["namespace"], volume["persistentVolumeClaim"]["claimName"])
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:
            raw(self.core.create_namespaced_pod_binding, meta["name"], meta["namespace"], body=body)
        except ApiException as error:
            if error.status in (404, 409):  # gone, or bound meanwhile (by us, or by a scheduler)
                return
            raise
        log.info("bound %s/%s to %s", meta["namespace"], meta["name"], self.node_name)

    def _select_node(self, namespace: str, claim_name: str) -> None:
        claim = ignore_missing(self.core.read_namespaced_persistent_volume_claim, claim_name, namespace)
        if claim is None or claim["spec"].get("volumeName"):
            return
        if claim["metadata"].get("annotations", {}).get(SELECTED_NODE):
            return
        cls = ignore_missing(self.storage.read_storage_class, claim["spec"].get("storageClassName") or "") \
            if claim["spec"].get("storageClassName") else None
        if cls is None or cls.get("volumeBindingMode") != "WaitForFirstConsumer":
            return
        raw(self.core.patch_namespaced_persistent_volume_claim, claim_name, namespace,
            body={"metadata": {"annotations": {SELECTED_NODE: self.node_name}}}, _content_type=MERGE_PATCH)
