"""The whole test cluster: a control plane, the image registry with our images, and a real node.

    cluster = Cluster.start(Path("/tmp/cdi-py-kube"))   # scripts/kube-up does this, and the test session
    cluster.kubeconfig, cluster.kubectl, cluster.node.node_ip, cluster.images["importer"]
    cluster.stop()                                      # nothing left behind: cluster.node.leftovers() == []

The apiserver listens on all addresses (pods reach it through the ``kubernetes`` Service, which
kube-proxy routes to the host's address); images are built from our Dockerfile by
``scripts/images`` (cached by a hash of their inputs) and pushed to the registry, which keeps its
storage between runs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import kubeenv.images as image_builder
from kubeenv.binaries import ensure_binaries, ensure_node_binaries
from kubeenv.controlplane import ControlPlane
from kubeenv.node import Node, registry
from kubeenv.process import Process

STATE_FILE = "cluster.json"
UPLOADPROXY_NODEPORT = 31443


@dataclass
class Cluster:
    workdir: Path
    plane: ControlPlane
    node: Node | None
    """None for a control plane alone (``CDI_KUBE_NODE=0``: beside a cluster that has the node)."""
    registry: str = ""
    registry_process: Process | None = None
    images: dict[str, str] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def kubectl(self) -> Path:
        return self.plane.kubectl

    @classmethod
    def start(cls, workdir: Path, *, die_with_parent: bool = True, with_node: bool = True) -> Cluster:
        workdir = workdir.resolve()
        binaries = ensure_binaries()
        if not with_node:
            return cls(workdir, ControlPlane.start(workdir / "cluster", binaries=binaries,
                                                   die_with_parent=die_with_parent), None)
        addons = ensure_node_binaries()
        plane = ControlPlane.start(workdir / "cluster", binaries=binaries, bind_address="0.0.0.0",
                                   die_with_parent=die_with_parent)
        try:
            address, process = registry.start(workdir / "registry", workdir / "cluster" / "logs" / "registry.log",
                                              die_with_parent=die_with_parent)
        except BaseException:
            plane.stop()
            raise
        try:
            refs = image_builder.build_and_push(address, addons)
            node = Node.start(plane, workdir / "node", binaries, addons, refs, address, die_with_parent=die_with_parent)
        except BaseException:
            process.stop()
            plane.stop()
            raise
        return cls(workdir, plane, node, address, process, refs)

    def install_command(self, *, ca_out: Path, nodeport: int = UPLOADPROXY_NODEPORT,
                        controller_env: dict[str, str] | None = None) -> list[str]:
        """``python -m cdi.install`` for this cluster: our images from its registry, the upload proxy
        on a NodePort of the node's address, published in CDIConfig (what ``scripts/deploy`` runs)."""
        if self.node is None:
            raise RuntimeError("a cluster without a node runs no pods: nothing to install into")
        url = self.uploadproxy_url(nodeport)
        return [sys.executable, "-m", "cdi.install", "--kubeconfig", str(self.kubeconfig),
                *[f"--image={c}={self.images[c]}" for c in ("controller", "importer", "uploadserver")],
                f"--uploadproxy-nodeport={nodeport}", f"--uploadproxy-name={self.node.node_ip}",
                f"--uploadproxy-url={url}", f"--ca-out={ca_out}",
                *[f"--controller-env={k}={v}" for k, v in (controller_env or {}).items()]]

    def uploadproxy_url(self, nodeport: int = UPLOADPROXY_NODEPORT) -> str:
        assert self.node is not None
        return f"https://{self.node.node_ip}:{nodeport}"

    @property
    def processes(self) -> list[Process]:
        registry = [self.registry_process] if self.registry_process else []
        return [*self.plane.processes, *registry, *(self.node.processes if self.node else [])]

    def stop(self) -> None:
        """Node first (its pods need the apiserver to be told they stopped), then the rest."""
        if self.node:
            self.node.stop()
        if self.registry_process:
            self.registry_process.stop()
        self.plane.stop()

    def leftovers(self) -> list[str]:
        return self.node.leftovers() if self.node else []

    def dead(self) -> list[Process]:
        return [p for p in self.processes if not p.alive()]

    def save(self) -> Path:
        path = self.workdir / STATE_FILE
        data = {"workdir": str(self.workdir), "plane": str(self.plane.save()),
                "node": str(self.node.save()) if self.node else None, "registry": self.registry,
                "registry_process": self.registry_process.to_json() if self.registry_process else None,
                "images": self.images}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Cluster:
        data = json.loads(path.read_text())
        node = Node.load(Path(data["node"])) if data["node"] else None
        registry = Process.from_json(data["registry_process"]) if data["registry_process"] else None
        return cls(Path(data["workdir"]), ControlPlane.load(Path(data["plane"])), node, data["registry"], registry,
                   data["images"])
