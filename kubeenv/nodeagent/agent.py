"""The node agent: one object that starts and stops the node's parts in the right order."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable

from kubeenv.nodeagent.backing import LoopDevices
from kubeenv.nodeagent.binder import Binder
from kubeenv.nodeagent.kube import make_client
from kubeenv.nodeagent.network import BridgeTaken, Network, pick_subnet
from kubeenv.nodeagent.node import NodeRegistration, node_labels
from kubeenv.nodeagent.podworker import NodeResources
from kubeenv.nodeagent.pods import PodManager
from kubeenv.nodeagent.storage import Provisioner

log = logging.getLogger("kubeenv.nodeagent")


class NodeAgent:
    """Stands in for kubelet on this host, for tests: see the package docstring.

    ``pod_subnet``/``bridge`` default to the first free ``10.244.N.0/24`` and ``kubeenvN``, so two
    agents (a test session and ``scripts/kube-up``) can run side by side. ``grace_cap`` caps
    terminationGracePeriodSeconds; ``bind_after`` is how long an unscheduled pod is left to a
    scheduler before this agent binds it itself.
    """

    def __init__(self, kubeconfig: Path, workdir: Path, node_name: str = "cdi-test-node", *,
                 pod_subnet: str | None = None, bridge: str | None = None, grace_cap: float = 3.0,
                 bind_after: float = 2.0, delete_node_on_stop: bool = True, default_storage_class: bool = True) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.workdir = Path(workdir).resolve()
        self.node_name = node_name
        self.grace_cap = grace_cap
        self.bind_after = bind_after
        self.delete_node_on_stop = delete_node_on_stop
        self.default_storage_class = default_storage_class
        self._requested = (pod_subnet, bridge)
        self._prefix = f"kubeenv-{hashlib.sha256(str(self.workdir).encode()).hexdigest()[:6]}-"
        self.network = Network(bridge or "kubeenv0", pod_subnet or "10.244.0.0/24", self._prefix)
        self.loops = LoopDevices(self.workdir)
        self._stops: list[Callable[[], Any]] = []
        self.pods: PodManager | None = None

    @property
    def node_ip(self) -> str:
        """The Node's InternalIP: the host as pods see it. Servers for pods must listen on it or 0.0.0.0."""
        return self.network.gateway

    @property
    def pod_subnet(self) -> str:
        return str(self.network.subnet)

    def start(self) -> NodeAgent:
        """Register the node and start serving it; on failure, undo what had started and raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        api = make_client(self.kubeconfig)
        self._stops.append(api.close)
        self.loops.detach_leftovers()
        self._setup_network()
        self._stops.append(self.network.teardown)
        self._stops.append(self.loops.detach_leftovers)
        node = NodeRegistration(api, self.node_name, self.node_ip, self.pod_subnet)
        node.start()
        self._stops.append(lambda: node.stop(delete=self.delete_node_on_stop))
        provisioner = Provisioner(api, self.node_name, self.workdir / "volumes",
                                  default_class=self.default_storage_class)
        self._stops.append(provisioner.stop)
        provisioner.start()
        resources = NodeResources(api, self.network, self.loops, self.node_ip, self.workdir / "pods", self.grace_cap)
        self.pods = PodManager(resources, self.node_name)
        self._stops.append(self.pods.stop)
        self.pods.start()
        binder = Binder(api, self.node_name, node_labels(self.node_name), after=self.bind_after)
        self._stops.append(binder.stop)
        binder.start()
        log.info("node %s ready: node IP %s, pods in %s", self.node_name, self.node_ip, self.pod_subnet)

    def _setup_network(self) -> None:
        """The requested subnet and bridge, or the first free pair, taken exclusively (agents may race)."""
        subnet, bridge = self._requested
        if subnet is not None and bridge is not None:
            self.network.setup()
            return
        for _ in range(20):
            picked_subnet, picked_bridge = pick_subnet()
            self.network = Network(bridge or picked_bridge, subnet or picked_subnet, self._prefix)
            try:
                self.network.setup(exclusive=True)
                return
            except BridgeTaken:
                continue
        raise RuntimeError("no free pod subnet and bridge after 20 tries")

    def stop(self) -> None:
        """Stop in reverse order: binder, pods (every process killed), storage, node, network. Idempotent."""
        while self._stops:
            step = self._stops.pop()
            try:
                step()
            except Exception:  # noqa: BLE001 - the remaining steps must still run
                log.exception("node agent: a stop step failed")

    def logs(self, namespace: str, name: str, container: str) -> str:
        """A running or finished pod's container output (latest run), for test failure messages."""
        worker = self.pods.worker(namespace, name) if self.pods else None
        return worker.logs(container) if worker else ""

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
