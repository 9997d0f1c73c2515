"""Where a node keeps its state: one directory per node, so stopping it can find everything.

Every path a node component writes under lives below ``root`` (kubelet's root directory, the
containerd state, the CNI configuration and IP allocations, logs), except the containerd content
store, which is a cache shared by later nodes (``images``) so that a warm machine pulls nothing.
Unix socket paths are limited to 107 bytes: keep ``root`` short (``/tmp/cdi-node-XXXX``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "cdi-test-node"
POD_CIDR = "10.244.0.0/24"
DNS_SERVICE_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE = "cdipy0"
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248


@dataclass(frozen=True)
class NodeLayout:
    """The node's directories and sockets, derived from one root."""

    root: Path
    images: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def registry_hosts(self) -> Path:
        """containerd's ``certs.d``: one ``<host:port>/hosts.toml`` per registry it may pull from."""
        return self.root / "containerd" / "certs.d"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def csi_dir(self) -> Path:
        return self.root / "csi"
