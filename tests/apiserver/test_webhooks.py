"""The DataVolume admission webhooks behind the real kube-apiserver, DataVolumes created by real users.

The package's host cdi-apiserver (:class:`tests.servers.token_api.TokenApi`, running with deploy/'s
RBAC for its ServiceAccount) is registered as both webhooks by ``clientConfig.url``, scoped by a
``namespaceSelector`` to this module's two labelled namespaces (``tgt``, where the DataVolumes go;
``src``, where the clone sources live), so no other test's DataVolumes ever reach it. Users are
ServiceAccounts with tokens, bound to the built-in ``edit`` role in ``tgt`` (which absorbed CDI's
aggregated role from deploy/).

Behaviours under test:

* a same-namespace clone is admitted without any grant and stamped with a token that
  :func:`cdi.clonetoken.validate` accepts for exactly that source and target;
* from another namespace, a user with no grant there is refused with CDI's message
  ``User system:serviceaccount:... has insufficient permissions in clone source namespace src``
  (403), for PVC, snapshot and ``sourceRef`` sources alike;
* a RoleBinding in ``src`` to a ClusterRole granting ``create datavolumes/source`` allows PVC and
  snapshot clones, and ``sourceRef`` through a DataSource (the token names the PVC behind it);
  ``create pods`` alone allows a PVC clone but not a snapshot clone; pods plus PVCs allow the snapshot;
* the spec cannot change after creation (``Cannot update DataVolume Spec``) while labels can;
* source checks at creation: a content type that differs from the source PVC's, a target smaller
  than the source PVC (directly or through a DataSource), or smaller than a real VolumeSnapshot's
  ``restoreSize``, is refused with CDI's messages; a source that does not exist yet is admitted; a
  missing DataSource is refused (by the mutating webhook, or, for a prePopulated DataVolume, by the
  validating one); an existing PVC of the same name is refused; a bad URL scheme is refused;
* straight to the server without a client certificate: a garbage AdmissionReview is a 400 that says
  why, an oversized one a 413, and paths other than the two webhooks still need the front proxy.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.utils import parse_quantity

from cdi import clonetoken
from cdi.api import crds
from cdi.apiserver import manifests as apiserver
from kubeenv.controlplane import ControlPlane
from kubeenv.node import csi
from tests.apiserver.conftest import User, bind, make_user
from tests.kube.fixtures import wait_for
from tests.servers.token_api import TokenApi

GROUP, VERSION, PLURAL = "cdi.kubevirt.io", "v1beta1", "datavolumes"
LABEL = "cdi-py-tests/webhooks"
NO_CLASS = "cdi-py-tests-no-such-class"  # PVCs of this class stay Pending: the webhooks only read their spec
SIZE = {"resources": {"requests": {"storage": "2Mi"}}}
USERS = ("alice", "nobody", "explicit", "podmaker", "podpvc")


@pytest.fixture(scope="module")
def registered(token_api: TokenApi, kube: client.ApiClient, control_plane: ControlPlane) -> Iterator[str]:
    """Both webhooks, pointing at the host server by URL, for namespaces labelled with its namespace."""
    for args in (("apply", "-f", str(crds.CRD_DIR)),
                 ("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds.CRD_DIR))):
        subprocess.run([str(control_plane.kubectl), "--kubeconfig", str(control_plane.kubeconfig), *args],
                       check=True, capture_output=True, timeout=90)
    ca = base64.b64encode(token_api.serving_ca.read_bytes()).decode()
    selector = {"matchLabels": {LABEL: token_api.namespace}}
    admission = client.AdmissionregistrationV1Api(kube)
    validating = apiserver.validating_webhook(f"cdi-py-tests-validate-{token_api.namespace}", namespace_selector=selector,
                                              client_config={"url": f"{token_api.url}/datavolume-validate",
                                                             "caBundle": ca})
    mutating = apiserver.mutating_webhook(f"cdi-py-tests-mutate-{token_api.namespace}", namespace_selector=selector,
                                          client_config={"url": f"{token_api.url}/datavolume-mutate", "caBundle": ca})
    admission.create_validating_webhook_configuration(validating)
    try:
        admission.create_mutating_webhook_configuration(mutating)
        yield token_api.namespace
    finally:
        admission.delete_validating_webhook_configuration(validating["metadata"]["name"])
        admission.delete_mutating_webhook_configuration(mutating["metadata"]["name"], _preload_content=False)


@pytest.fixture(scope="module")
def spaces(kube: client.ApiClient, registered: str) -> Iterator[dict[str, str]]:
    core = client.CoreV1Api(kube)
    made = {role: f"wh-{role}-{uuid.uuid4().hex[:6]}" for role in ("tgt", "src")}
    for name in made.values():
        core.create_namespace({"metadata": {"name": name, "labels": {LABEL: registered}}})
    yield made
    for name in made.values():
        core.delete_namespace(name)


@pytest.fixture(scope="module")
def users(kube: client.ApiClient, control_plane: ControlPlane, spaces: dict[str, str], aggregated_roles: None,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, User]:
    tgt, src = spaces["tgt"], spaces["src"]
    workdir = tmp_path_factory.mktemp("webhook-users")
    made = {name: make_user(kube, control_plane, tgt, name, workdir) for name in USERS}
    rbac = client.RbacAuthorizationV1Api(kube)
    clone_role = f"cdi-py-tests-clone-source-{src}"
    rbac.create_cluster_role({"metadata": {"name": clone_role}, "rules": [
        {"apiGroups": [GROUP], "resources": ["datavolumes/source"], "verbs": ["create"]}]})
    for verbs_on, resources in (("pods", ["pods"]), ("podpvc", ["pods", "persistentvolumeclaims"])):
        rbac.create_namespaced_role(src, {"metadata": {"name": verbs_on}, "rules": [
            {"apiGroups": [""], "resources": resources, "verbs": ["create"]}]})
    for user in made.values():
        bind(kube, tgt, user.name, "ClusterRole", "edit")
    bind(kube, src, made["explicit"].name, "ClusterRole", clone_role)
    bind(kube, src, made["podmaker"].name, "Role", "pods")
    bind(kube, src, made["podpvc"].name, "Role", "podpvc")
    for name, ns, group, resource in (("alice", tgt, GROUP, "datavolumes"), ("explicit", src, GROUP, "datavolumes/source"),
                                      ("podmaker", src, "", "pods"), ("podpvc", src, "", "persistentvolumeclaims")):
        wait_for(f"RBAC for {name}", lambda: may(kube, made[name].name, ns, group, resource))
    yield made
    rbac.delete_cluster_role(clone_role)


@pytest.fixture(scope="module")
def ready(kube: client.ApiClient, spaces: dict[str, str], users: dict[str, User]) -> dict[str, str]:
    """Positive signal that kube-apiserver calls our webhooks: a dry-run create refused with our message."""
    def refused() -> bool:
        code, message, _ = create(kube, spaces["tgt"], "probe", {"source": {"http": {"url": "ftp://x/y"}},
                                                                  "storage": SIZE}, dry_run=True)
        return code == 422 and "Invalid source URL scheme" in message
    wait_for("the webhooks to be called", refused, timeout=60)
    return spaces


def may(kube: client.ApiClient, user: str, namespace: str, group: str, resource: str) -> bool:
    name, _, sub = resource.partition("/")
    review = {"spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
                       "resourceAttributes": {"namespace": namespace, "verb": "create", "resource": name,
                                              "subresource": sub, "group": group}}}
    return bool(client.AuthorizationV1Api(kube).create_subject_access_review(review).status.allowed)


def as_user(user: User) -> client.ApiClient:
    return config.new_client_from_config(str(user.kubeconfig))


def create(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any], *, dry_run: bool = False,
           annotations: dict[str, str] | None = None) -> tuple[int, str, dict[str, Any] | None]:
    """``(HTTP status, error message, created object)`` of creating a DataVolume."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DataVolume",
            "metadata": {"name": name, **({"annotations": annotations} if annotations else {})}, "spec": spec}
    try:
        created = client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, **({"dry_run": "All"} if dry_run else {}))
        return 201, "", created
    except client.ApiException as err:
        return err.status, json.loads(err.body or "{}").get("message", ""), None


def clone(kind: str, namespace: str, name: str) -> dict[str, Any]:
    return {"source": {kind: {"namespace": namespace, "name": name}}, "storage": {}}


def token_of(created: dict[str, Any] | None) -> str:
    assert created is not None
    return str(created["metadata"]["annotations"][clonetoken.ANNOTATION])


def denied(user: User, namespace: str) -> str:
    return (f'admission webhook "datavolume-mutate.cdi.kubevirt.io" denied the request: '
            f"User {user.name} has insufficient permissions in clone source namespace {namespace}")


def pending_pvc(kube: client.ApiClient, namespace: str, name: str, size: str = "2Mi",
                annotations: dict[str, str] | None = None, mode: str = "Filesystem") -> None:
    client.CoreV1Api(kube).create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": NO_CLASS, "volumeMode": mode,
                 "resources": {"requests": {"storage": size}}}})


# -- clone authorization and the token ---------------------------------------------------------------


def test_same_namespace_clone_is_stamped(ready: dict[str, str], users: dict[str, User],
                                        token_api: TokenApi) -> None:
    tgt = ready["tgt"]
    code, message, created = create(as_user(users["alice"]), tgt, "same-ns", clone("pvc", tgt, "golden"))
    assert code == 201, message
    token = token_of(created)
    clonetoken.validate(token, token_api.public_key_pem, source=("pvc", tgt, "golden"), target=(tgt, "same-ns"))
    with pytest.raises(clonetoken.InvalidCloneToken, match="targetName is 'same-ns', not 'other'"):
        clonetoken.validate(token, token_api.public_key_pem, source=("pvc", tgt, "golden"), target=(tgt, "other"))


@pytest.mark.parametrize("kind", ["pvc", "snapshot"])
def test_cross_namespace_clone_without_grant_is_refused(ready: dict[str, str], users: dict[str, User],
                                                        kind: str) -> None:
    code, message, _ = create(as_user(users["nobody"]), ready["tgt"], f"no-{kind}", clone(kind, ready["src"], "gold"))
    assert (code, message) == (403, denied(users["nobody"], ready["src"]))


@pytest.mark.parametrize("user,kind,allowed", [
    ("explicit", "pvc", True), ("explicit", "snapshot", True),
    ("podmaker", "pvc", True), ("podmaker", "snapshot", False),
    ("podpvc", "snapshot", True),
])
def test_grants_in_the_source_namespace(ready: dict[str, str], users: dict[str, User], token_api: TokenApi,
                                        user: str, kind: str, allowed: bool) -> None:
    tgt, src = ready["tgt"], ready["src"]
    name = f"{user}-{kind}"
    code, message, created = create(as_user(users[user]), tgt, name, clone(kind, src, "gold"))
    if not allowed:
        assert (code, message) == (403, denied(users[user], src))
        return
    assert code == 201, message
    clonetoken.validate(token_of(created), token_api.public_key_pem, source=(kind, src, "gold"), target=(tgt, name))


def test_source_ref_resolves_the_data_source(ready: dict[str, str], users: dict[str, User], token_api: TokenApi,
                                             kube: client.ApiClient) -> None:
    tgt, src = ready["tgt"], ready["src"]
    client.CustomObjectsApi(kube).create_namespaced_custom_object(GROUP, VERSION, src, "datasources", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataSource", "metadata": {"name": "fedora"},
        "spec": {"source": {"pvc": {"namespace": src, "name": "fedora-golden"}}}})
    spec = {"sourceRef": {"kind": "DataSource", "namespace": src, "name": "fedora"}, "storage": {}}
    code, message, _ = create(as_user(users["nobody"]), tgt, "ref-nobody", spec)
    assert (code, message) == (403, denied(users["nobody"], src))
    code, message, created = create(as_user(users["explicit"]), tgt, "ref-explicit", spec)
    assert code == 201, message
    clonetoken.validate(token_of(created), token_api.public_key_pem, source=("pvc", src, "fedora-golden"),
                        target=(tgt, "ref-explicit"))


# -- the validating webhook ----------------------------------------------------------------------------


def test_spec_is_immutable_metadata_is_not(ready: dict[str, str], users: dict[str, User]) -> None:
    api, tgt = client.CustomObjectsApi(as_user(users["alice"])), ready["tgt"]
    code, message, _ = create(as_user(users["alice"]), tgt, "fixed", {"source": {"blank": {}}, "storage": SIZE})
    assert code == 201, message
    api.patch_namespaced_custom_object(GROUP, VERSION, tgt, PLURAL, "fixed", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(client.ApiException) as caught:
        api.patch_namespaced_custom_object(GROUP, VERSION, tgt, PLURAL, "fixed", {"spec": {"preallocation": True}})
    assert caught.value.status == 422
    assert json.loads(caught.value.body)["message"] == (
        'admission webhook "datavolume-validate.cdi.kubevirt.io" denied the request: Cannot update DataVolume Spec')


VALIDATE = 'admission webhook "datavolume-validate.cdi.kubevirt.io" denied the request: '


def test_source_checks_at_creation(ready: dict[str, str], kube: client.ApiClient) -> None:
    tgt, src = ready["tgt"], ready["src"]
    pending_pvc(kube, src, "archive-src", annotations={"cdi.kubevirt.io/storage.contentType": "archive"})
    pending_pvc(kube, src, "plain-src")
    pending_pvc(kube, tgt, "taken")
    client.CustomObjectsApi(kube).create_namespaced_custom_object(GROUP, VERSION, src, "datasources", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataSource", "metadata": {"name": "plain"},
        "spec": {"source": {"pvc": {"namespace": src, "name": "plain-src"}}}})
    small = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}
    cases = [
        ("ct", clone("pvc", src, "archive-src"), None,
         VALIDATE + "Source contentType (archive) and target contentType (kubevirt) do not match"),
        ("ct-ok", {**clone("pvc", src, "archive-src"), "contentType": "archive"}, None, ""),
        ("small", {"source": {"pvc": {"namespace": src, "name": "plain-src"}}, "pvc": small}, None,
         VALIDATE + "target resources requests storage size is smaller than the source 1048576 < 2097152"),
        ("small-ref", {"sourceRef": {"kind": "DataSource", "namespace": src, "name": "plain"}, "pvc": small}, None,
         VALIDATE + "target resources requests storage size is smaller than the source 1048576 < 2097152"),
        ("not-yet", clone("pvc", src, "does-not-exist-yet"), None, ""),
        ("no-ds", {"sourceRef": {"kind": "DataSource", "name": "nope"}, "storage": {}}, None,
         'admission webhook "datavolume-mutate.cdi.kubevirt.io" denied the request: '
         'datasources.cdi.kubevirt.io "nope" not found'),
        ("no-ds-pre", {"sourceRef": {"kind": "DataSource", "name": "nope"}, "storage": {}},
         {"cdi.kubevirt.io/storage.prePopulated": "no-ds-pre"}, VALIDATE + f"SourceRef DataSource/{tgt}/nope not found"),
        ("taken", {"source": {"blank": {}}, "storage": SIZE}, None,
         VALIDATE + f"Destination PVC {tgt}/taken already exists"),
        ("no-size", {"source": {"blank": {}}, "storage": {}}, None, VALIDATE + "Storage size is missing"),
    ]
    got = {name: create(kube, tgt, name, spec, annotations=annotations)[1] for name, spec, annotations, _ in cases}
    assert got == {name: message for name, _, _, message in cases}


def test_snapshot_restore_size_is_checked(ready: dict[str, str], kube: client.ApiClient) -> None:
    """A real snapshot of a real volume on the node's CSI driver, so ``restoreSize`` is the driver's."""
    tgt, src = ready["tgt"], ready["src"]
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    core.create_namespaced_persistent_volume_claim(src, {"metadata": {"name": "snap-src"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": csi.CLASS_IMMEDIATE,
        "resources": {"requests": {"storage": "16Mi"}}}})
    wait_for("the source PVC to bind",
             lambda: core.read_namespaced_persistent_volume_claim("snap-src", src).status.phase == "Bound", 60)
    custom.create_namespaced_custom_object("snapshot.storage.k8s.io", "v1", src, "volumesnapshots", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "snap"},
        "spec": {"volumeSnapshotClassName": csi.SNAPSHOT_CLASS, "source": {"persistentVolumeClaimName": "snap-src"}}})
    restore = int(parse_quantity(wait_for("the snapshot's restoreSize", lambda: (custom.get_namespaced_custom_object(
        "snapshot.storage.k8s.io", "v1", src, "volumesnapshots", "snap").get("status") or {}).get("restoreSize"), 90)))
    assert restore >= 16 << 20

    def spec(size: int) -> dict[str, Any]:
        return {**clone("snapshot", src, "snap"), "storage": {"resources": {"requests": {"storage": str(size)}}}}
    assert create(kube, tgt, "from-snap-small", spec(restore - (1 << 20)))[1] == \
        VALIDATE + "target resources requests storage size is smaller than the source"
    code, message, _ = create(kube, tgt, "from-snap", spec(restore))
    assert code == 201, message


# -- straight to the server ----------------------------------------------------------------------------


def post(token_api: TokenApi, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """A POST with no client certificate, trusting the server's CA."""
    context = ssl.create_default_context(cafile=str(token_api.serving_ca))
    request = urllib.request.Request(f"{token_api.url}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_garbage_review_is_a_400(token_api: TokenApi) -> None:
    code, status = post(token_api, "/datavolume-validate", b'{"kind": "AdmissionReview", "request": 7}')
    assert code == 400
    assert status["kind"] == "Status" and status["message"] == (
        "/datavolume-validate: the body is not an admission.k8s.io/v1 AdmissionReview")
    code, status = post(token_api, "/datavolume-mutate", b"\x00not json")
    assert code == 400 and status["message"].startswith("/datavolume-mutate: the body is not JSON")


def test_oversized_review_is_a_413(token_api: TokenApi) -> None:
    """Refused on the declared length, before a byte of the body is read (so none is sent here)."""
    context = ssl.create_default_context(cafile=str(token_api.serving_ca))
    conn = http.client.HTTPSConnection(token_api.host_ip, token_api.port, context=context, timeout=10)
    try:
        conn.putrequest("POST", "/datavolume-validate")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(9 << 20))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert "larger than 8388608 bytes" in json.loads(response.read())["message"]
    finally:
        conn.close()


def test_other_paths_still_need_the_front_proxy(token_api: TokenApi) -> None:
    code, status = post(token_api, "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/x/uploadtokenrequests", b"{}")
    assert code == 401 and status["reason"] == "Unauthorized"
