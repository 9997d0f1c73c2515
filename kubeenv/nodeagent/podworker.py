"""One pod's life on this node, on a thread of its own, in kubelet's order.

Volumes (waiting for claims to bind), then the sandbox (network namespace, /etc/hosts), then the
init containers one by one, then the containers together, each under the restart policy. When
they are all done the sandbox is torn down (as kubelet does for finished pods) and the pod object
stays until it is deleted. On deletion every process gets SIGTERM, then SIGKILL after the grace
period (capped for tests); then the namespace, loop devices and pod directory are cleaned up and
the pod object is removed with grace period 0, as kubelet confirms a deletion.

Init containers with ``restartPolicy: Always`` (sidecars) are started and left running; they are
stopped once the regular containers are done.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client import ApiClient, ApiException, CoreV1Api

from kubeenv.nodeagent.backing import LoopDevices
from kubeenv.nodeagent.kube import Obj, confirm_pod_deleted, ignore_missing, log
from kubeenv.nodeagent.network import Network, PodNet
from kubeenv.nodeagent.runtime import ContainerRecord, ContainerRunner, PodContext
from kubeenv.nodeagent.status import Conditions, PodState, StatusWriter, pod_status
from kubeenv.nodeagent.volumes import NotReady, PodVolumes

VOLUME_RETRY = 1.0


@dataclass(frozen=True)
class NodeResources:
    """What the node offers every pod worker."""

    api: ApiClient
    network: Network
    loops: LoopDevices
    host_ip: str
    pods_dir: Path
    grace_cap: float


class PodWorker:
    """Runs one pod; ``update``/``gone``/``shutdown`` are called from other threads."""

    def __init__(self, node: NodeResources, pod: Obj) -> None:
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.core = CoreV1Api(node.api)
        self.dir = node.pods_dir / self.uid
        self.state = PodState(host_ip=node.host_ip)
        self.conditions = Conditions()
        self.stopping = threading.Event()
        self.delete_object = True
        self.ctx = PodContext(pod, self.dir, None, "", node.host_ip, {}, self._fetch, self._changed, node.grace_cap)
        self.writer = StatusWriter(node.api, meta["namespace"], meta["name"], self._render)
        self.volumes = PodVolumes(node.api, node.loops, self.dir, pod)
        self.net: PodNet | None = None
        self.runners: list[ContainerRunner] = []
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=f"pod-{meta['name']}", daemon=True)

    @property
    def policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy") or "Always")

    # -- called by the pod manager ----------------------------------------------------------

    def start(self) -> PodWorker:
        self._thread.start()
        return self

    def update(self, pod: Obj) -> None:
        self.pod = pod
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            # kubectl delete --grace-period=N shortens the grace period the spec gives
            self.ctx.grace_cap = min(self.ctx.grace_cap, float(meta.get("deletionGracePeriodSeconds", 30)))
            self._terminate(delete_object=True)

    def gone(self) -> None:
        """The pod object was removed without us: stop everything, write nothing more."""
        self.writer.gone = True
        self._terminate(delete_object=False)

    def shutdown(self) -> None:
        """The agent stops: kill the pod's processes, leave its object for the next agent."""
        self._terminate(delete_object=False)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _terminate(self, delete_object: bool) -> None:
        with self._lock:
            if self.stopping.is_set():
                return
            self.delete_object = delete_object
            self.stopping.set()
            runners = list(self.runners)
        for runner in runners:  # in parallel: each may wait out its grace period
            threading.Thread(target=runner.stop, args=(self.ctx.grace,), daemon=True).start()

    # -- the pod's life ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run_pod()
        except Exception:  # noqa: BLE001 - a broken pod must still be cleaned up
            log.exception("pod %s failed on this node", self.uid)
        finally:
            self._stop_runners()
            self._teardown_sandbox()
            self._changed()
            self.stopping.wait()
            self._cleanup()
            self.finished.set()

    def _run_pod(self) -> None:
        spec = self.pod["spec"]
        self.state.init = [ContainerRecord(c["name"], c.get("image", ""), {"waiting": {"reason": "PodInitializing"}})
                           for c in spec.get("initContainers") or []]
        self.state.containers = [ContainerRecord(c["name"], c.get("image", "")) for c in spec["containers"]]
        self._changed()
        if not self._prepare_volumes() or not self._create_sandbox():
            return
        if not self._run_init_containers():
            return
        self._run_containers()

    def _prepare_volumes(self) -> bool:
        """Retry until every volume is there, as kubelet's volume manager does; say why in the status."""
        reported = ""
        while not self.stopping.is_set():
            try:
                self.ctx.volumes = self.volumes.prepare()
                return True
            except Exception as error:  # noqa: BLE001 - NotReady, or an API or losetup failure: retried alike
                reason = f"waiting for volumes: {error}"
                if reason != reported:
                    if not isinstance(error, NotReady):
                        log.warning("pod %s: %s", self.uid, reason)
                    for record in self.state.containers:
                        record.state = {"waiting": {"reason": "ContainerCreating", "message": reason}}
                    self._changed()
                    reported = reason
                self.stopping.wait(VOLUME_RETRY)
        return False

    def _create_sandbox(self) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.pod["spec"].get("hostNetwork"):
            self.ctx.pod_ip = self.node.host_ip
        else:
            self.net = self.node.network.create(self.uid)
            self.ctx.netns = str(self.net.path)
            self.ctx.pod_ip = self.net.ip
        self.state.pod_ip = self.ctx.pod_ip
        hostname = self.pod["spec"].get("hostname") or self.pod["metadata"]["name"]
        (self.dir / "hostname").write_text(hostname + "\n")
        (self.dir / "hosts").write_text(
            "# Kubernetes-managed hosts file (kubeenv node agent).\n127.0.0.1\tlocalhost\n"
            f"::1\tlocalhost ip6-localhost ip6-loopback\n{self.ctx.pod_ip}\t{hostname}\n")
        self.state.sandbox = True
        self._changed()
        return not self.stopping.is_set()

    def _run_init_containers(self) -> bool:
        """One by one, each to success; under ``Never`` a failure fails the pod. Sidecars keep running."""
        init_policy = "Never" if self.policy == "Never" else "OnFailure"
        for index, container in enumerate(self.pod["spec"].get("initContainers") or []):
            sidecar = container.get("restartPolicy") == "Always"
            runner = self._runner(container, "Always" if sidecar else init_policy, index, init=True)
            if sidecar:
                runner.start()
                while not runner.wait_started(0.5):
                    if self.stopping.is_set():
                        return False
                continue
            exit = runner.run()
            if exit is None or self.stopping.is_set():
                return False
            if exit.code != 0:
                self.state.init_failed = True
                self.state.finished = True
                return False
        self.state.init_done = True
        self._changed()
        return True

    def _run_containers(self) -> None:
        runners = [self._runner(c, self.policy, i, init=False) for i, c in enumerate(self.pod["spec"]["containers"])]
        for runner in runners:
            runner.start()
        for runner in runners:
            while not runner.done():
                runner.join(1.0)
                self.writer.write()  # retries a status write that failed earlier
        self.state.finished = True

    def _runner(self, container: Obj, policy: str, index: int, init: bool) -> ContainerRunner:
        records = self.state.init if init else self.state.containers
        runner = ContainerRunner(self.ctx, container, policy, records[index])
        with self._lock:
            self.runners.append(runner)
            if self.stopping.is_set():
                runner.halt()
        return runner

    # -- the end ----------------------------------------------------------------------------

    def _stop_runners(self) -> None:
        """Sidecars and anything still running once the pod is done (or stopping)."""
        with self._lock:
            runners = list(self.runners)
        stoppers = [threading.Thread(target=r.stop, args=(self.ctx.grace,), daemon=True) for r in runners]
        for thread in stoppers:
            thread.start()
        for runner in runners:
            runner.join(self.ctx.grace + 5)

    def _teardown_sandbox(self) -> None:
        if self.net is not None:
            self.node.network.delete(self.net)
            self.net = None
        self.volumes.release()
        self.state.sandbox = False

    def _cleanup(self) -> None:
        if self.delete_object:
            try:
                confirm_pod_deleted(self.core, self.pod)
            except ApiException as error:
                log.warning("deleting pod %s: %s", self.uid, error.reason)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- plumbing ---------------------------------------------------------------------------

    def _render(self) -> Obj:
        return pod_status(self.policy, self.state, self.conditions)

    def _changed(self) -> None:
        self.writer.write()

    def _fetch(self, kind: str, name: str) -> Obj | None:
        namespace = self.pod["metadata"]["namespace"]
        read = self.core.read_namespaced_secret if kind == "Secret" else self.core.read_namespaced_config_map
        return ignore_missing(read, name, namespace)

    def logs(self, container: str) -> str:
        """The latest run's output, as ``kubectl logs`` would show it."""
        directory = self.dir / "containers" / container
        runs = sorted(directory.glob("*.log"), key=lambda p: int(p.stem)) if directory.is_dir() else []
        return runs[-1].read_text(errors="replace") if runs else ""

