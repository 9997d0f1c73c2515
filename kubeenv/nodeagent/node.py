"""The Node object: registered on start, kept Ready by a heartbeat, deleted on stop.

kube-controller-manager's node lifecycle controller marks a node Unknown (and taints it, and in
time evicts its pods) when neither its Ready condition nor its Lease in ``kube-node-lease`` has
been renewed within the grace period, so both are renewed every ``interval`` seconds, as kubelet
does. The capacity reported is generous on purpose: a test node must never make the scheduler
refuse a pod for want of CPU or memory.
"""

from __future__ import annotations

import os
import platform
import shutil
import threading
import uuid

from kubernetes.client import ApiClient, ApiException, CoordinationV1Api, CoreV1Api, VersionApi

from kubeenv.nodeagent.kube import MERGE_PATCH, Obj, ignore_missing, log, now_micro, now_rfc3339, raw

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40


def arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def node_labels(name: str) -> dict[str, str]:
    """The well-known labels kubelet sets, which nodeSelectors and affinities use."""
    return {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch(),
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": arch()}


def _memory_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


def capacity() -> dict[str, str]:
    cpus = max(os.cpu_count() or 1, 32)
    memory = max(_memory_kib(), 64 << 20)
    disk = max(shutil.disk_usage("/").total, 1 << 40)
    return {"cpu": str(cpus), "memory": f"{memory}Ki", "pods": "250", "ephemeral-storage": str(disk),
            "hugepages-2Mi": "0", "hugepages-1Gi": "0"}


def conditions(ready: bool, since: str) -> list[Obj]:
    """The node conditions kubelet posts; ``since`` is when readiness last changed."""
    now = now_rfc3339()

    def condition(kind: str, status: str, reason: str, message: str) -> Obj:
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": since}
    return [
        condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubeenv node agent"),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubeenv node agent"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubeenv node agent"),
        condition("Ready", "True", "KubeletReady", "kubeenv node agent is posting ready status") if ready else
        condition("Ready", "False", "KubeletNotReady", "kubeenv node agent stopped"),
    ]


class NodeRegistration:
    """Registers the Node with its InternalIP and keeps its Ready condition and Lease fresh."""

    def __init__(self, api: ApiClient, name: str, internal_ip: str, pod_cidr: str, interval: float = 10.0) -> None:
        self.core = CoreV1Api(api)
        self.leases = CoordinationV1Api(api)
        self.version = VersionApi(api)
        self.name = name
        self.internal_ip = internal_ip
        self.pod_cidr = pod_cidr
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="node-heartbeat", daemon=True)
        self._uid = ""
        self._version = ""
        self._since: tuple[bool, str] = (False, now_rfc3339())

    def start(self) -> None:
        self._register()
        self._post_status(ready=True)
        self._renew_lease()
        self._thread.start()

    def stop(self, delete: bool = True) -> None:
        """Stop the heartbeat, then delete the Node (its Lease goes with it by owner reference)."""
        self._stop.set()
        self._thread.join(timeout=15)
        if delete:
            ignore_missing(self.core.delete_node, self.name)
            ignore_missing(self.leases.delete_namespaced_lease, self.name, LEASE_NAMESPACE)
        else:
            self._post_status(ready=False)

    def _register(self) -> None:
        labels = node_labels(self.name)
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": labels},
                "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]}}
        try:
            node = raw(self.core.create_node, body=body)
        except ApiException as error:
            if error.status != 409:
                raise
            node = raw(self.core.patch_node, self.name, body={"metadata": {"labels": labels}},
                       _content_type=MERGE_PATCH)
        self._uid = node["metadata"]["uid"]

    def _status(self, ready: bool) -> Obj:
        if not self._version:
            self._version = raw(self.version.get_code).get("gitVersion", "v0.0.0")
        if self._since[0] != ready:
            self._since = (ready, now_rfc3339())
        kernel, version = platform.release(), self._version
        return {"status": {
            "capacity": capacity(), "allocatable": capacity(), "conditions": conditions(ready, self._since[1]),
            "addresses": [{"type": "InternalIP", "address": self.internal_ip},
                          {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.name).hex,
                         "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                         "bootID": _boot_id(), "kernelVersion": kernel, "osImage": _os_image(),
                         "containerRuntimeVersion": "kubeenv://0.1", "kubeletVersion": version,
                         "kubeProxyVersion": version, "operatingSystem": "linux", "architecture": arch()},
        }}

    def _post_status(self, ready: bool) -> None:
        raw(self.core.patch_node_status, self.name, body=self._status(ready), _content_type=MERGE_PATCH)

    def _renew_lease(self) -> None:
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()}
        try:
            raw(self.leases.patch_namespaced_lease, self.name, LEASE_NAMESPACE, body={"spec": spec},
                _content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._uid}
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE, "ownerReferences": [owner]},
                    "spec": spec}
            raw(self.leases.create_namespaced_lease, LEASE_NAMESPACE, body=body)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._renew_lease()
                self._post_status(ready=True)
            except Exception as error:  # noqa: BLE001 - the next beat tries again
                log.warning("node heartbeat failed: %s", error)
                if isinstance(error, ApiException) and error.status == 404:
                    self._register()


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return ""


def _os_image() -> str:
    try:
        with open("/etc/os-release") as file:
            for line in file:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"
