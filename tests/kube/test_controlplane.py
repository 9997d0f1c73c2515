"""The control plane behaves like a real cluster where operators depend on it.

Each check here is something a mock API would get subtly wrong: CRD establishment and schema
validation, the status subresource, optimistic concurrency, RBAC, and garbage collection by
owner references (done by kube-controller-manager, not the apiserver).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubeenv.controlplane import ControlPlane
from kubeenv.process import Process

GROUP = "kubeenv.cdi-py.example.com"
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def crd(kind: str, plural: str) -> dict[str, Any]:
    """A DataVolume-like CRD: structural schema, status subresource, a printer column."""
    schema = {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "required": ["source"], "properties": {
                "source": {"type": "object", "properties": {"http": {"type": "object", "properties": {
                    "url": {"type": "string"}}}}},
                "storage": {"type": "object", "properties": {"size": {"type": "string"}}},
            }},
            "status": {"type": "object", "properties": {
                "phase": {"type": "string", "enum": ["Pending", "ImportInProgress", "Succeeded", "Failed"]},
                "progress": {"type": "string"},
            }},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [{
                "name": "v1beta1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}],
            }],
        },
    }


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def established(kube: client.ApiClient, name: str) -> bool:
    conditions = client.ApiextensionsV1Api(kube).read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def kubectl(plane: ControlPlane, *args: str) -> str:
    proc = subprocess.run([str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(kube).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    client.CoreV1Api(kube).delete_namespace(name)


@pytest.fixture(scope="module")
def widgets(kube: client.ApiClient) -> str:
    """The Widget CRD, created with the Python client and Established."""
    body = crd("Widget", "widgets")
    client.ApiextensionsV1Api(kube).create_custom_resource_definition(body)
    wait_for(lambda: established(kube, body["metadata"]["name"]), 30, "the Widget CRD to be Established")
    return "widgets"


def test_control_plane_is_the_pinned_release(control_plane: ControlPlane, kube: client.ApiClient) -> None:
    assert client.VersionApi(kube).get_code().git_version == control_plane.version
    assert control_plane.kubectl.parent == control_plane.kubeconfig.parent
    assert f"Server Version: {control_plane.version}" in kubectl(control_plane, "version")


def test_namespace_lifecycle(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    assert core.read_namespace(namespace).status.phase == "Active"
    # the service-account controller (kube-controller-manager) gives every namespace a default SA
    wait_for(lambda: any(sa.metadata.name == "default"
                         for sa in core.list_namespaced_service_account(namespace).items),
             30, "the default service account")


def test_crd_applied_with_kubectl_becomes_established(control_plane: ControlPlane, kube: client.ApiClient,
                                                      tmp_path: Path) -> None:
    manifest = tmp_path / "gadgets.yaml"
    manifest.write_text(yaml.safe_dump(crd("Gadget", "gadgets")))
    assert "created" in kubectl(control_plane, "apply", "-f", str(manifest))
    kubectl(control_plane, "wait", "--for=condition=Established", "--timeout=30s", f"crd/gadgets.{GROUP}")
    assert established(kube, f"gadgets.{GROUP}")
    # applying the same manifest again is a no-op, as server-side diffing says
    assert "unchanged" in kubectl(control_plane, "apply", "-f", str(manifest))


def test_status_subresource(kube: client.ApiClient, namespace: str, widgets: str) -> None:
    objects = client.CustomObjectsApi(kube)
    body = {"apiVersion": f"{GROUP}/v1beta1", "kind": "Widget", "metadata": {"name": "w1"},
            "spec": {"source": {"http": {"url": "http://example.com/disk.img"}}},
            "status": {"phase": "Succeeded"}}
    created = objects.create_namespaced_custom_object(GROUP, "v1beta1", namespace, widgets, body)
    assert "status" not in created  # status is ignored on the main resource when the subresource exists

    created["status"] = {"phase": "ImportInProgress", "progress": "42%"}
    created["spec"]["storage"] = {"size": "1Gi"}  # ... and spec is ignored on the status endpoint
    updated = objects.replace_namespaced_custom_object_status(GROUP, "v1beta1", namespace, widgets, "w1", created)
    assert updated["status"] == {"phase": "ImportInProgress", "progress": "42%"}
    assert "storage" not in updated["spec"]
    assert updated["metadata"]["generation"] == 1  # status writes do not bump the generation

    with pytest.raises(ApiException) as invalid:  # the schema's enum is enforced
        objects.patch_namespaced_custom_object_status(GROUP, "v1beta1", namespace, widgets, "w1",
                                                      {"status": {"phase": "Exploded"}})
    assert invalid.value.status == 422


def test_schema_rejects_invalid_spec(kube: client.ApiClient, namespace: str, widgets: str) -> None:
    body = {"apiVersion": f"{GROUP}/v1beta1", "kind": "Widget", "metadata": {"name": "bad"},
            "spec": {"storage": {"size": "1Gi"}}}  # source is required
    with pytest.raises(ApiException) as invalid:
        client.CustomObjectsApi(kube).create_namespaced_custom_object(GROUP, "v1beta1", namespace, widgets, body)
    assert invalid.value.status == 422


def test_stale_update_conflicts(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"),
                                                                     data={"n": "0"}))
    first, stale = core.read_namespaced_config_map("cm", namespace), core.read_namespaced_config_map("cm", namespace)
    first.data["n"] = "1"
    core.replace_namespaced_config_map("cm", namespace, first)
    stale.data["n"] = "2"
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("cm", namespace, stale)
    assert conflict.value.status == 409
    assert core.read_namespaced_config_map("cm", namespace).data == {"n": "1"}


def test_rbac_denies_then_allows_a_service_account(kube: client.ApiClient, control_plane: ControlPlane,
                                                   namespace: str) -> None:
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="robot")))
    token = core.create_namespaced_service_account_token("robot", namespace, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))).status.token
    robot = client.CoreV1Api(token_client(control_plane, token))

    with pytest.raises(ApiException) as denied:
        robot.list_namespaced_pod(namespace)
    assert denied.value.status == 403
    assert f"system:serviceaccount:{namespace}:robot" in denied.value.body

    rbac.create_namespaced_role(namespace, client.V1Role(
        metadata=client.V1ObjectMeta(name="pod-reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])]))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="robot-reads-pods"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="robot", namespace=namespace)]))
    wait_for(lambda: _can_list_pods(robot, namespace), 10, "the RoleBinding to take effect")
    with pytest.raises(ApiException) as still_denied:  # only in its own namespace
        robot.list_namespaced_pod("default")
    assert still_denied.value.status == 403


def test_impersonated_service_account_is_forbidden(kube: client.ApiClient, namespace: str) -> None:
    """The admin may act as another user (Impersonate-User), and then has only that user's rights."""
    core = client.CoreV1Api(kube)
    with pytest.raises(ApiException) as denied:
        core.list_namespaced_pod(namespace, _headers={"Impersonate-User": f"system:serviceaccount:{namespace}:nobody"})
    assert denied.value.status == 403


def test_garbage_collector_deletes_dependents(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner")))
    reference = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    for name in ("dependent-a", "dependent-b"):
        core.create_namespaced_config_map(namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, owner_references=[reference])))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander")))

    core.delete_namespaced_config_map("owner", namespace)
    wait_for(lambda: _config_map_names(core, namespace) <= {"bystander", "kube-root-ca.crt"}, 30,
             "the garbage collector to delete the dependents")
    assert "bystander" in _config_map_names(core, namespace)


def token_client(plane: ControlPlane, token: str) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = plane.server
    configuration.ssl_ca_cert = str(plane.ca)
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return client.ApiClient(configuration)


def _can_list_pods(api: client.CoreV1Api, namespace: str) -> bool:
    try:
        api.list_namespaced_pod(namespace)
        return True
    except ApiException as error:
        if error.status != 403:
            raise
        return False


def _config_map_names(core: client.CoreV1Api, namespace: str) -> set[str]:
    return {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}


def test_kube_up_and_down_scripts(tmp_path: Path) -> None:
    """What a person runs: kube-up prints the kubeconfig last, is idempotent; kube-down stops all."""
    env = {**os.environ, "CDI_KUBE_DIR": str(tmp_path / "kube"), "CDI_KUBE_NODE": "0"}
    up = [str(SCRIPTS / "kube-up")]
    try:
        first = subprocess.run(up, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert first.returncode == 0, first.stderr
        kubeconfig = Path(first.stdout.splitlines()[-1])
        kubectl_bin = kubeconfig.parent / "kubectl"
        namespaces = subprocess.run([str(kubectl_bin), "--kubeconfig", str(kubeconfig), "get", "namespaces"],
                                    capture_output=True, text=True, timeout=60, check=False)
        assert "kube-system" in namespaces.stdout, namespaces.stderr
        pids = json.loads((tmp_path / "kube" / "cluster" / "controlplane.json").read_text())["processes"]

        again = subprocess.run(up, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert again.stdout.splitlines()[-1] == str(kubeconfig)
        assert json.loads((tmp_path / "kube" / "cluster" / "controlplane.json").read_text())["processes"] == pids
    finally:
        down = subprocess.run([str(SCRIPTS / "kube-down")], env=env, capture_output=True, text=True, timeout=120,
                              check=False)
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "kube" / "cluster.json").exists()
    assert [p["name"] for p in pids if Process.from_json(p).alive()] == []
