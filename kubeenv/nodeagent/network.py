"""Pod networking: a host bridge, and per pod a network namespace joined to it by a veth pair.

The bridge holds the first address of the pod subnet (e.g. ``10.244.0.1/24``); that address is the
Node's InternalIP, so a pod reaches servers the tests start on the host through it. Those servers
must listen on ``0.0.0.0`` (or on the node IP): ``127.0.0.1`` inside a pod is the pod's own
loopback, exactly as in a real cluster. Pods reach each other over the bridge. There is no NAT, so
pods reach nothing beyond the host (no outside network is needed by the tests).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip``; the iproute2 command line is the one interface every kernel here agrees on."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def used_subnets() -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """IPv4 subnets already configured on this host, so a new agent picks a free pod subnet."""
    subnets: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for link in json.loads(ip("-j", "addr") or "[]"):
        for address in link.get("addr_info", []):
            if address.get("family") == "inet":
                subnets.add(ipaddress.ip_network(f"{address['local']}/{address['prefixlen']}", strict=False))
    return subnets


def pick_subnet(base: str = "10.244.0.0/16") -> tuple[str, str]:
    """The first /24 of ``base`` that no interface uses, and a bridge name numbered after it."""
    used = used_subnets()
    links = {link["ifname"] for link in json.loads(ip("-j", "link") or "[]")}
    network = ipaddress.IPv4Network(base)
    for index, subnet in enumerate(network.subnets(new_prefix=24)):
        if f"kubeenv{index}" in links:
            continue
        if not any(isinstance(other, ipaddress.IPv4Network) and subnet.overlaps(other) for other in used):
            return str(subnet), f"kubeenv{index}"
    raise RuntimeError(f"no free /24 left in {base}")


class BridgeTaken(RuntimeError):
    """Another agent created this bridge between our look and our create."""


@dataclass(frozen=True)
class PodNet:
    """One pod's network: its namespace (a name under /run/netns) and its address."""

    netns: str
    ip: str
    host_veth: str

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.netns


class Network:
    """The bridge and the address pool; namespaces are named ``<prefix><pod uid>`` to find leftovers."""

    def __init__(self, bridge: str, subnet: str, prefix: str) -> None:
        self.bridge = bridge
        self.subnet = ipaddress.ip_network(subnet)
        self.prefix = prefix
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self._free = [str(h) for h in hosts[1:]]
        self._lock = threading.Lock()

    # -- the bridge -------------------------------------------------------------------------

    def setup(self, exclusive: bool = False) -> None:
        """Create the bridge with the gateway address, after clearing any leftovers.

        An existing bridge of that name is adopted (a crashed run's), unless ``exclusive``: then
        :class:`BridgeTaken` says another agent got there first and the caller picks again.
        """
        self.cleanup_leftovers()
        if ip("link", "show", self.bridge, check=False) == "":
            try:
                ip("link", "add", self.bridge, "type", "bridge")
            except RuntimeError as error:
                if exclusive and "exists" in str(error):
                    raise BridgeTaken(self.bridge) from error
                raise
        elif exclusive:
            raise BridgeTaken(self.bridge)
        ip("addr", "replace", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def teardown(self) -> None:
        self.cleanup_leftovers()
        ip("link", "del", self.bridge, check=False)

    def cleanup_leftovers(self) -> None:
        """Delete namespaces with our prefix (a crashed run's), killing what still runs in them."""
        for path in NETNS_DIR.glob(f"{self.prefix}*") if NETNS_DIR.is_dir() else []:
            kill_netns_processes(path)
            ip("netns", "del", path.name, check=False)

    # -- pods -------------------------------------------------------------------------------

    def create(self, pod_uid: str) -> PodNet:
        """A namespace with ``lo`` up and ``eth0`` on the bridge, default route via the gateway."""
        name = f"{self.prefix}{pod_uid}"
        host_veth = "kv" + pod_uid.replace("-", "")[:12]
        address = self._allocate()
        try:
            ip("netns", "add", name)
            ip("link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            ip("link", "set", host_veth, "master", self.bridge, "up")
            ip("-n", name, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "link", "set", "eth0", "up")
            ip("-n", name, "route", "add", "default", "via", self.gateway)
        except Exception:
            self.delete(PodNet(name, address, host_veth))
            raise
        return PodNet(name, address, host_veth)

    def delete(self, net: PodNet) -> None:
        """Kill stragglers, delete the namespace (its veth end takes the host end with it), free the IP."""
        if net.path.exists():
            kill_netns_processes(net.path)
        ip("netns", "del", net.netns, check=False)
        ip("link", "del", net.host_veth, check=False)
        with self._lock:
            if net.ip not in self._free:
                self._free.append(net.ip)

    def _allocate(self) -> str:
        with self._lock:
            if not self._free:
                raise RuntimeError(f"pod subnet {self.subnet} is full")
            return self._free.pop(0)


def kill_netns_processes(netns: Path) -> None:
    """SIGKILL every process in the namespace: a pod's last word is its own, not a leak's."""
    try:
        target = os.stat(netns).st_ino
    except OSError:
        return
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino == target:
                os.kill(int(entry.name), 9)
        except (OSError, ValueError):
            continue
