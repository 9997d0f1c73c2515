"""cdi-apiserver on the host, registered with the test cluster's aggregator: UploadTokenRequests for real.

No pytest in here, so any test package can build its own fixture around it::

    api = TokenApi.start(kube, control_plane, node.node_ip, tmp_path / "token-api")
    ...  # kubectl create -f utr.yaml; tokens.validate_for(token, api.public_key, ns, pvc)
    api.stop()                   # or: with TokenApi.start(...) as api: ...

What :meth:`TokenApi.start` sets up, in a fresh namespace ``cdi-token-api-<hex>``:

* a serving CA and certificate for ``cdi-api.<ns>.svc`` (the name the aggregator checks) and the
  host address, and an RSA signing key (``private_key_path``; ``public_key_pem`` for an upload proxy);
* the server's identity exactly as ``deploy/`` grants it (the same builders from
  :mod:`cdi.apiserver.manifests`): ServiceAccount ``cdi-apiserver`` bound to ``system:auth-delegator``,
  to ``extension-apiserver-authentication-reader`` in kube-system and to a copy of the webhooks'
  read-only ClusterRole, with a TokenRequest token in
  a kubeconfig, so a missing grant in the shipped RBAC fails here too;
* ``python -m cdi.apiserver`` listening on ``host_ip`` (endpoint addresses may not be loopback;
  the node's ``node_ip`` is the host as the cluster sees it);
* a Service ``cdi-api`` without selector plus an **EndpointSlice** naming ``host_ip``: with
  ``--enable-aggregator-routing=true`` kube-apiserver 1.34 resolves an APIService through
  EndpointSlices (``kubernetes.io/service-name`` label, a port whose *name* matches the Service
  port's), not through the legacy Endpoints object;
* the APIService ``v1beta1.upload.cdi.kubevirt.io`` with ``caBundle`` (replacing any other, which is
  not put back: there is only one per cluster), then waits until it is ``Available`` and the group
  shows up in kube-apiserver's aggregated discovery (what ``kubectl api-resources`` reads).

:meth:`TokenApi.stop` removes the APIService first (an unavailable one breaks discovery and
namespace deletion cluster-wide), then stops the process and deletes what it created.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client
from kubernetes.client.rest import ApiException

from cdi.apiserver import discovery
from cdi.apiserver import manifests as apiserver
from kubeenv.controlplane import ControlPlane
from kubeenv.process import Process
from tests.servers.pki import make_ca
from uploadproxy import tokens

ROOT = Path(__file__).resolve().parents[2]
AGGREGATED_DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
TOKEN_SECONDS = 24 * 3600


class TokenApiError(RuntimeError):
    """The server or its registration did not come up; the message carries the server's log."""


@dataclass
class TokenApi:
    """A running cdi-apiserver and its registration; see the module docstring."""

    namespace: str
    host_ip: str
    port: int
    workdir: Path
    private_key_path: Path
    public_key_pem: bytes
    serving_ca: Path
    """The CA of the server's certificate (what the APIService's caBundle holds)."""
    process: Process
    kube: client.ApiClient
    _undo: list[Callable[[], Any]] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        """Where the server listens, for talking to it directly (not through kube-apiserver)."""
        return f"https://{self.host_ip}:{self.port}"

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return tokens.load_public_key(self.public_key_pem)

    @property
    def log(self) -> Path:
        return self.process.log

    @classmethod
    def start(cls, kube: client.ApiClient, control_plane: ControlPlane, host_ip: str, workdir: Path, *,
              timeout: float = 60.0) -> TokenApi:
        """Start and register the server; on failure undo everything and raise :class:`TokenApiError`."""
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        namespace = f"cdi-token-api-{uuid.uuid4().hex[:6]}"
        undo: list[Callable[[], Any]] = []
        process: Process | None = None
        try:
            kubeconfig = _identity(kube, control_plane, namespace, workdir, undo)
            serving_ca, cert, key = _serving_cert(workdir, namespace, host_ip)
            signing_key = tokens.generate_key()
            private_key_path = workdir / "signing-key.pem"
            private_key_path.write_bytes(tokens.private_key_pem(signing_key))
            private_key_path.chmod(0o600)
            port = _free_port(host_ip)
            process = Process.spawn("cdi-apiserver", [
                sys.executable, "-m", "cdi.apiserver", f"--kubeconfig={kubeconfig}", f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}", f"--signing-key-file={private_key_path}",
                f"--bind-address={host_ip}", f"--secure-port={port}",
            ], workdir / "cdi-apiserver.log", die_with_parent=True, cwd=ROOT)
            api = cls(namespace, host_ip, port, workdir, private_key_path, tokens.public_key_pem(signing_key),
                      serving_ca, process, kube, undo)
            deadline = time.monotonic() + timeout
            api._wait("the server's /readyz", api._ready, deadline)
            api._register()
            api._wait(f"APIService {apiserver.API_SERVICE} Available", api._available, deadline)
            api._wait("the group in kube-apiserver's aggregated discovery", api._discovered, deadline)
            return api
        except BaseException:
            if process is not None:
                _delete_api_service(kube, namespace)
                process.stop(grace=5)
            _run(undo)
            raise

    def stop(self) -> None:
        """Unregister, stop the process, delete the namespace and bindings (idempotent)."""
        _delete_api_service(self.kube, self.namespace)
        self.process.stop(grace=5)
        _run(self._undo)

    def __enter__(self) -> TokenApi:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    # -- registration --------------------------------------------------------------------------

    def _register(self) -> None:
        core = client.CoreV1Api(self.kube)
        core.create_namespaced_service(self.namespace, {
            "metadata": {"name": apiserver.SERVICE},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": self.port, "protocol": "TCP"}]}})
        client.DiscoveryV1Api(self.kube).create_namespaced_endpoint_slice(self.namespace, {
            "metadata": {"name": f"{apiserver.SERVICE}-host",
                         "labels": {"kubernetes.io/service-name": apiserver.SERVICE,
                                    "endpointslice.kubernetes.io/managed-by": "cdi-py-tests"}},
            "addressType": "IPv6" if ":" in self.host_ip else "IPv4",
            "endpoints": [{"addresses": [self.host_ip], "conditions": {"ready": True}}],
            # the aggregator matches the slice's port by the Service port's name: it must be set
            "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}]})
        body = apiserver.api_service(namespace=self.namespace, ca_bundle=self.serving_ca.read_bytes())
        registration = client.ApiregistrationV1Api(self.kube)
        try:
            registration.create_api_service(body)
        except ApiException as error:
            if error.status != 409:
                raise
            current = registration.read_api_service(apiserver.API_SERVICE)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            registration.replace_api_service(apiserver.API_SERVICE, body)

    # -- readiness -----------------------------------------------------------------------------

    def _wait(self, what: str, ready: Callable[[], bool], deadline: float) -> None:
        while not ready():
            if not self.process.alive():
                raise TokenApiError(f"cdi-apiserver exited while waiting for {what}:\n{self.process.log_tail()}")
            if time.monotonic() > deadline:
                raise TokenApiError(f"timed out waiting for {what}\n{self._explain()}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.serving_ca))
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _available(self) -> bool:
        stored = client.ApiregistrationV1Api(self.kube).read_api_service(apiserver.API_SERVICE)
        return any(c.type == "Available" and c.status == "True" for c in stored.status.conditions or [])

    def _discovered(self) -> bool:
        listing = _get_json(self.kube, "/apis", AGGREGATED_DISCOVERY)
        for group in listing.get("items", []):
            if group["metadata"]["name"] == discovery.GROUP:
                return any(v.get("freshness", "Current") == "Current" and v.get("resources")
                           for v in group.get("versions", []))
        return False

    def _explain(self) -> str:
        try:
            stored = client.ApiregistrationV1Api(self.kube).read_api_service(apiserver.API_SERVICE)
            conditions = [f"{c.type}={c.status} {c.reason}: {c.message}" for c in stored.status.conditions or []]
        except ApiException as error:
            conditions = [f"APIService unreadable: {error.status} {error.reason}"]
        return "APIService: " + "; ".join(conditions) + f"\n== cdi-apiserver log:\n{self.process.log_tail()}"


def _identity(kube: client.ApiClient, plane: ControlPlane, namespace: str, workdir: Path,
              undo: list[Callable[[], Any]]) -> Path:
    """The namespace, the deploy/ RBAC for its ``cdi-apiserver`` ServiceAccount, and a kubeconfig with its token."""
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    core.create_namespace({"metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "cdi-py-tests"}}})
    undo.append(lambda: core.delete_namespace(namespace))
    core.create_namespaced_service_account(namespace, apiserver.service_account(namespace))
    delegator = apiserver.auth_delegator_binding(namespace, name=f"{apiserver.NAME}:auth-delegator:{namespace}")
    rbac.create_cluster_role_binding(delegator)
    undo.append(lambda: rbac.delete_cluster_role_binding(delegator["metadata"]["name"]))
    reader = apiserver.auth_reader_binding(namespace, name=f"{apiserver.NAME}:authentication-reader:{namespace}")
    rbac.create_namespaced_role_binding("kube-system", reader)
    undo.append(lambda: rbac.delete_namespaced_role_binding(reader["metadata"]["name"], "kube-system"))
    role = apiserver.cluster_role(name=f"{apiserver.NAME}:{namespace}")  # what the DataVolume webhooks read
    rbac.create_cluster_role(role)
    undo.append(lambda: rbac.delete_cluster_role(role["metadata"]["name"]))
    binding = apiserver.cluster_role_binding(namespace, name=role["metadata"]["name"], role=role["metadata"]["name"])
    rbac.create_cluster_role_binding(binding)
    undo.append(lambda: rbac.delete_cluster_role_binding(binding["metadata"]["name"]))
    token = core.create_namespaced_service_account_token(
        apiserver.NAME, namespace, {"spec": {"expirationSeconds": TOKEN_SECONDS}}).status.token
    return write_token_kubeconfig(workdir / "cdi-apiserver.kubeconfig", plane, token, f"{namespace}/{apiserver.NAME}")


def write_token_kubeconfig(path: Path, plane: ControlPlane, token: str, user: str) -> Path:
    """A kubeconfig for ``plane`` that authenticates with a bearer ``token`` (e.g. from a TokenRequest)."""
    ca = base64.b64encode(plane.ca.read_bytes()).decode()
    config = {"apiVersion": "v1", "kind": "Config", "preferences": {},
              "clusters": [{"name": "cdi-py", "cluster": {"server": plane.server, "certificate-authority-data": ca}}],
              "users": [{"name": user, "user": {"token": token}}],
              "contexts": [{"name": "default", "context": {"cluster": "cdi-py", "user": user}}],
              "current-context": "default"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _serving_cert(workdir: Path, namespace: str, host_ip: str) -> tuple[Path, Path, Path]:
    ca = make_ca(workdir / "pki", "cdi-apiserver-test-ca")
    pair = ca.issue(workdir / "pki", "cdi-apiserver", dns=(f"{apiserver.SERVICE}.{namespace}.svc", "localhost"),
                    ips=tuple(dict.fromkeys((host_ip, "127.0.0.1"))))
    return ca.cert, pair.cert, pair.key


def _delete_api_service(kube: client.ApiClient, namespace: str) -> None:
    """Remove the APIService if it still points into ``namespace`` (someone may have replaced it since)."""
    registration = client.ApiregistrationV1Api(kube)
    try:
        current = registration.read_api_service(apiserver.API_SERVICE)
        if current.spec.service is not None and current.spec.service.namespace == namespace:
            registration.delete_api_service(apiserver.API_SERVICE)
    except ApiException as error:
        if error.status != 404:
            raise


def _get_json(kube: client.ApiClient, path: str, accept: str) -> dict[str, Any]:
    response = kube.call_api(path, "GET", header_params={"Accept": accept}, _preload_content=False,
                             _return_http_data_only=True)
    return dict(json.loads(response.data))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _run(undo: list[Callable[[], Any]]) -> None:
    """Undo in reverse order, each step on its own: one that fails (already gone) must not skip the rest."""
    while undo:
        step = undo.pop()
        try:
            step()
        except ApiException as error:
            if error.status != 404:
                raise
