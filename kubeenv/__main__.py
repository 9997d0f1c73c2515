"""``python -m kubeenv up|down|status``: the test cluster (control plane, image registry, a real
node) running in the background, outliving the command.

``up`` starts everything, records it in ``<dir>/cluster.json`` and prints the admin kubeconfig path
as its last line (the matching ``kubectl`` sits next to it); run again while up, it only prints
the path. ``down`` stops what ``up`` started and removes what the node left on the host.
``deploy`` installs cdi-py into it (``python -m cdi.install`` with the images ``up`` built). ``<dir>``
is ``$CDI_KUBE_DIR``, default ``/tmp/cdi-py-kube``. ``CDI_KUBE_NODE=0`` starts the control plane
alone (one node per host: a second cluster beside one that has it must go without).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from kubeenv.cluster import STATE_FILE, Cluster

DEFAULT_DIR = "/tmp/cdi-py-kube"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeenv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status", "deploy"))
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("CDI_KUBE_DIR", DEFAULT_DIR)))
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    state = directory / STATE_FILE
    if args.command == "up":
        return up(directory, state)
    if args.command == "down":
        return down(state)
    if args.command == "deploy":
        return deploy(state)
    return status(state)


def up(directory: Path, state: Path) -> int:
    """Start unless already running; print the kubeconfig path last either way."""
    cluster = _running(state)
    if cluster is None:
        down(state, quiet=True)  # whatever half of a previous run is still alive
        shutil.rmtree(directory, ignore_errors=True)  # a fresh cluster: old etcd data and certs are stale
        cluster = Cluster.start(directory, die_with_parent=False,
                                with_node=os.environ.get("CDI_KUBE_NODE", "1") != "0")
        cluster.save()
    where = f"node {cluster.node.name} at {cluster.node.node_ip}" if cluster.node else "no node"
    print(f"kubectl: {cluster.kubectl}  ({cluster.plane.version}, {where}, logs in {cluster.workdir})",
          file=sys.stderr, flush=True)
    print(cluster.kubeconfig, flush=True)
    return 0


def down(state: Path, quiet: bool = False) -> int:
    """Stop everything recorded in ``state`` (the node first), then forget it."""
    if not state.exists():
        if not quiet:
            print("kube-down: nothing running")
        return 0
    cluster = Cluster.load(state)
    cluster.stop()
    state.unlink()
    left = cluster.leftovers()
    if not quiet:
        print("kube-down: stopped" + (f"; left behind: {', '.join(left)}" if left else ""))
    return 1 if left else 0


def deploy(state: Path) -> int:
    """Install cdi-py into the running cluster (``scripts/deploy``); the proxy's CA lands beside it."""
    cluster = _running(state)
    if cluster is None:
        print("kube-deploy: no cluster running: scripts/kube-up first", file=sys.stderr)
        return 1
    ca = cluster.workdir / "uploadproxy-ca.crt"
    done = subprocess.run(cluster.install_command(ca_out=ca), cwd=Path(__file__).resolve().parents[1])
    if done.returncode == 0:
        print(f"upload proxy: {cluster.uploadproxy_url()} (trust {ca}, e.g. SSL_CERT_FILE for virtctl)",
              file=sys.stderr)
    return done.returncode


def status(state: Path) -> int:
    if not state.exists():
        print("not running")
        return 1
    cluster = Cluster.load(state)
    for process in cluster.processes:
        print(f"{process.name:24} pid {process.pid:<8} {'running' if process.alive() else 'DEAD'}")
    print(cluster.kubeconfig)
    return 0 if not cluster.dead() else 1


def _running(state: Path) -> Cluster | None:
    """The recorded cluster if every process still runs, else None."""
    if not state.exists():
        return None
    try:
        cluster = Cluster.load(state)
    except (OSError, ValueError, KeyError):
        return None
    return None if cluster.dead() else cluster


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # the reason (with the failing component's log) beats a traceback
        if os.environ.get("CDI_KUBE_DEBUG"):
            raise
        print(f"kubeenv: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
