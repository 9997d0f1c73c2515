"""kube-proxy in iptables mode (iptables-nft here) for Services: the ``kubernetes`` Service to the
apiserver, CoreDNS's, ours, and NodePorts on the node's address only.

``conntrack`` sizes set to 0 leave the host's sysctls alone, and NodePorts are bound to the node
IP alone so kube-proxy does not turn on ``route_localnet`` for loopback NodePorts.
``kube-proxy --cleanup`` on the way down removes its chains; iptables-nft leaves empty nft
tables behind, which the node's teardown deletes.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kubeenv.node.layout import POD_CIDR, NodeLayout


def write_config(layout: NodeLayout, kubeconfig: Path, node: str, node_ip: str) -> Path:
    path = layout.root / "kube-proxy-config.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": node,
        "nodePortAddresses": [f"{node_ip}/32"],
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        "iptables": {"syncPeriod": "10s", "minSyncPeriod": "0s"},
    }))
    return path


def argv(binary: Path, config: Path) -> list[str]:
    return [str(binary), f"--config={config}", "--v=1"]


def cleanup_argv(binary: Path) -> list[str]:
    return [str(binary), "--cleanup", "--v=0"]
