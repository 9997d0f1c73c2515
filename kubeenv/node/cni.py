"""The pod network: one Linux bridge with host-local addresses, from Debian's CNI plugins.

``bridge`` (the gateway address on the bridge, masquerading outside the pod range, hairpin so a
pod reaches itself through a Service), ``portmap`` for hostPorts and ``firewall`` so forwarded
pod traffic is accepted whatever the host's FORWARD policy. IP allocations live in the node's own
directory, not ``/var/lib/cni``. Forwarding must be on; :func:`enable_forwarding` returns the old
value so the node can put it back.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from kubeenv.node.layout import BRIDGE, POD_CIDR, NodeLayout

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
NETWORK_NAME = "cdi-py"


def write_config(layout: NodeLayout) -> None:
    layout.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    layout.cni_ipam_dir.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(layout.cni_ipam_dir),
                      "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall"},
        ],
    }
    (layout.cni_conf_dir / "10-cdi-py.conflist").write_text(json.dumps(conflist, indent=2) + "\n")


def gateway() -> str:
    """The bridge's address: where pods reach the host (the first address of the pod range)."""
    return str(next(ipaddress.ip_network(POD_CIDR).hosts()))


def enable_forwarding() -> str:
    previous = IP_FORWARD.read_text().strip()
    IP_FORWARD.write_text("1\n")
    return previous


def restore_forwarding(previous: str) -> None:
    IP_FORWARD.write_text(previous + "\n")
