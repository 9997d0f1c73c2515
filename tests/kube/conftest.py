"""The real Kubernetes control plane, shared by the whole test session.

``control_plane`` builds the pinned binaries if they are not cached yet (``scripts/setup``
normally has), starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler from
scratch in a temporary directory, and stops them all at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client, config

from kubeenv.binaries import ensure_binaries
from kubeenv.controlplane import ControlPlane


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
