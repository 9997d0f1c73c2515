"""The real Kubernetes control plane and the node agent, shared by the whole test session
(a pytest plugin loaded from the root conftest, so every test directory can use them).

``control_plane`` builds the pinned binaries if they are not cached yet (``scripts/setup``
normally has), starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler from
scratch in a temporary directory, and stops them all at the end of the session.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from kubeenv.binaries import ensure_binaries
from kubeenv.controlplane import ControlPlane
from kubeenv.nodeagent import NodeAgent
from kubeenv.nodeagent.network import NETNS_DIR


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or find cached) binaries before any test runs, outside every per-test timeout.

    A first build takes minutes; done inside the fixture it would count against the timeout of
    whichever test happened to need the control plane first.
    """
    if any("control_plane" in getattr(item, "fixturenames", ()) for item in session.items):
        ensure_binaries()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane.start(tmp_path_factory.mktemp("kube"))
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """An admin (system:masters) API client for the control plane."""
    api = config.new_client_from_config(str(control_plane.kubeconfig))
    yield api
    api.close()


NODE = "cdi-test-node"


@pytest.fixture(scope="session")
def node_agent(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    """The node, for the whole session; at the end nothing of it may be left on the host."""
    agent = NodeAgent(control_plane.kubeconfig, tmp_path_factory.mktemp("node"), NODE).start()
    yield agent
    agent.stop()
    assert leftovers(agent) == []


def leftovers(agent: NodeAgent) -> list[str]:
    """Namespaces, loop devices, mounts, processes or the bridge that outlived the agent."""
    found = [f"netns {p.name}" for p in NETNS_DIR.glob(f"{agent.network.prefix}*")] if NETNS_DIR.is_dir() else []
    found += [f"loop {d}" for d in agent.loops.leftovers()]
    found += [f"mount {line.split()[4]}" for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(str(agent.workdir))]
    found += [f"process {pid}" for pid in processes_with(str(agent.workdir))]
    if subprocess.run(["ip", "link", "show", agent.network.bridge], capture_output=True).returncode == 0:
        found.append(f"bridge {agent.network.bridge}")
    return found


def processes_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def core(kube: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30,
             explain: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something true; on timeout, say what and (``explain``) why."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(0.2)


def make_namespace(core: client.CoreV1Api, prefix: str) -> str:
    """A fresh namespace, ready for pods (kube-controller-manager has made its default service account)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_for("the default service account", lambda: core.list_namespaced_service_account(name).items)
    return name
