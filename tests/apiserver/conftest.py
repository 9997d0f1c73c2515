"""Fixtures: one cdi-apiserver for the package (:class:`tests.servers.token_api.TokenApi`), CDI's
aggregated ClusterRoles from ``deploy/``, and users with ServiceAccount tokens.

The server is package-scoped, not session-scoped: there is one ``v1beta1.upload.cdi.kubevirt.io``
per cluster, and other packages (the upload end-to-end tests) register their own.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from cdi.controller import manifests
from kubeenv.controlplane import ControlPlane
from kubeenv.node import Node
from tests.kube.fixtures import wait_for
from tests.servers.token_api import TokenApi, write_token_kubeconfig

AGGREGATED_ROLES = ("20-clusterrole-admin.yaml", "21-clusterrole-edit.yaml", "22-clusterrole-view.yaml")


@dataclass(frozen=True)
class User:
    """A ServiceAccount as a kubectl user: its name as RBAC sees it and a kubeconfig with its token."""

    name: str
    kubeconfig: Path


@pytest.fixture(scope="package")
def token_api(kube: client.ApiClient, control_plane: ControlPlane, node: Node,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenApi]:
    with TokenApi.start(kube, control_plane, node.node_ip, tmp_path_factory.mktemp("token-api")) as api:
        yield api


@pytest.fixture(scope="package")
def aggregated_roles(control_plane: ControlPlane, kube: client.ApiClient) -> None:
    """deploy/'s ``cdi.kubevirt.io:{admin,edit,view}``, applied with kubectl, absorbed into ``edit``."""
    files = [arg for name in AGGREGATED_ROLES for arg in ("-f", str(manifests.DEPLOY_DIR / name))]
    subprocess.run([str(control_plane.kubectl), "--kubeconfig", str(control_plane.kubeconfig), "apply", *files],
                   check=True, capture_output=True, timeout=60)
    rbac = client.RbacAuthorizationV1Api(kube)
    wait_for("the edit role to aggregate uploadtokenrequests",
             lambda: any("uploadtokenrequests" in (rule.resources or [])
                         for rule in rbac.read_cluster_role("edit").rules or []))


@pytest.fixture(scope="module")
def namespace(kube: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(kube)
    name = f"utr-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def make_user(kube: client.ApiClient, plane: ControlPlane, namespace: str, name: str, workdir: Path) -> User:
    """A ServiceAccount with a fresh token (TokenRequest API), no permissions beyond the defaults."""
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    token = core.create_namespaced_service_account_token(name, namespace,
                                                         {"spec": {"expirationSeconds": 3600}}).status.token
    user = f"system:serviceaccount:{namespace}:{name}"
    return User(user, write_token_kubeconfig(workdir / f"{name}.kubeconfig", plane, token, user))


def bind(kube: client.ApiClient, namespace: str, user: str, role_kind: str, role: str) -> None:
    """A RoleBinding in ``namespace`` of ``role`` (a Role or a ClusterRole) to the ServiceAccount ``user``."""
    sa_namespace, sa_name = user.split(":")[2:4]
    client.RbacAuthorizationV1Api(kube).create_namespaced_role_binding(namespace, {
        "metadata": {"name": f"{sa_name}-{role.replace(':', '-')}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}]})
