"""UploadTokenRequests through the real kube-apiserver's aggregation layer, with the real kubectl.

Behaviours under test:

* ``kubectl create -f utr.yaml -o json`` by a user a Role allows answers the object with
  ``status.token`` that validates for exactly that namespace and PVC (PS256, CDI's claims), the
  request's name and a creationTimestamp; ``generateName`` works; no stderr noise;
* a user without RBAC gets ``Forbidden`` naming the user and resource (kube-apiserver's own RBAC
  check already refuses it before proxying: it authorizes aggregated resources like any other;
  the server's SubjectAccessReview, the check an aggregated server must make itself, is exercised
  by the direct requests below);
* a namespace editor (built-in ``edit`` bound by RoleBinding, which absorbed ``cdi.kubevirt.io:edit``
  from deploy/) may create them in that namespace, and is forbidden in another;
* a request without ``spec.pvcName`` is refused by the server (422, naming the field) and, with
  kubectl's default validation, already by kubectl from the aggregated OpenAPI schema; a bad PVC
  name is refused by the server;
* ``kubectl api-resources --api-group=upload.cdi.kubevirt.io`` lists the resource, short names and
  the single verb ``create``; ``kubectl explain -o plaintext-openapiv2`` reads the schema;
* GET, list and delete are refused with ``MethodNotAllowed``;
* straight to the server (not through kube-apiserver): no client certificate -> 401 ``Status``; a
  certificate from the front-proxy CA with a CN not in ``requestheader-allowed-names`` -> 401; the
  real front-proxy certificate without a user header -> 401; with headers, authorization follows
  RBAC for the user *and* groups from ``X-Remote-Group`` (``system:masters`` is allowed);
  ``fieldValidation=Strict`` refuses unknown fields, ``Warn`` answers a ``Warning`` header;
  discovery needs the certificate but no RBAC; ``/healthz`` needs nothing.
"""

from __future__ import annotations

import datetime
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client

from kubeenv.controlplane import ControlPlane
from tests.apiserver.conftest import User, bind, make_user
from tests.kube.fixtures import wait_for
from tests.servers.token_api import TokenApi
from uploadproxy import tokens

GROUP = "upload.cdi.kubevirt.io"
COLLECTION = "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests"


def utr(name: str, pvc: str | None, **metadata: Any) -> dict[str, Any]:
    spec = {} if pvc is None else {"pvcName": pvc}
    return {"apiVersion": f"{GROUP}/v1beta1", "kind": "UploadTokenRequest",
            "metadata": {"name": name, **metadata} if name else dict(metadata), "spec": spec}


def kubectl(plane: ControlPlane, kubeconfig: Path, *args: str,
            cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--cache-dir", str(cache)] if cache else []
    return subprocess.run([str(plane.kubectl), "--kubeconfig", str(kubeconfig), *extra, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kubectl's discovery cache for this module: fresh, so no other test's view of the cluster leaks in."""
    return tmp_path_factory.mktemp("kubectl-cache")


@pytest.fixture(scope="module")
def users(kube: client.ApiClient, control_plane: ControlPlane, namespace: str, aggregated_roles: None,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, User]:
    workdir = tmp_path_factory.mktemp("users")
    made = {name: make_user(kube, control_plane, namespace, name, workdir) for name in ("uploader", "nobody", "editor")}
    rbac = client.RbacAuthorizationV1Api(kube)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "token-requester"}, "rules": [
        {"apiGroups": [GROUP], "resources": ["uploadtokenrequests"], "verbs": ["create"]}]})
    bind(kube, namespace, made["uploader"].name, "Role", "token-requester")
    bind(kube, namespace, made["editor"].name, "ClusterRole", "edit")
    return made


Create = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def create(control_plane: ControlPlane, token_api: TokenApi, namespace: str, cache: Path, tmp_path: Path) -> Create:
    """``kubectl create -f utr.yaml -o json`` as a user; returns the completed process."""

    def run(user: User, body: dict[str, Any], *flags: str, ns: str = namespace) -> subprocess.CompletedProcess[str]:
        manifest = tmp_path / "utr.yaml"
        manifest.write_text(yaml.safe_dump(body, sort_keys=False))
        return kubectl(control_plane, user.kubeconfig, "create", "-n", ns, "-f", str(manifest), "-o", "json", *flags,
                       cache=cache)

    return run


# -- through kube-apiserver, with kubectl ------------------------------------------------------


def test_allowed_user_gets_a_token_for_the_pvc(create: Create, users: dict[str, User], token_api: TokenApi,
                                               namespace: str) -> None:
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    proc = create(users["uploader"], utr("token-for-virtctl", "disk-1", labels={"a": "b"}))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    created = json.loads(proc.stdout)
    assert (created["apiVersion"], created["kind"]) == (f"{GROUP}/v1beta1", "UploadTokenRequest")
    meta = created["metadata"]
    assert (meta["name"], meta["namespace"], meta["labels"]) == ("token-for-virtctl", namespace, {"a": "b"})
    stamp = datetime.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
    assert before - datetime.timedelta(seconds=2) <= stamp <= before + datetime.timedelta(seconds=30)
    assert created["spec"] == {"pvcName": "disk-1"}
    payload = tokens.validate_for(created["status"]["token"], token_api.public_key, namespace, "disk-1")
    assert payload.operation == "Upload"
    with pytest.raises(tokens.InvalidToken):
        tokens.validate_for(created["status"]["token"], token_api.public_key, namespace, "disk-2")


def test_generate_name(create: Create, users: dict[str, User]) -> None:
    proc = create(users["uploader"], utr("", "disk-1", generateName="upload-"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metadata"]["name"].startswith("upload-")


def test_user_without_rbac_is_forbidden(create: Create, users: dict[str, User], namespace: str) -> None:
    proc = create(users["nobody"], utr("t", "disk-1"))
    assert proc.returncode != 0
    assert "Error from server (Forbidden)" in proc.stderr
    assert (f'User "{users["nobody"].name}" cannot create resource "uploadtokenrequests" in API group '
            f'"{GROUP}" in the namespace "{namespace}"') in proc.stderr


def test_namespace_editor_via_aggregated_edit_role(create: Create, users: dict[str, User], namespace: str,
                                                   kube: client.ApiClient) -> None:
    proc = create(users["editor"], utr("t", "disk-1"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"]["token"]
    other = f"{namespace}-other"
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": other}})
    try:
        elsewhere = create(users["editor"], utr("t", "disk-1"), ns=other)
    finally:
        client.CoreV1Api(kube).delete_namespace(other)
    assert elsewhere.returncode != 0 and "Forbidden" in elsewhere.stderr


def test_missing_pvc_name_is_refused_by_the_server(create: Create, users: dict[str, User]) -> None:
    proc = create(users["uploader"], utr("no-pvc", None), "--validate=false")
    assert proc.returncode != 0
    # kubectl words a 422 with causes from the Status details
    assert 'The UploadTokenRequest "no-pvc" is invalid: spec.pvcName: Required value: the name of the ' \
           'PersistentVolumeClaim to upload to' in proc.stderr


def test_bad_pvc_name_is_refused_by_the_server(create: Create, users: dict[str, User]) -> None:
    proc = create(users["uploader"], utr("bad", "Not_A_PVC"), "--validate=false")
    assert proc.returncode != 0
    assert 'spec.pvcName: Invalid value: "Not_A_PVC"' in proc.stderr


def test_missing_pvc_name_is_refused_by_kubectl_from_the_schema(create: Create, users: dict[str, User],
                                                                kube: client.ApiClient) -> None:
    """Client-side validation as an ordinary user, who may not list CRDs (see cdi.apiserver.openapi)."""
    # kube-apiserver merges our /openapi/v2 asynchronously after the APIService becomes Available
    wait_for("the aggregated OpenAPI to describe UploadTokenRequest",
             lambda: b"io.kubevirt.cdi.upload.v1beta1.UploadTokenRequest" in _raw(kube, "/openapi/v2"), timeout=60)
    proc = create(users["uploader"], utr("no-pvc", None))
    assert proc.returncode != 0
    assert 'missing required field "pvcName"' in proc.stderr, proc.stderr
    unknown = create(users["uploader"], {**utr("x", "disk-1"), "spec": {"pvcName": "disk-1", "size": "1Gi"}})
    assert unknown.returncode != 0 and 'unknown field "size"' in unknown.stderr, unknown.stderr


def test_api_resources_lists_it(control_plane: ControlPlane, token_api: TokenApi, cache: Path) -> None:
    proc = kubectl(control_plane, control_plane.kubeconfig, "api-resources", f"--api-group={GROUP}", "-o", "wide",
                   cache=cache)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert [row.split() for row in rows] == [
        ["uploadtokenrequests", "utr,utrs", f"{GROUP}/v1beta1", "true", "UploadTokenRequest", "create"]]


def test_explain_reads_the_schema(control_plane: ControlPlane, token_api: TokenApi, cache: Path) -> None:
    # v2 on purpose: the server publishes no v3 document (see cdi.apiserver.openapi)
    proc = kubectl(control_plane, control_plane.kubeconfig, "explain", "uploadtokenrequests.spec",
                   "--output=plaintext-openapiv2", cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert "pvcName" in proc.stdout and "-required-" in proc.stdout


@pytest.mark.parametrize("args", [("get", "uploadtokenrequests"), ("get", "utr", "some-name"),
                                  ("delete", "utr", "some-name")], ids=["list", "get", "delete"])
def test_only_create_is_served(control_plane: ControlPlane, token_api: TokenApi, namespace: str, cache: Path,
                               args: tuple[str, ...]) -> None:
    proc = kubectl(control_plane, control_plane.kubeconfig, *args, "-n", namespace, cache=cache)
    assert proc.returncode != 0
    assert "the server does not allow this method on the requested resource" in proc.stderr, proc.stderr


# -- straight to the server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def front_proxy(control_plane: ControlPlane) -> tuple[Path, Path]:
    """kube-apiserver's own front-proxy client certificate: what the aggregator presents."""
    pki = control_plane.ca.parent
    return pki / "front-proxy-client.crt", pki / "front-proxy-client.key"


@pytest.fixture(scope="module")
def impostor(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Signed by the real front-proxy CA, but with a CN kube-apiserver does not allow."""
    pki = control_plane.ca.parent
    ca_cert = x509.load_pem_x509_certificate((pki / "front-proxy-ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "front-proxy-ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("impostor")
    (directory / "c.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "c.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return directory / "c.crt", directory / "c.key"


def direct(api: TokenApi, method: str, path: str, *, cert: tuple[Path, Path] | None = None,
           headers: dict[str, str] | None = None, body: Any = None) -> tuple[int, dict[str, str], Any]:
    """``(status, headers, decoded JSON or text)`` of one request straight to the server."""
    context = ssl.create_default_context(cafile=str(api.serving_ca))
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(api.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, dict(response.headers), _decode(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), _decode(error.read())


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


def _raw(kube: client.ApiClient, path: str) -> bytes:
    response = kube.call_api(path, "GET", header_params={"Accept": "application/json"}, _preload_content=False,
                             _return_http_data_only=True)
    return bytes(response.data)


def test_no_client_certificate_is_401(token_api: TokenApi, namespace: str) -> None:
    for method, path in [("POST", COLLECTION.format(ns=namespace)), ("GET", "/apis"), ("GET", "/openapi/v2")]:
        code, _, body = direct(token_api, method, path, headers={"X-Remote-User": "system:admin",
                                                                 "X-Remote-Group": "system:masters"},
                               body=utr("t", "disk-1") if method == "POST" else None)
        assert code == 401, (path, body)
        assert (body["kind"], body["reason"], body["code"]) == ("Status", "Unauthorized", 401)
        assert "front-proxy" in body["message"]


def test_front_proxy_ca_but_wrong_name_is_401(token_api: TokenApi, namespace: str,
                                              impostor: tuple[Path, Path]) -> None:
    code, _, body = direct(token_api, "POST", COLLECTION.format(ns=namespace), cert=impostor,
                           headers={"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"},
                           body=utr("t", "disk-1"))
    assert code == 401
    assert "'impostor' is not one of the allowed front-proxy names ['front-proxy-client']" in body["message"]


def test_certificate_from_another_ca_fails_the_handshake(token_api: TokenApi, control_plane: ControlPlane) -> None:
    admin = (control_plane.ca.parent / "admin.crt", control_plane.ca.parent / "admin.key")
    with pytest.raises(OSError):  # an ssl.SSLError or a reset, depending on when the alert arrives
        direct(token_api, "GET", "/apis", cert=admin)


def test_front_proxy_without_user_is_401(token_api: TokenApi, namespace: str, front_proxy: tuple[Path, Path]) -> None:
    code, _, body = direct(token_api, "POST", COLLECTION.format(ns=namespace), cert=front_proxy,
                           body=utr("t", "disk-1"))
    assert code == 401 and "no user" in body["message"]


def test_front_proxy_headers_are_what_gets_authorized(token_api: TokenApi, namespace: str,
                                                      front_proxy: tuple[Path, Path]) -> None:
    path = COLLECTION.format(ns=namespace)
    code, _, body = direct(token_api, "POST", path, cert=front_proxy, headers={"X-Remote-User": "alice"},
                           body=utr("t", "disk-1"))
    assert code == 403 and body["reason"] == "Forbidden" and 'User "alice" cannot create' in body["message"]
    code, _, body = direct(token_api, "POST", path, cert=front_proxy, body=utr("t", "disk-1"),
                           headers={"X-Remote-User": "alice", "X-Remote-Group": "system:masters",
                                    "X-Remote-Extra-Authentication.kubernetes.io%2fcredential-id": "X509SHA256=ab"})
    assert code == 201, body
    tokens.validate_for(body["status"]["token"], token_api.public_key, namespace, "disk-1")


def test_field_validation(token_api: TokenApi, namespace: str, front_proxy: tuple[Path, Path]) -> None:
    admin = {"X-Remote-User": "admin", "X-Remote-Group": "system:masters"}
    extra = {**utr("t", "disk-1"), "spec": {"pvcName": "disk-1", "size": "1Gi"}}
    path = COLLECTION.format(ns=namespace)
    code, _, body = direct(token_api, "POST", path + "?fieldValidation=Strict", cert=front_proxy, headers=admin,
                           body=extra)
    assert code == 400 and 'strict decoding error: unknown field "spec.size"' in body["message"]
    code, headers, _ = direct(token_api, "POST", path + "?fieldValidation=Warn&dryRun=All", cert=front_proxy,
                              headers=admin, body=extra)
    assert code == 201 and 'unknown field \\"spec.size\\"' in headers["Warning"]
    code, _, body = direct(token_api, "POST", path + "?dryRun=Sometimes", cert=front_proxy, headers=admin, body=extra)
    assert code == 400
    code, _, body = direct(token_api, "PUT", path, cert=front_proxy, headers=admin, body=extra)
    assert (code, body["reason"]) == (405, "MethodNotAllowed")


def test_bad_json_is_400(token_api: TokenApi, namespace: str, front_proxy: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(cafile=str(token_api.serving_ca))
    context.load_cert_chain(*map(str, front_proxy))
    request = urllib.request.Request(token_api.url + COLLECTION.format(ns=namespace), data=b"{not json", method="POST",
                                     headers={"X-Remote-User": "admin", "X-Remote-Group": "system:masters",
                                              "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, context=context, timeout=10)
    body = json.loads(raised.value.read())
    assert (raised.value.code, body["reason"]) == (400, "BadRequest")


def test_discovery_needs_the_certificate_only(token_api: TokenApi, front_proxy: tuple[Path, Path]) -> None:
    code, _, body = direct(token_api, "GET", "/apis/upload.cdi.kubevirt.io/v1beta1", cert=front_proxy)
    assert code == 200 and body["resources"][0]["verbs"] == ["create"]
    code, headers, _ = direct(token_api, "GET", "/openapi/v2", cert=front_proxy)
    assert code == 200
    code, _, _ = direct(token_api, "GET", "/openapi/v2", cert=front_proxy, headers={"If-None-Match": headers["ETag"]})
    assert code == 304
    code, _, body = direct(token_api, "GET", "/nothing/here", cert=front_proxy)
    assert (code, body["reason"]) == (404, "NotFound")
    assert direct(token_api, "GET", "/healthz")[0] == 200


@pytest.fixture(autouse=True)
def _server_alive(token_api: TokenApi) -> Iterator[None]:
    yield
    assert token_api.process.alive(), token_api.process.log_tail()
