"""``python -m kubeenv up|down|status``: a control plane (and node agent) that outlives the command.

``up`` starts everything in the background, records it in ``<dir>/state.json`` and prints the
admin kubeconfig path as its last line (the matching ``kubectl`` sits next to it); run again while
up, it only prints the path. ``down`` stops what ``up`` started. ``<dir>`` is ``$CDI_KUBE_DIR``,
default ``/tmp/cdi-py-kube``. ``$CDI_KUBE_BIND`` (default 127.0.0.1) is the apiserver's listen
address; ``CDI_KUBE_NODEAGENT=0`` starts no node agent.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
import urllib.error
from pathlib import Path

from kubeenv.binaries import ensure_binaries
from kubeenv.controlplane import ControlPlane
from kubeenv.process import Process

DEFAULT_DIR = "/tmp/cdi-py-kube"
NODE_READY_TIMEOUT = 90.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeenv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("CDI_KUBE_DIR", DEFAULT_DIR)))
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    state = directory / "state.json"
    if args.command == "up":
        return up(directory, state)
    if args.command == "down":
        return down(state)
    return status(state)


def up(directory: Path, state: Path) -> int:
    """Start unless already running; print the kubeconfig path last either way."""
    plane = _running(state)
    if plane is None:
        down(state, quiet=True)  # whatever half of a previous run is still alive
        plane = _start(directory, state)
    print(f"kubectl: {plane.kubectl}  ({plane.version}, logs in {plane.workdir / 'logs'})", file=sys.stderr,
          flush=True)
    print(plane.kubeconfig, flush=True)
    return 0


def down(state: Path, quiet: bool = False) -> int:
    """Stop everything recorded in ``state`` (node agent first), then forget it."""
    if not state.exists():
        if not quiet:
            print("kube-down: nothing running")
        return 0
    plane = ControlPlane.load(state)
    plane.stop()
    state.unlink()
    if not quiet:
        print(f"kube-down: stopped {', '.join(p.name for p in plane.processes)}")
    return 0


def status(state: Path) -> int:
    if not state.exists():
        print("not running")
        return 1
    plane = ControlPlane.load(state)
    for process in plane.processes:
        print(f"{process.name:24} pid {process.pid:<8} {'running' if process.alive() else 'DEAD'}")
    print(plane.kubeconfig)
    return 0 if not plane.dead() else 1


def _running(state: Path) -> ControlPlane | None:
    """The recorded control plane if every process still runs, else None."""
    if not state.exists():
        return None
    try:
        plane = ControlPlane.load(state)
    except (OSError, ValueError, KeyError):
        return None
    return None if plane.dead() or not plane.processes else plane


def _start(directory: Path, state: Path) -> ControlPlane:
    workdir = directory / "cluster"
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh cluster: old etcd data and certs are stale
    directory.mkdir(parents=True, exist_ok=True)
    binaries = ensure_binaries()
    plane = ControlPlane.start(workdir, binaries=binaries, die_with_parent=False,
                               bind_address=os.environ.get("CDI_KUBE_BIND", "127.0.0.1"))
    plane.save(state)
    if _has_node_agent():
        agent = Process.spawn("nodeagent", [sys.executable, "-m", "kubeenv.nodeagent", "--kubeconfig",
                                            str(plane.kubeconfig), "--workdir", str(workdir / "nodeagent")],
                              workdir / "logs" / "nodeagent.log", die_with_parent=False)
        plane.processes.append(agent)
        plane.save(state)
        _wait_node_ready(plane, agent)
    return plane


def _has_node_agent() -> bool:
    """Start the node agent when it exists and ``$CDI_KUBE_NODEAGENT`` is not ``0``.

    Turning it off lets a second control plane run beside one that already has an agent (two
    agents on one host would share its network and storage directories).
    """
    if os.environ.get("CDI_KUBE_NODEAGENT", "1") == "0":
        return False
    return importlib.util.find_spec("kubeenv.nodeagent") is not None and \
        importlib.util.find_spec("kubeenv.nodeagent.__main__") is not None


def _wait_node_ready(plane: ControlPlane, agent: Process) -> None:
    """Wait for a Ready node, so ``kubectl get nodes`` right after kube-up shows it; warn if not."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(str(plane.kubeconfig)))
    deadline = time.monotonic() + NODE_READY_TIMEOUT
    while time.monotonic() < deadline and agent.alive():
        try:
            nodes = api.list_node().items
        except (client.ApiException, urllib.error.URLError, OSError):
            nodes = []
        if any(c.type == "Ready" and c.status == "True" for n in nodes for c in (n.status.conditions or [])):
            return
        time.sleep(0.5)
    why = "exited" if not agent.alive() else f"registered no Ready node in {NODE_READY_TIMEOUT:.0f}s"
    print(f"kube-up: warning: the node agent {why}; see {agent.log}\n{agent.log_tail(10)}", file=sys.stderr)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # the reason (with the failing component's log) beats a traceback
        if os.environ.get("CDI_KUBE_DEBUG"):
            raise
        print(f"kubeenv: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
