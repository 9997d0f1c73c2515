"""The pod network: one Linux bridge with host-local addresses, from Debian's CNI plugins.

``bridge`` (the gateway address on the bridge, masquerading outside the pod range, hairpin so a
pod reaches itself through a Service), ``portmap`` for hostPorts and ``firewall`` so forwarded
pod traffic is accepted whatever the host's FORWARD policy. IP allocations live in the node's own
directory, not ``/var/lib/cni``. Forwarding must be on; :func:`enable_forwarding` returns the old
value so the node can put it back.
"""

from __future__ import annotations

import json
import subprocess
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


ADMIN_CHAIN = "CNI-ADMIN"


def guard_service_range(service_cidr: str) -> None:
    """Refuse pod traffic to a Service IP that kube-proxy did not translate (yet).

    Service IPs are virtual: on a real network they lead nowhere and a connection fails. Here the
    default route leads to a proxy that intercepts every connection (a pod's TLS connection to
    ``10.9.9.9:8443`` gets a certificate), so a pod that dialled a Service kube-proxy had not
    programmed yet met that proxy instead of an error it would retry. The rule goes into the
    firewall plugin's ``CNI-ADMIN`` chain, which it evaluates before accepting pod traffic (rules
    put into FORWARD end up behind kube-proxy's and the plugin's); the teardown sweeps ``CNI-*``.
    """
    subprocess.run(["iptables", "-t", "filter", "-N", ADMIN_CHAIN], capture_output=True)  # may exist
    subprocess.run(["iptables", "-t", "filter", "-A", ADMIN_CHAIN, "-s", POD_CIDR, "-d", service_cidr,
                    "-j", "REJECT", "--reject-with", "icmp-port-unreachable"], check=True, capture_output=True)


def enable_forwarding() -> str:
    previous = IP_FORWARD.read_text().strip()
    IP_FORWARD.write_text("1\n")
    return previous


def restore_forwarding(previous: str) -> None:
    IP_FORWARD.write_text(previous + "\n")
