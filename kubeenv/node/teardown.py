"""Leave nothing behind: what a stopped node may still hold on the host, found and removed.

Stopping the processes is not enough on a real node. Container shims outlive containerd, pod
sandboxes hold network namespaces and veths on the bridge, kubelet mounts volumes and tmpfs for
secrets, kube-proxy and the CNI plugins add iptables chains (as nft tables here, through
iptables-nft), kubelet makes ``kubepods`` cgroups in every v1 hierarchy, and a CSI driver attaches
loop devices. :func:`leftovers` lists each kind (the tests assert it is empty after a stop);
the ``remove_*`` functions clear them, in the order :class:`kubeenv.node.Node` calls them.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from kubeenv.node.layout import BRIDGE, NodeLayout

NETNS_DIR = Path("/var/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBE_CGROUP = "kubepods"
CNI_CHAIN_PREFIXES = ("CNI-", "KUBE-")


def processes_under(root: Path) -> list[int]:
    """Processes whose command line names the node's directory (shims, pause, our components)."""
    marker = str(root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def kill_processes(root: Path) -> None:
    for pid in processes_under(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while processes_under(root) and time.monotonic() < deadline:
        time.sleep(0.1)


def mounts_under(*roots: Path) -> list[str]:
    prefixes = tuple(str(r) for r in roots)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefixes):
            found.append(point)
    return found


def unmount_all(*roots: Path) -> None:
    """Unmount deepest first; lazily when busy, so a stuck mount never blocks the stop."""
    for _ in range(3):
        points = sorted(set(mounts_under(*roots)), key=len, reverse=True)
        if not points:
            return
        for point in points:
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)


def pod_netns(known_before: set[str]) -> list[str]:
    """containerd's ``cni-<uuid>`` network namespaces that were not there before the node started."""
    if not NETNS_DIR.is_dir():
        return []
    return [p.name for p in NETNS_DIR.iterdir() if p.name.startswith("cni-") and p.name not in known_before]


def remove_netns(names: list[str]) -> None:
    for name in names:
        subprocess.run(["umount", str(NETNS_DIR / name)], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        (NETNS_DIR / name).unlink(missing_ok=True)


def bridge_exists() -> bool:
    return subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0


def remove_bridge() -> None:
    if bridge_exists():
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)


def iptables_chains() -> list[str]:
    """Chains kube-proxy and the CNI plugins make (``KUBE-*``, ``CNI-*``), as ``table/chain``."""
    found = []
    for table in ("filter", "nat", "mangle"):
        out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
        found += [f"{table}/{line[1:].split()[0]}" for line in out.splitlines()
                  if line.startswith(":") and line[1:].startswith(CNI_CHAIN_PREFIXES)]
    return found


def remove_iptables_chains() -> None:
    """Drop every rule that jumps to our chains, then the chains themselves."""
    for table in ("filter", "nat", "mangle"):
        out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
        ours = {line[1:].split()[0] for line in out.splitlines()
                if line.startswith(":") and line[1:].startswith(CNI_CHAIN_PREFIXES)}
        for line in out.splitlines():
            words = shlex.split(line)  # rules carry quoted comments ("CNI firewall plugin rules")
            if line.startswith("-A ") and "-j" in words and words[words.index("-j") + 1] in ours \
                    and words[1] not in ours:
                subprocess.run(["iptables", "-t", table, "-D", *words[1:]], capture_output=True)
        for chain in ours:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
        for chain in ours:
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)


def nft_tables() -> set[str]:
    """``family name`` of every nft table (empty when the ``nft`` command is missing)."""
    try:
        out = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {f"{t['table']['family']} {t['table']['name']}" for t in json.loads(out)["nftables"] if "table" in t}


def remove_nft_tables(tables: set[str]) -> None:
    """Delete tables the node's components created that are now empty (iptables-nft's shells)."""
    for table in tables:
        listing = subprocess.run(["nft", "list", "table", *table.split()], capture_output=True, text=True).stdout
        if "rule" not in listing.replace("ruleset", "") and "elements" not in listing:
            subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True)


def kube_cgroups() -> list[Path]:
    if not CGROUP_ROOT.is_dir():
        return []
    return [c / KUBE_CGROUP for c in CGROUP_ROOT.iterdir() if (c / KUBE_CGROUP).is_dir()]


def remove_cgroups() -> None:
    """rmdir every ``kubepods`` tree bottom-up (a cgroup directory holds no files one may delete)."""
    for top in kube_cgroups():
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                directory.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            pass


def loop_devices(*roots: Path) -> list[str]:
    """Loop devices whose backing file lies under one of ``roots``."""
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                         capture_output=True, text=True).stdout
    prefixes = tuple(str(r) for r in roots)
    return [line.split()[0] for line in out.splitlines()
            if len(line.split()) > 1 and line.split()[1].startswith(prefixes)]


def detach_loops(*roots: Path) -> None:
    """Detach, in rounds: kubelet holds a Block volume with a loop device of its own over the
    driver's, and the inner one is busy until the outer is gone."""
    for _ in range(10):
        devices = loop_devices(*roots)
        if not devices:
            return
        for device in devices:
            subprocess.run(["losetup", "--detach", device], capture_output=True)
        time.sleep(0.2)


def leftovers(layout: NodeLayout, netns_before: set[str], nft_before: set[str]) -> list[str]:
    """Everything of the node still on the host; empty after a clean stop."""
    found = [f"process {pid}" for pid in processes_under(layout.root)]
    found += [f"mount {m}" for m in mounts_under(layout.root, layout.images)]
    found += [f"netns {n}" for n in pod_netns(netns_before)]
    found += [f"loop {d}" for d in loop_devices(layout.root)]
    found += [f"iptables {c}" for c in iptables_chains()]
    found += [f"nft table {t}" for t in sorted(nft_tables() - nft_before)]
    found += [f"cgroup {c}" for c in kube_cgroups()]
    if bridge_exists():
        found.append(f"bridge {BRIDGE}")
    return found
