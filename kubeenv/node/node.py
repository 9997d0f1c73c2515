"""A real single-node Kubernetes node on this host: containerd + runc with Debian's CNI plugins,
kubelet, kube-proxy, CoreDNS, and csi-driver-host-path, joined to a :class:`ControlPlane`.

    plane = ControlPlane.start(workdir, bind_address="0.0.0.0")   # pods must reach the apiserver
    node = Node.start(plane, Path("/tmp/cdi-node-x"), images)     # images: kubeenv.images refs
    ...                                                            # pods reach the host at node.node_ip
    node.stop()                                                    # and node.leftovers() == []

Start order: the image registry (our images, the pause image), containerd, kubelet (registers
the Node), kube-proxy, then the cluster objects (kubelet API access, CoreDNS, the CSI driver's
StorageClasses). Stop order is the reverse, then :mod:`kubeenv.node.teardown` clears what
processes leave behind. The node is recorded as JSON (:meth:`save`/:meth:`load`) so
``scripts/kube-down`` can stop one that ``scripts/kube-up`` started.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubeenv.binaries import Binaries
from kubeenv.controlplane import SERVICE_CIDR, ControlPlane, primary_ip
from kubeenv.kubeconfig import write_kubeconfig
from kubeenv.node import addons, cni, containerd, csi, kubelet, proxy, teardown
from kubeenv.node.layout import NODE_NAME, NodeLayout
from kubeenv.pki import issue_node_certs
from kubeenv.process import Process, wait_for_components

DEFAULT_IMAGE_CACHE = Path("/var/cache/cdi-py/containerd")
STATE_FILE = "node.json"


class NodeError(RuntimeError):
    """A node component failed to start; the message carries its log tail."""


@dataclass
class Node:
    """A running node: its name and address, where its state is, and its processes."""

    layout: NodeLayout
    name: str
    node_ip: str
    kubectl: Path
    kubeconfig: Path
    crictl: Path
    kube_proxy: Path
    forwarding_before: str
    netns_before: list[str]
    nft_before: list[str]
    processes: list[Process] = field(default_factory=list)

    @classmethod
    def start(cls, plane: ControlPlane, root: Path, binaries: Binaries, addons_dir: Path, images: dict[str, str],
              registry: str, *, die_with_parent: bool = True, image_cache: Path = DEFAULT_IMAGE_CACHE,
              timeout: float = 180.0) -> Node:
        """Start every component; return once the Node is Ready and CoreDNS answers."""
        layout = NodeLayout(root.resolve(), image_cache)
        layout.logs.mkdir(parents=True, exist_ok=True)
        node = cls(layout, NODE_NAME, primary_ip(), plane.kubectl, plane.kubeconfig,
                   binaries.path("crictl"), binaries.path("kube-proxy"), cni.enable_forwarding(),
                   teardown.pod_netns(set()), sorted(teardown.nft_tables()))
        try:
            node._boot(plane, binaries, addons_dir, images, registry, die_with_parent, time.monotonic() + timeout)
        except BaseException:
            node.stop()
            raise
        return node

    def _boot(self, plane: ControlPlane, binaries: Binaries, addons_dir: Path, images: dict[str, str],
              registry: str, die_with_parent: bool, deadline: float) -> None:
        layout = self.layout
        containerd.write_config(layout, images["pause"], registry)
        cni.write_config(layout)
        cni.guard_service_range(SERVICE_CIDR)
        self._spawn("containerd", containerd.argv(layout), die_with_parent)
        self._wait(layout.containerd_socket.exists, "containerd's socket", deadline)
        certs = issue_node_certs(layout.pki, plane.pki_pair("ca"), self.name, (self.node_ip,))
        kubelet_config = write_kubeconfig(layout.root / "kubelet.kubeconfig", plane.server, plane.ca, certs.client,
                                          f"system:node:{self.name}")
        kubelet.write_config(layout, plane.ca, certs)
        self._spawn("kubelet", kubelet.argv(binaries.path("kubelet"), layout, kubelet_config, self.name,
                                            self.node_ip), die_with_parent)
        proxy_kubeconfig = write_kubeconfig(layout.root / "kube-proxy.kubeconfig", plane.server, plane.ca,
                                            plane.pki_pair("kube-proxy"), "system:kube-proxy")
        proxy_config = proxy.write_config(layout, proxy_kubeconfig, self.name, self.node_ip)
        self._spawn("kube-proxy", proxy.argv(binaries.path("kube-proxy"), proxy_config), die_with_parent)
        self.apply(addons.kubelet_api_access() + addons.coredns(images["coredns"]) + csi.crds(addons_dir))
        self._wait(self._ready, f"node {self.name} Ready", deadline)
        self._start_csi(addons_dir, plane.kubeconfig, die_with_parent, deadline)
        self._wait(lambda: self._kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns",
                                         "--timeout=5s").returncode == 0, "CoreDNS ready", deadline)

    def _start_csi(self, addons_dir: Path, kubeconfig: Path, die_with_parent: bool, deadline: float) -> None:
        self.layout.csi_dir.mkdir(parents=True, exist_ok=True)
        csi.socket(self.layout).parent.mkdir(parents=True, exist_ok=True)
        for name, argv in csi.commands(addons_dir, self.layout, self.name, kubeconfig).items():
            self._spawn(name, argv, die_with_parent)
            if name == "hostpathplugin":
                self._wait(csi.socket(self.layout).exists, "the CSI driver's socket", deadline)
        self._wait(lambda: self._kubectl("get", "csinode", self.name, "-o",
                                         "jsonpath={.spec.drivers[*].name}").stdout.strip() == csi.DRIVER,
                   "the CSI driver registered with kubelet", deadline)
        self.apply(csi.objects())

    # -- using it ------------------------------------------------------------------------------

    def apply(self, manifests: list[dict[str, Any]]) -> None:
        """``kubectl apply`` as the admin, for the node's own cluster objects."""
        proc = self._kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                             stdin=yaml.safe_dump_all(manifests))
        if proc.returncode != 0:
            raise NodeError(f"kubectl apply failed: {proc.stderr}")

    def dead(self) -> list[Process]:
        return [p for p in self.processes if not p.alive()]

    def leftovers(self) -> list[str]:
        """What of this node is still on the host (empty after :meth:`stop`)."""
        return teardown.leftovers(self.layout, set(self.netns_before), set(self.nft_before))

    # -- stopping ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop kubelet, every pod sandbox (through CRI, so CNI releases the network), kube-proxy
        (and its rules), containerd, then clear whatever is left."""
        by_name = {p.name: p for p in self.processes}
        if "kubelet" in by_name:
            by_name["kubelet"].stop()
        if "containerd" in by_name and by_name["containerd"].alive():
            self._crictl("rmp", "--all", "--force")
        for process in reversed(self.processes):
            process.stop()
        subprocess.run(proxy.cleanup_argv(self.kube_proxy), capture_output=True, timeout=60)
        self._clear_host()
        cni.restore_forwarding(self.forwarding_before)

    def _clear_host(self) -> None:
        layout = self.layout
        teardown.kill_processes(layout.root)
        # kubelet's own loop device over a Block volume's shows its backing path only while the
        # volume's mounts exist: detach before unmounting, then again for what was held
        teardown.detach_loops(layout.root)
        teardown.unmount_all(layout.root, layout.images)
        teardown.remove_netns(teardown.pod_netns(set(self.netns_before)))
        teardown.detach_loops(layout.root)
        teardown.remove_bridge()
        teardown.remove_iptables_chains()
        teardown.remove_nft_tables(teardown.nft_tables() - set(self.nft_before))
        teardown.remove_cgroups()

    # -- state for kube-up / kube-down ---------------------------------------------------------

    def save(self, path: Path | None = None) -> Path:
        path = path or self.layout.root / STATE_FILE
        data = {"root": str(self.layout.root), "images": str(self.layout.images), "name": self.name,
                "node_ip": self.node_ip, "kubectl": str(self.kubectl), "kubeconfig": str(self.kubeconfig),
                "crictl": str(self.crictl), "kube_proxy": str(self.kube_proxy),
                "forwarding_before": self.forwarding_before, "netns_before": self.netns_before,
                "nft_before": self.nft_before, "processes": [p.to_json() for p in self.processes]}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Node:
        data = json.loads(path.read_text())
        return cls(NodeLayout(Path(data["root"]), Path(data["images"])), data["name"], data["node_ip"],
                   Path(data["kubectl"]), Path(data["kubeconfig"]), Path(data["crictl"]), Path(data["kube_proxy"]),
                   data["forwarding_before"], data["netns_before"], data["nft_before"],
                   [Process.from_json(p) for p in data["processes"]])

    # -- plumbing ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], die_with_parent: bool) -> Process:
        process = Process.spawn(name, argv, self.layout.logs / f"{name}.log", die_with_parent=die_with_parent,
                                cwd=self.layout.root)
        self.processes.append(process)
        return process

    def _kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                              capture_output=True, text=True, timeout=120)

    def _crictl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.crictl), "--runtime-endpoint", f"unix://{self.layout.containerd_socket}",
                               "--timeout", "60s", *args], capture_output=True, text=True, timeout=300)

    def _ready(self) -> bool:
        proc = self._kubectl("get", "node", self.name, "-o",
                             "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
        return proc.returncode == 0 and proc.stdout.strip() == "True"

    def _wait(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        wait_for_components(ready, what, deadline, self.processes, NodeError, interval=0.5)
