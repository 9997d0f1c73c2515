"""The test cluster, shared by the whole test session (a pytest plugin loaded from the root
conftest, so every test directory can use it): the control plane, the image registry with our
images, and a real node (containerd, kubelet, kube-proxy, CoreDNS, csi-driver-host-path), started
by the same code as ``scripts/kube-up`` (:class:`kubeenv.cluster.Cluster`).

At the end of the session the cluster is stopped and nothing of the node may be left on the host.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

import kubeenv.images as image_builder
from kubeenv.binaries import ensure_binaries, ensure_node_binaries
from kubeenv.cluster import Cluster
from kubeenv.controlplane import ControlPlane
from kubeenv.node import NODE_NAME, Node
from kubeenv.node import registry as image_registry

NODE = NODE_NAME


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or find cached) binaries and images before any test runs, outside every per-test
    timeout: a first build takes minutes, and inside the fixture it would count against whichever
    test happened to need the cluster first. The images go into the registry's cached storage,
    where the session's registry finds them."""
    if not any("cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    ensure_binaries()
    addons = ensure_node_binaries()
    workdir = Path(session.config._tmp_path_factory.mktemp("images"))  # type: ignore[attr-defined]
    address, process = image_registry.start(workdir, workdir / "registry.log", die_with_parent=True)
    try:
        image_builder.build_and_push(address, addons)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster.start(tmp_path_factory.mktemp("kube"))
    yield running
    running.stop()
    assert running.leftovers() == []


@pytest.fixture(scope="session")
def control_plane(cluster: Cluster) -> ControlPlane:
    return cluster.plane


@pytest.fixture(scope="session")
def node(cluster: Cluster) -> Node:
    assert cluster.node is not None
    return cluster.node


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """An admin (system:masters) API client for the control plane."""
    api = config.new_client_from_config(str(control_plane.kubeconfig))
    yield api
    api.close()


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
