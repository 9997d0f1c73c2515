"""The real node under every e2e test: kubelet, containerd, kube-proxy, CoreDNS and the CSI driver.

Kept short, one check per part the product relies on:

* the Node is Ready at its InternalIP, and the CSI driver registered with kubelet;
* ``kubectl logs`` and ``kubectl exec`` work the normal way (the apiserver's kubelet client
  certificate, kubelet's webhook authorization), and kubelet's Events appear on the pod;
* a memory limit is enforced by the kernel (the container is OOMKilled);
* a pod reaches a Service by its DNS name (CoreDNS, kube-proxy), and the apiserver through the
  ``kubernetes`` Service with its ServiceAccount token;
* Filesystem and Block claims are provisioned by csi-driver-host-path, and what a pod writes is on
  the host where the driver keeps the volume;
* a VolumeSnapshot of a claim restores into a new claim with the same bytes.

Pods run our importer image (it has a shell and Python) with explicit commands.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeenv.cluster import Cluster
from kubeenv.node import Node, csi
from tests.kube.fixtures import make_namespace, wait_for


@pytest.fixture
def ns(core: client.CoreV1Api, node: Node) -> Iterator[str]:
    name = make_namespace(core, "node")
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def image(cluster: Cluster) -> str:
    return cluster.images["importer"]


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cluster.kubectl), "--kubeconfig", str(cluster.kubeconfig), *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def pod(name: str, image: str, script: str, *, restart: str = "Never", **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "command": ["sh", "-c", script]}
    container.update(extra.pop("container", {}))
    return {"metadata": {"name": name, "labels": extra.pop("labels", {})},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1, "containers": [container],
                     **extra}}


def claim(name: str, mode: str = "Filesystem", size: str = "32Mi", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": mode, "storageClassName": csi.CLASS_IMMEDIATE,
                     "resources": {"requests": {"storage": size}}, **spec}}


def phase_of(core: client.CoreV1Api, ns: str, name: str, *phases: str, timeout: float = 120) -> client.V1Pod:
    def reached() -> client.V1Pod | None:
        found = core.read_namespaced_pod(name, ns)
        return found if found.status.phase in phases else None
    return wait_for(f"pod {name} in {phases}", reached, timeout,
                    lambda: str(core.read_namespaced_pod(name, ns).status))


def log_of(core: client.CoreV1Api, ns: str, name: str) -> str:
    """A pod's log as text (the client's own decoding turns it into a bytes repr)."""
    return bytes(core.read_namespaced_pod_log(name, ns, _preload_content=False).data).decode()


def terminated(p: client.V1Pod) -> client.V1ContainerStateTerminated:
    return p.status.container_statuses[0].state.terminated


def test_node_is_ready_with_the_csi_driver(core: client.CoreV1Api, kube: client.ApiClient, node: Node) -> None:
    found = core.read_node(node.name)
    assert next(c for c in found.status.conditions if c.type == "Ready").status == "True"
    assert {"type": "InternalIP", "address": node.node_ip} in [a.to_dict() for a in found.status.addresses]
    assert found.status.node_info.container_runtime_version.startswith("containerd://")
    drivers = client.StorageV1Api(kube).read_csi_node(node.name).spec.drivers
    assert [d.name for d in drivers] == [csi.DRIVER]


def test_logs_exec_and_kubelet_events(cluster: Cluster, core: client.CoreV1Api, ns: str, image: str) -> None:
    core.create_namespaced_pod(ns, pod("chatty", image, "echo hello from $(hostname); sleep 600"))
    phase_of(core, ns, "chatty", "Running")
    logs = wait_for("the pod's log", lambda: kubectl(cluster, "logs", "-n", ns, "chatty").stdout)
    assert logs.strip() == "hello from chatty"
    executed = kubectl(cluster, "exec", "-n", ns, "chatty", "-i", "--", "sh", "-c", "tr a-z A-Z", stdin="piped in\n")
    assert executed.returncode == 0 and executed.stdout == "PIPED IN\n", executed.stderr
    reasons = wait_for("kubelet's events", lambda: {e.reason for e in core.list_namespaced_event(
        ns, field_selector="involvedObject.name=chatty").items} >= {"Scheduled", "Pulled", "Created", "Started"})
    assert reasons


def test_memory_limit_is_enforced(core: client.CoreV1Api, ns: str, image: str) -> None:
    hog = "python3 -c 'x = bytearray(200 << 20); print(len(x))'"
    core.create_namespaced_pod(ns, pod("hog", image, hog, container={
        "resources": {"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}}}))
    done = phase_of(core, ns, "hog", "Failed", "Succeeded")
    assert terminated(done).reason == "OOMKilled"


def test_service_by_dns_name_and_the_apiserver(core: client.CoreV1Api, ns: str, image: str) -> None:
    core.create_namespaced_pod(ns, pod("web", image, "mkdir -p /tmp/w && echo served > /tmp/w/index.html && "
                                       "cd /tmp/w && exec python3 -m http.server 8080", labels={"app": "web"}))
    core.create_namespaced_service(ns, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    fetch = ("import ssl, urllib.request, urllib.error; "
             f"print(urllib.request.urlopen('http://web.{ns}.svc.cluster.local/', timeout=5).read().decode().strip()); "
             "token = open('/var/run/secrets/kubernetes.io/serviceaccount/token').read(); "
             "ctx = ssl.create_default_context(cafile='/var/run/secrets/kubernetes.io/serviceaccount/ca.crt'); "
             "req = urllib.request.Request('https://kubernetes.default.svc/version', "
             "headers={'Authorization': 'Bearer ' + token}); "
             "print(__import__('json').load(urllib.request.urlopen(req, context=ctx))['gitVersion'])")
    phase_of(core, ns, "web", "Running")
    script = f'for i in $(seq 30); do python3 -c "{fetch}" && exit 0; sleep 1; done; exit 1'
    core.create_namespaced_pod(ns, pod("client", image, script))
    done = phase_of(core, ns, "client", "Succeeded", "Failed")
    out = log_of(core, ns, "client").split()
    assert done.status.phase == "Succeeded", out
    assert out[-2] == "served" and out[-1].startswith("v1.")


def test_filesystem_and_block_claims_from_the_csi_driver(core: client.CoreV1Api, ns: str, image: str,
                                                         node: Node) -> None:
    marker = uuid.uuid4().hex
    core.create_namespaced_persistent_volume_claim(ns, claim("files"))
    core.create_namespaced_persistent_volume_claim(ns, claim("device", mode="Block"))
    spec = pod("writer", image, f"echo {marker} > /data/marker && printf {marker} | dd of=/dev/disk conv=notrunc,fsync",
               securityContext={"fsGroup": 107}, container={
                   "volumeMounts": [{"name": "files", "mountPath": "/data"}],
                   "volumeDevices": [{"name": "device", "devicePath": "/dev/disk"}]},
               volumes=[{"name": "files", "persistentVolumeClaim": {"claimName": "files"}},
                        {"name": "device", "persistentVolumeClaim": {"claimName": "device"}}])
    core.create_namespaced_pod(ns, spec)
    done = phase_of(core, ns, "writer", "Succeeded", "Failed")
    assert done.status.phase == "Succeeded", log_of(core, ns, "writer")
    state = node.layout.csi_dir / "state"
    files, device = (core.read_persistent_volume(core.read_namespaced_persistent_volume_claim(n, ns).spec.volume_name)
                     for n in ("files", "device"))
    assert files.spec.csi.driver == csi.DRIVER and device.spec.volume_mode == "Block"
    assert (csi.volume_path(state, files.spec.csi.volume_handle) / "marker").read_text().strip() == marker
    with open(csi.volume_path(state, device.spec.csi.volume_handle), "rb") as raw:
        assert raw.read(len(marker)).decode() == marker


def test_volume_snapshot_restores_into_a_new_claim(cluster: Cluster, core: client.CoreV1Api, ns: str,
                                                   image: str, kube: client.ApiClient) -> None:
    marker = uuid.uuid4().hex
    core.create_namespaced_persistent_volume_claim(ns, claim("origin"))
    volume = [{"name": "v", "persistentVolumeClaim": {"claimName": "origin"}}]
    core.create_namespaced_pod(ns, pod("fill", image, f"echo {marker} > /data/marker", volumes=volume,
                                       securityContext={"fsGroup": 107},
                                       container={"volumeMounts": [{"name": "v", "mountPath": "/data"}]}))
    assert phase_of(core, ns, "fill", "Succeeded", "Failed").status.phase == "Succeeded"
    snapshots = client.CustomObjectsApi(kube)
    snapshots.create_namespaced_custom_object("snapshot.storage.k8s.io", "v1", ns, "volumesnapshots", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "snap"},
        "spec": {"volumeSnapshotClassName": csi.SNAPSHOT_CLASS,
                 "source": {"persistentVolumeClaimName": "origin"}}})

    def ready() -> bool:
        try:
            found = snapshots.get_namespaced_custom_object("snapshot.storage.k8s.io", "v1", ns, "volumesnapshots",
                                                           "snap")
        except ApiException:
            return False
        return bool((found.get("status") or {}).get("readyToUse"))
    wait_for("the snapshot ready to use", ready, 90)
    core.create_namespaced_persistent_volume_claim(ns, claim("restored", dataSource={
        "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}))
    restored = [{"name": "v", "persistentVolumeClaim": {"claimName": "restored"}}]
    core.create_namespaced_pod(ns, pod("read", image, "cat /data/marker", volumes=restored,
                                       securityContext={"fsGroup": 107},
                                       container={"volumeMounts": [{"name": "v", "mountPath": "/data"}]}))
    assert phase_of(core, ns, "read", "Succeeded", "Failed").status.phase == "Succeeded"
    assert log_of(core, ns, "read").strip() == marker
