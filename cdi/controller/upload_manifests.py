"""The upload side of ``deploy/``: the upload proxy, and what the controller mounts to run upload servers.

Secrets, named as CDI's operator names them (the installer creates them; nothing here makes keys):

* ``cdi-uploadproxy-server-cert`` (``tls.crt``/``tls.key``): the proxy's public HTTPS certificate;
* ``cdi-uploadserver-client-cert`` (``tls.crt``/``tls.key``): the proxy's client certificate,
  CN ``client.upload-server.cdi.kubevirt.io``, which upload servers insist on;
* ``cdi-uploadserver-signer`` (``tls.crt``/``tls.key``): the CA the controller signs each upload
  pod's serving certificate with; the proxy trusts its ``tls.crt``;
* ``cdi-uploadserver-client-signer`` (``tls.crt``): the CA of the proxy's client certificate, which
  the controller hands to upload servers;
* ``cdi-api-signing-key`` (``id_rsa.pub``): the token verification key (cdi-apiserver signs).

The proxy's ServiceAccount may only read PVCs: it learns from their annotations whether an
upload server is ready, and dials ``cdi-upload-<pvc>.<ns>.svc`` through cluster DNS.
"""

from __future__ import annotations

from typing import Any

Manifest = dict[str, Any]

NAMESPACE = "cdi"
NAME = "cdi-uploadproxy"
PORT = 8443
RUN_AS_USER = 1001
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "cdi-py",
          "app.kubernetes.io/component": "uploadproxy"}
UPLOADSERVER_IMAGE = "quay.io/cdi-py/cdi-py-uploadserver:latest"

NGINX_DIR = "/var/run/cdi/nginx"
"""Writable (an emptyDir; the root filesystem is read-only): nginx's config, pid and temp files."""

SERVER_CERT = "cdi-uploadproxy-server-cert"
CLIENT_CERT = "cdi-uploadserver-client-cert"
SERVER_SIGNER = "cdi-uploadserver-signer"
CLIENT_SIGNER = "cdi-uploadserver-client-signer"
SIGNING_KEY = "cdi-api-signing-key"


def _meta(name: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(LABELS)}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def service_account() -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME)}


def cluster_role() -> Manifest:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _meta(NAME, False),
            "rules": [{"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get"]}]}


def cluster_role_binding() -> Manifest:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": _meta(NAME, False),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]}


def _secret_volume(name: str, secret: str, *keys: str) -> dict[str, Any]:
    source: dict[str, Any] = {"secretName": secret, "defaultMode": 0o440}
    if keys:
        source["items"] = [{"key": key, "path": key} for key in keys]
    return {"name": name, "secret": source}


def deployment() -> Manifest:
    env = {
        "APISERVER_PUBLIC_KEY_FILE": "/var/run/cdi/token-key/id_rsa.pub",
        "TLS_CERT_FILE": "/var/run/cdi/server/tls.crt", "TLS_KEY_FILE": "/var/run/cdi/server/tls.key",
        "CLIENT_CERT_FILE": "/var/run/cdi/client/tls.crt", "CLIENT_KEY_FILE": "/var/run/cdi/client/tls.key",
        "SERVER_CA_FILE": "/var/run/cdi/server-ca/tls.crt", "UPLOADPROXY_PORT": str(PORT),
        # nginx relays the bodies (the image has it), asking the proxy process about each request
        "UPLOADPROXY_DATA_PATH": "nginx", "UPLOADPROXY_NGINX_DIR": NGINX_DIR,
    }
    container = {
        "name": "uploadproxy", "image": "quay.io/cdi-py/cdi-py-controller:latest", "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "uploadproxy.proxy"],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": "https", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "https", "scheme": "HTTPS"}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True, "runAsNonRoot": True, "runAsUser": RUN_AS_USER,
                            "runAsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [*({"name": n, "mountPath": f"/var/run/cdi/{n}", "readOnly": True}
                           for n in ("server", "client", "server-ca", "token-key")),
                         {"name": "nginx", "mountPath": NGINX_DIR}],
    }
    volumes = [_secret_volume("server", SERVER_CERT), _secret_volume("client", CLIENT_CERT),
               _secret_volume("server-ca", SERVER_SIGNER, "tls.crt"),
               _secret_volume("token-key", SIGNING_KEY, "id_rsa.pub"),
               {"name": "nginx", "emptyDir": {"sizeLimit": "64Mi"}}]
    selector = {"app.kubernetes.io/name": NAME}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(NAME),
            "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": dict(LABELS)}, "spec": {
                         "serviceAccountName": NAME,
                         "securityContext": {"runAsNonRoot": True, "fsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}},
                         "containers": [container], "volumes": volumes}}}}


def service() -> Manifest:
    """``cdi-uploadproxy`` on 443; expose it (Ingress, LoadBalancer) and set CDIConfig
    ``spec.uploadProxyURLOverride`` or the controller's ``UPLOADPROXY_URL`` to where users reach it."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(NAME),
            "spec": {"selector": {"app.kubernetes.io/name": NAME},
                     "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]}}


def controller_env() -> list[dict[str, Any]]:
    """What the controller needs to run upload servers (see :mod:`cdi.controller.__main__`)."""
    return [{"name": "UPLOADSERVER_IMAGE", "value": UPLOADSERVER_IMAGE},
            {"name": "UPLOADSERVER_CA_CERT_FILE", "value": "/var/run/cdi/uploadserver-signer/tls.crt"},
            {"name": "UPLOADSERVER_CA_KEY_FILE", "value": "/var/run/cdi/uploadserver-signer/tls.key"},
            {"name": "UPLOADPROXY_CLIENT_CA_FILE", "value": "/var/run/cdi/uploadserver-client-signer/tls.crt"}]


def controller_mounts() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The controller's (volumes, volumeMounts) for the two signers."""
    volumes = [_secret_volume("uploadserver-signer", SERVER_SIGNER),
               _secret_volume("uploadserver-client-signer", CLIENT_SIGNER, "tls.crt")]
    mounts = [{"name": v["name"], "mountPath": f"/var/run/cdi/{v['name']}", "readOnly": True} for v in volumes]
    return volumes, mounts


MANIFESTS = (
    ("15-uploadproxy-serviceaccount.yaml", service_account),
    ("16-uploadproxy-clusterrole.yaml", cluster_role),
    ("17-uploadproxy-clusterrolebinding.yaml", cluster_role_binding),
    ("18-uploadproxy-deployment.yaml", deployment),
    ("19-uploadproxy-service.yaml", service),
)
