"""The node agent runs pods the way a kubelet would, against the real control plane.

Every pod here is a ``busybox`` pod with an explicit command, which the agent runs from the host's
filesystem inside the pod's own mount, network, UTS, IPC and PID namespaces. The checks are what
the CDI controller and importer will rely on: volumes of bound PVCs at their paths (Filesystem and
Block), the termination message, the environment from Secrets and ConfigMaps, the pod's own IP
and a route to servers on the host, restart policies, WaitForFirstConsumer binding, deletion, and
garbage collection by owner reference. Reading pods back through the client's models also checks
that the status the agent writes is complete enough for them.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeenv.nodeagent import CLASS_IMMEDIATE, CLASS_WFFC, SCHEDULER_NAME, NodeAgent
from kubeenv.nodeagent.network import NETNS_DIR

from tests.kube.fixtures import NODE, make_namespace, processes_with, wait_for  # noqa: F401 - used below


@pytest.fixture
def ns(core: client.CoreV1Api, node_agent: NodeAgent) -> Iterator[str]:
    name = make_namespace(core, "node")
    yield name
    core.delete_namespace(name)


def pod_body(name: str, script: str, *, restart: str = "Never", **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "busybox", "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {"metadata": {"name": name, **spec.pop("metadata", {})},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 2, "containers": [container], **spec}}


def claim_body(name: str, storage_class: str, size: str = "64Mi", mode: str = "Filesystem") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": mode,
                                                 "storageClassName": storage_class,
                                                 "resources": {"requests": {"storage": size}}}}


def finished(core: client.CoreV1Api, ns: str, name: str, agent: NodeAgent, timeout: float = 30) -> client.V1Pod:
    """The pod once Succeeded or Failed; on timeout the assertion carries the container's output."""
    def done() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, ns)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None
    try:
        pod: client.V1Pod = wait_for(f"pod {name} to finish", done, timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}; log: {agent.logs(ns, name, 'main')!r}") from None
    return pod


def message(pod: client.V1Pod, container: str = "main") -> str:
    status = next(s for s in pod.status.container_statuses if s.name == container)
    return str(status.state.terminated.message or "").strip()


def gone(core: client.CoreV1Api, ns: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, ns)
        return False
    except ApiException as error:
        if error.status == 404:
            return True
        raise


# -- the node --------------------------------------------------------------------------------


def test_node_is_ready_with_its_internal_ip(core: client.CoreV1Api, node_agent: NodeAgent,
                                            kube: client.ApiClient) -> None:
    node = core.read_node(NODE)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True"
    assert {"type": "InternalIP", "address": node_agent.node_ip} in [a.to_dict() for a in node.status.addresses]
    assert node.metadata.labels["kubernetes.io/hostname"] == NODE
    lease = client.CoordinationV1Api(kube).read_namespaced_lease(NODE, "kube-node-lease")
    assert lease.spec.holder_identity == NODE
    classes = {c.metadata.name: c.volume_binding_mode for c in client.StorageV1Api(kube).list_storage_class().items}
    assert classes[CLASS_IMMEDIATE] == "Immediate" and classes[CLASS_WFFC] == "WaitForFirstConsumer"


# -- pods and volumes ------------------------------------------------------------------------


def test_pod_writes_to_its_pvc_and_succeeds_with_a_termination_message(
        core: client.CoreV1Api, ns: str, node_agent: NodeAgent) -> None:
    core.create_namespaced_persistent_volume_claim(ns, claim_body("data", CLASS_IMMEDIATE))
    script = "echo hi > /data/out; echo done > /dev/termination-log"
    body = pod_body("writer", script, volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                    container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]})
    core.create_namespaced_pod(ns, body)
    pod = finished(core, ns, "writer", node_agent)
    assert pod.status.phase == "Succeeded"
    assert message(pod) == "done"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    claim = core.read_namespaced_persistent_volume_claim("data", ns)
    assert claim.status.phase == "Bound"  # bound by kube-controller-manager's PV binder
    volume = core.read_persistent_volume(claim.spec.volume_name)
    assert volume.spec.claim_ref.uid == claim.metadata.uid
    assert (Path(volume.spec.local.path) / "out").read_text() == "hi\n"


def test_pod_cannot_tell_it_is_not_in_a_pod(core: client.CoreV1Api, ns: str, node_agent: NodeAgent) -> None:
    """Own hostname, PID 1, own IP on eth0, and a root filesystem whose writes stay in the pod."""
    # "$$$$": Kubernetes turns "$$" in a command into "$" (its own $(VAR) escape), so the shell sees "$$"
    script = ('echo "$(hostname) $$$$ $(ip -o -4 addr show eth0 | awk \'{print $4}\')" > /dev/termination-log; '
              "touch /written-by-pod")
    core.create_namespaced_pod(ns, pod_body("inside", script))
    pod = finished(core, ns, "inside", node_agent)
    hostname, pid, address = message(pod).split()
    assert (hostname, pid) == ("inside", "1")
    assert address == f"{pod.status.pod_ip}/{ipaddress.ip_network(node_agent.pod_subnet).prefixlen}"
    assert ipaddress.ip_address(pod.status.pod_ip) in ipaddress.ip_network(node_agent.pod_subnet)
    assert not Path("/written-by-pod").exists()


def test_block_pvc_is_a_device_at_its_device_path(core: client.CoreV1Api, ns: str, node_agent: NodeAgent) -> None:
    core.create_namespaced_persistent_volume_claim(ns, claim_body("disk", CLASS_IMMEDIATE, "32Mi", "Block"))
    script = ("test -b /dev/xvda || exit 3; "
              "printf cdi-block-test | dd of=/dev/xvda bs=512 seek=8 conv=fsync 2>/dev/null; "
              "dd if=/dev/xvda bs=512 skip=8 count=1 2>/dev/null | head -c 14 > /dev/termination-log; "
              "blockdev --getsize64 /dev/xvda >> /dev/termination-log")
    body = pod_body("blocky", script, volumes=[{"name": "disk", "persistentVolumeClaim": {"claimName": "disk"}}],
                    container={"volumeDevices": [{"name": "disk", "devicePath": "/dev/xvda"}]})
    core.create_namespaced_pod(ns, body)
    pod = finished(core, ns, "blocky", node_agent)
    assert pod.status.phase == "Succeeded", message(pod)
    assert message(pod) == f"cdi-block-test{32 << 20}"
    volume = core.read_persistent_volume(core.read_namespaced_persistent_volume_claim("disk", ns).spec.volume_name)
    with open(volume.spec.local.path, "rb") as backing:
        backing.seek(8 * 512)
        assert backing.read(14) == b"cdi-block-test"


def test_environment_from_secrets_config_maps_and_the_pod(core: client.CoreV1Api, ns: str,
                                                          node_agent: NodeAgent) -> None:
    core.create_namespaced_secret(ns, {"metadata": {"name": "creds"}, "stringData": {"user": "alice"}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "conf"}, "data": {"url": "http://x", "mode": "fast"}})
    env = [{"name": "USER_NAME", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
           {"name": "URL", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "url"}}},
           {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "GREETING", "value": "hello $(USER_NAME)"}]
    script = 'echo "$USER_NAME $URL $POD $IP $GREETING $CONF_mode $(cat /init/done)" > /dev/termination-log'
    init = {"name": "init", "image": "busybox", "command": ["sh", "-c", "echo init-ran > /init/done"],
            "volumeMounts": [{"name": "scratch", "mountPath": "/init"}]}
    body = pod_body("env", script, initContainers=[init], volumes=[{"name": "scratch", "emptyDir": {}}],
                    container={"env": env, "envFrom": [{"configMapRef": {"name": "conf"}, "prefix": "CONF_"}],
                               "volumeMounts": [{"name": "scratch", "mountPath": "/init"}]})
    core.create_namespaced_pod(ns, body)
    pod = finished(core, ns, "env", node_agent)
    assert message(pod) == f"alice http://x env {pod.status.pod_ip} hello alice fast init-ran"
    assert pod.status.init_container_statuses[0].state.terminated.exit_code == 0


class HostServer:
    """An HTTP server on the host, on 0.0.0.0 so pods reach it at the node IP (127.0.0.1 would not do)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                body = outer.files.get(self.path, b"hello from the host to " + self.client_address[0].encode())
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.files = files
        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, agent: NodeAgent, path: str = "/") -> str:
        return f"http://{agent.node_ip}:{self.server.server_address[1]}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host_server() -> Iterator[HostServer]:
    server = HostServer({"/disk.raw": b"CDI-PY-BOOT" + bytes(1 << 20)})
    yield server
    server.stop()


def test_pod_reaches_a_host_server_through_the_node_ip(core: client.CoreV1Api, ns: str, node_agent: NodeAgent,
                                                       host_server: HostServer) -> None:
    fetch = f"import urllib.request; print(urllib.request.urlopen('{host_server.url(node_agent)}').read().decode())"
    core.create_namespaced_pod(ns, pod_body("client", f'python3 -c "{fetch}" > /dev/termination-log'))
    pod = finished(core, ns, "client", node_agent)
    assert pod.status.phase == "Succeeded", node_agent.logs(ns, "client", "main")
    assert message(pod) == f"hello from the host to {pod.status.pod_ip}"  # the pod's own address


def test_importer_image_runs_the_project_importer_into_a_pvc(core: client.CoreV1Api, ns: str,
                                                             node_agent: NodeAgent, host_server: HostServer) -> None:
    """An image without a command maps to a local one: cdi-py-importer runs ``python -m importer``."""
    core.create_namespaced_persistent_volume_claim(ns, claim_body("target", CLASS_IMMEDIATE))
    env = [{"name": "IMPORTER_SOURCE", "value": "http"},
           {"name": "IMPORTER_ENDPOINT", "value": host_server.url(node_agent, "/disk.raw")},
           {"name": "IMPORTER_IMAGE_SIZE", "value": "64Mi"}, {"name": "IMPORTER_METRICS_PORT", "value": "0"}]
    container = {"name": "main", "image": "registry.example/kubevirt/cdi-py-importer:v0.1", "env": env,
                 "volumeMounts": [{"name": "target", "mountPath": "/data"}]}
    core.create_namespaced_pod(ns, {"metadata": {"name": "importer"}, "spec": {
        "restartPolicy": "OnFailure", "containers": [container],
        "volumes": [{"name": "target", "persistentVolumeClaim": {"claimName": "target"}}]}})
    pod = finished(core, ns, "importer", node_agent, timeout=60)
    assert pod.status.phase == "Succeeded", message(pod)
    assert json.loads(message(pod))["message"] == "Import Complete"
    volume = core.read_persistent_volume(core.read_namespaced_persistent_volume_claim("target", ns).spec.volume_name)
    with open(Path(volume.spec.local.path) / "disk.img", "rb") as disk:
        assert disk.read(11) == b"CDI-PY-BOOT"


def test_on_failure_restarts_with_backoff_until_success(core: client.CoreV1Api, ns: str,
                                                        node_agent: NodeAgent) -> None:
    script = ("n=$(( $(cat /state/n 2>/dev/null || echo 0) + 1 )); echo $n > /state/n; "
              "echo attempt-$n > /dev/termination-log; [ $n -ge 3 ]")
    body = pod_body("flaky", script, restart="OnFailure", volumes=[{"name": "state", "emptyDir": {}}],
                    container={"volumeMounts": [{"name": "state", "mountPath": "/state"}]})
    core.create_namespaced_pod(ns, body)
    pod = finished(core, ns, "flaky", node_agent)
    status = pod.status.container_statuses[0]
    assert pod.status.phase == "Succeeded"
    assert status.restart_count == 2
    assert message(pod) == "attempt-3"
    assert (status.last_state.terminated.exit_code, status.last_state.terminated.message.strip()) == (1, "attempt-2")


def test_never_reports_failure_with_exit_code(core: client.CoreV1Api, ns: str, node_agent: NodeAgent) -> None:
    core.create_namespaced_pod(ns, pod_body("broken", "echo 'oops' > /dev/termination-log; exit 7"))
    pod = finished(core, ns, "broken", node_agent)
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.exit_code, terminated.reason, message(pod)) == ("Failed", 7, "Error", "oops")
    assert pod.status.container_statuses[0].restart_count == 0


def test_wait_for_first_consumer_claim_binds_when_a_pod_uses_it(core: client.CoreV1Api, ns: str,
                                                                 node_agent: NodeAgent) -> None:
    core.create_namespaced_persistent_volume_claim(ns, claim_body("later", CLASS_WFFC))
    time.sleep(3)
    claim = core.read_namespaced_persistent_volume_claim("later", ns)
    assert (claim.status.phase, claim.spec.volume_name) == ("Pending", None)
    body = pod_body("consumer", "ls -d /data > /dev/termination-log",
                    volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "later"}}],
                    container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]})
    core.create_namespaced_pod(ns, body)
    pod = finished(core, ns, "consumer", node_agent)
    assert (pod.status.phase, message(pod)) == ("Succeeded", "/data")
    claim = core.read_namespaced_persistent_volume_claim("later", ns)
    assert claim.status.phase == "Bound"
    assert claim.metadata.annotations["volume.kubernetes.io/selected-node"] == NODE


def test_agent_binds_pods_itself_and_selects_the_node_for_their_claims(core: client.CoreV1Api, ns: str,
                                                                       node_agent: NodeAgent) -> None:
    """What the agent does when no scheduler runs, asked for by schedulerName so the scheduler keeps out."""
    core.create_namespaced_persistent_volume_claim(ns, claim_body("mine", CLASS_WFFC))
    body = pod_body("unscheduled", "echo bound > /dev/termination-log", schedulerName=SCHEDULER_NAME,
                    volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "mine"}}],
                    container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]})
    core.create_namespaced_pod(ns, body)
    pod = finished(core, ns, "unscheduled", node_agent)
    assert (pod.spec.node_name, pod.status.phase, message(pod)) == (NODE, "Succeeded", "bound")
    claim = core.read_namespaced_persistent_volume_claim("mine", ns)
    assert claim.metadata.annotations["volume.kubernetes.io/selected-node"] == NODE


def test_readiness_probe_gates_ready(core: client.CoreV1Api, ns: str, node_agent: NodeAgent) -> None:
    """Ready only once the HTTP readiness probe passes: the server starts a second after the container."""
    probe = {"httpGet": {"path": "/", "port": "web"}, "periodSeconds": 1}
    body = pod_body("web", "sleep 1; exec python3 -m http.server 8080", restart="Always",
                    container={"ports": [{"name": "web", "containerPort": 8080}], "readinessProbe": probe})
    core.create_namespaced_pod(ns, body)
    wait_for("the pod to run", lambda: core.read_namespaced_pod("web", ns).status.phase == "Running")
    assert not core.read_namespaced_pod("web", ns).status.container_statuses[0].ready

    def ready() -> bool:
        conditions = core.read_namespaced_pod("web", ns).status.conditions
        return any(c.type == "Ready" and c.status == "True" for c in conditions)
    wait_for("the readiness probe to pass", ready, 15)


def test_deleting_a_pod_kills_its_processes(core: client.CoreV1Api, ns: str, node_agent: NodeAgent) -> None:
    marker = f"3{uuid.uuid4().int % 10**6:06d}"  # a sleep length no other process uses
    core.create_namespaced_pod(ns, pod_body("sleeper", f"sleep {marker} & sleep {marker}", restart="Always"))
    wait_for("the pod to run", lambda: core.read_namespaced_pod("sleeper", ns).status.phase == "Running")
    wait_for("both sleeps to start", lambda: len(processes_with(marker)) >= 2, 10)
    pod = core.read_namespaced_pod("sleeper", ns)
    assert pod.status.container_statuses[0].ready and pod.status.container_statuses[0].state.running
    core.delete_namespaced_pod("sleeper", ns)  # the default grace period; sh as PID 1 ignores SIGTERM
    wait_for("the pod object to go", lambda: gone(core, ns, "sleeper"), 20)
    assert processes_with(marker) == []
    assert not (NETNS_DIR / f"{node_agent.network.prefix}{pod.metadata.uid}").exists()


def test_garbage_collector_removes_a_pod_with_its_owner(core: client.CoreV1Api, ns: str,
                                                        node_agent: NodeAgent) -> None:
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_pod(ns, pod_body("owned", "exec sleep 600", restart="Always",
                                            metadata={"ownerReferences": [reference]}))
    wait_for("the pod to run", lambda: core.read_namespaced_pod("owned", ns).status.phase == "Running")
    core.delete_namespaced_config_map("owner", ns)
    wait_for("the garbage collector and the node to remove the pod", lambda: gone(core, ns, "owned"), 40)
