"""cdi-apiserver's deployment manifests, rendered into ``deploy/`` by ``python -m cdi.controller.manifests``.

What runs where, and the privileges each piece gets:

* ServiceAccount ``cdi/cdi-apiserver``, bound cluster-wide to ``system:auth-delegator`` (create
  SubjectAccessReviews, and TokenReviews which it does not use) and, in ``kube-system``, to the Role
  ``extension-apiserver-authentication-reader`` (the front-proxy CA and header names), and to the
  ClusterRole ``cdi-apiserver``: ``get`` on what the DataVolume webhooks check (PVCs,
  VolumeSnapshots, DataSources, namespaces), nothing else (no list, no watch, no write). The signing
  key and serving certificate arrive as mounted Secrets, so it reads no Secret itself.
* Deployment ``cdi-apiserver`` (the controller's image, ``python -m cdi.apiserver``) behind Service
  ``cdi-api`` (443 -> 8443), as CDI names them; it mounts CDI's Secrets ``cdi-apiserver-server-cert``
  (``tls.crt``/``tls.key``) and ``cdi-api-signing-key`` (``id_rsa``; the upload proxy reads
  ``id_rsa.pub``). The installer creates both; nothing here generates keys.
* APIService ``v1beta1.upload.cdi.kubevirt.io`` -> ``cdi/cdi-api:443``. Its ``caBundle`` is left to the
  installer: it must be the CA that signed ``cdi-apiserver-server-cert``. The annotation
  ``cert-manager.io/inject-ca-from`` lets cert-manager's cainjector fill it in when that Secret comes
  from a cert-manager Certificate of the same name; otherwise patch ``spec.caBundle`` by hand. Until
  then the APIService reports ``Available=False`` and discovery of the group fails.
* The DataVolume admission webhooks, CDI's ``cdi-api-datavolume-validate`` (CREATE, UPDATE) and
  ``cdi-api-datavolume-mutate`` (CREATE), calling ``cdi/cdi-api:443`` at ``/datavolume-validate`` and
  ``/datavolume-mutate`` (:mod:`cdi.apiserver.webhooks`), ``failurePolicy: Fail``, every namespace (CDI
  excludes none). Their ``caBundle`` is the installer's, as the APIService's.
* The controller reads the token key's public half (``id_rsa.pub``) to check clone tokens
  (:func:`controller_clone_key`): mounted at :data:`CLONE_KEY_DIR`, named by
  ``CLONE_TOKEN_PUBLIC_KEY_FILE``.
* CDI's aggregated ClusterRoles, so that namespace admins and editors (the built-in ``admin`` and
  ``edit`` roles, bound by RoleBinding) may create UploadTokenRequests and manage DataVolumes,
  DataSources and DataImportCrons, viewers may read them, and every authenticated user may read
  CDIConfig and StorageProfiles (virtctl reads the upload proxy URL from CDIConfig). CDI's roles also
  name ``objecttransfers`` and the ``volume{import,upload,clone}sources`` populator kinds; cdi-py does
  not serve those CRDs, so its roles leave them out.
"""

from __future__ import annotations

import base64
from typing import Any

from cdi.api import v1beta1

from . import discovery

Manifest = dict[str, Any]

NAMESPACE = "cdi"
NAME = "cdi-apiserver"
SERVICE = "cdi-api"
API_SERVICE = f"{discovery.VERSION}.{discovery.GROUP}"
IMAGE = "quay.io/cdi-py/cdi-py-controller:latest"  # the controller's image holds the whole cdi package
PORT = 8443
RUN_AS_USER = 1001
CERT_SECRET = "cdi-apiserver-server-cert"
SIGNING_SECRET = "cdi-api-signing-key"
CERT_DIR = "/var/run/certs/cdi-apiserver-server-cert"
KEY_DIR = "/var/run/cdi/token/keys"
RBAC_API = "rbac.authorization.k8s.io/v1"
WEBHOOK_API = "admissionregistration.k8s.io/v1"
VALIDATING_WEBHOOK = "cdi-api-datavolume-validate"
MUTATING_WEBHOOK = "cdi-api-datavolume-mutate"
CLONE_KEY_DIR = "/var/run/cdi/clone-token-key"
CLONE_KEY_ENV = "CLONE_TOKEN_PUBLIC_KEY_FILE"

LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "cdi-py",
          "app.kubernetes.io/component": "apiserver"}
CDI = v1beta1.GROUP


def _meta(name: str, namespace: str | None = NAMESPACE, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = dict(LABELS)
    meta.update(extra)
    return meta


def _subject(namespace: str) -> list[dict[str, str]]:
    return [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]


def service_account(namespace: str = NAMESPACE) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, namespace)}


def auth_delegator_binding(namespace: str = NAMESPACE, name: str = f"{NAME}:auth-delegator") -> Manifest:
    """Lets the server ask kube-apiserver whether a user may create a token request."""
    return {"apiVersion": RBAC_API, "kind": "ClusterRoleBinding", "metadata": _meta(name, None),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:auth-delegator"},
            "subjects": _subject(namespace)}


def auth_reader_binding(namespace: str = NAMESPACE, name: str = f"{NAME}:authentication-reader") -> Manifest:
    """Lets the server read ``kube-system/extension-apiserver-authentication`` (only that ConfigMap)."""
    return {"apiVersion": RBAC_API, "kind": "RoleBinding", "metadata": _meta(name, "kube-system"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "extension-apiserver-authentication-reader"},
            "subjects": _subject(namespace)}


def cluster_role(name: str = NAME) -> Manifest:
    """Read-only ``get`` of what the DataVolume webhooks look up, one object at a time."""
    return {"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": _meta(name, None),
            "rules": [_rule("", ["persistentvolumeclaims", "namespaces"], ["get"]),
                      _rule("snapshot.storage.k8s.io", ["volumesnapshots"], ["get"]),
                      _rule(CDI, ["datasources"], ["get"])]}


def cluster_role_binding(namespace: str = NAMESPACE, name: str = NAME, role: str = NAME) -> Manifest:
    return {"apiVersion": RBAC_API, "kind": "ClusterRoleBinding", "metadata": _meta(name, None),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": _subject(namespace)}


def _webhook(kind: str, name: str, path: str, operations: list[str], *, client_config: dict[str, Any] | None,
             namespace: str, namespace_selector: dict[str, Any] | None) -> Manifest:
    config = client_config or {"service": {"namespace": namespace, "name": SERVICE, "path": path, "port": 443}}
    hook: dict[str, Any] = {
        "name": f"{path.strip('/')}.{CDI}", "clientConfig": config,
        "rules": [{"operations": operations, "apiGroups": [CDI], "apiVersions": [v1beta1.VERSION],
                   "resources": ["datavolumes"], "scope": "*"}],
        "failurePolicy": "Fail", "sideEffects": "None", "matchPolicy": "Exact",
        "namespaceSelector": namespace_selector or {}, "timeoutSeconds": 30, "admissionReviewVersions": ["v1"]}
    if kind == "MutatingWebhookConfiguration":
        hook["reinvocationPolicy"] = "Never"
    annotations = {} if "caBundle" in config else {"cert-manager.io/inject-ca-from": f"{namespace}/{CERT_SECRET}"}
    meta = _meta(name, None, **({"annotations": annotations} if annotations else {}))
    return {"apiVersion": WEBHOOK_API, "kind": kind, "metadata": meta, "webhooks": [hook]}


def validating_webhook(name: str = VALIDATING_WEBHOOK, *, client_config: dict[str, Any] | None = None,
                       namespace: str = NAMESPACE, namespace_selector: dict[str, Any] | None = None) -> Manifest:
    """CDI's validating registration; tests pass a ``url`` client config and a selector of their own."""
    return _webhook("ValidatingWebhookConfiguration", name, "/datavolume-validate", ["CREATE", "UPDATE"],
                    client_config=client_config, namespace=namespace, namespace_selector=namespace_selector)


def mutating_webhook(name: str = MUTATING_WEBHOOK, *, client_config: dict[str, Any] | None = None,
                     namespace: str = NAMESPACE, namespace_selector: dict[str, Any] | None = None) -> Manifest:
    """CDI's mutating registration (CREATE only: see :mod:`cdi.apiserver.webhooks.mutate`)."""
    return _webhook("MutatingWebhookConfiguration", name, "/datavolume-mutate", ["CREATE"],
                    client_config=client_config, namespace=namespace, namespace_selector=namespace_selector)


def controller_clone_key() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(volume, volumeMount, env)`` giving the controller the public key that verifies clone tokens."""
    volume = {"name": "clone-token-key", "secret": {"secretName": SIGNING_SECRET,
                                                    "items": [{"key": "id_rsa.pub", "path": "id_rsa.pub"}]}}
    mount = {"name": "clone-token-key", "mountPath": CLONE_KEY_DIR, "readOnly": True}
    return volume, mount, {"name": CLONE_KEY_ENV, "value": f"{CLONE_KEY_DIR}/id_rsa.pub"}


def _security_context() -> dict[str, Any]:
    """The container half of the ``restricted`` Pod Security profile, plus a read-only root filesystem."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True, "runAsNonRoot": True, "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}}


def _container() -> dict[str, Any]:
    probe: dict[str, Any] = {"httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"}, "periodSeconds": 5,
             "timeoutSeconds": 3, "failureThreshold": 3}
    return {
        "name": NAME,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "cdi.apiserver"],
        "env": [
            {"name": "APISERVER_TLS_CERT_FILE", "value": f"{CERT_DIR}/tls.crt"},
            {"name": "APISERVER_TLS_KEY_FILE", "value": f"{CERT_DIR}/tls.key"},
            {"name": "APISERVER_PRIVATE_KEY_FILE", "value": f"{KEY_DIR}/id_rsa"},
            {"name": "APISERVER_PORT", "value": str(PORT)},
        ],
        "ports": [{"name": "https", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "httpGet": {**probe["httpGet"], "path": "/healthz"}, "initialDelaySeconds": 15,
                          "periodSeconds": 20},
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": _security_context(),
        "volumeMounts": [{"name": "server-cert", "mountPath": CERT_DIR, "readOnly": True},
                         {"name": "signing-key", "mountPath": KEY_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }


def deployment() -> Manifest:
    pod_spec: dict[str, Any] = {
        "serviceAccountName": NAME,
        "securityContext": {"runAsNonRoot": True, "fsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container()],
        "volumes": [{"name": "server-cert", "secret": {"secretName": CERT_SECRET}},
                    {"name": "signing-key", "secret": {"secretName": SIGNING_SECRET,
                                                       "items": [{"key": "id_rsa", "path": "id_rsa"}]}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}],
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(NAME),
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                     "template": {"metadata": {"labels": dict(LABELS)}, "spec": pod_spec}}}


def service() -> Manifest:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(SERVICE),
            "spec": {"selector": {"app.kubernetes.io/name": NAME},
                     "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]}}


def api_service(*, namespace: str = NAMESPACE, service_name: str = SERVICE, ca_bundle: bytes | None = None) -> Manifest:
    """The registration with kube-apiserver's aggregator; ``ca_bundle`` (PEM) for installers and tests."""
    annotations = {} if ca_bundle else {"cert-manager.io/inject-ca-from": f"{namespace}/{CERT_SECRET}"}
    spec: dict[str, Any] = {"group": discovery.GROUP, "version": discovery.VERSION,
                            "service": {"namespace": namespace, "name": service_name, "port": 443},
                            "groupPriorityMinimum": 1000, "versionPriority": 15}
    if ca_bundle:
        spec["caBundle"] = base64.b64encode(ca_bundle).decode()
    meta = _meta(API_SERVICE, None, **({"annotations": annotations} if annotations else {}))
    return {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": meta, "spec": spec}


def _rule(group: str, resources: list[str], verbs: list[str]) -> dict[str, list[str]]:
    return {"apiGroups": [group], "resources": resources, "verbs": verbs}


READ = ["get", "list", "watch"]
EDIT_RULES = [
    _rule(CDI, ["datavolumes", "dataimportcrons", "datasources"], ["*"]),
    # cloning from a PVC in another namespace is authorized against this subresource in the source namespace
    _rule(CDI, ["datavolumes/source"], ["create"]),
    _rule(discovery.GROUP, [discovery.RESOURCE], ["*"]),
]
VIEW_RULES = [
    _rule(CDI, ["cdiconfigs", "dataimportcrons", "datasources", "datavolumes", "storageprofiles"], READ),
    _rule(CDI, ["datavolumes/source"], ["create"]),
]
CONFIG_READER = "cdi.kubevirt.io:config-reader"


def aggregated_role(level: str) -> Manifest:
    """``cdi.kubevirt.io:<level>`` for the built-in ``admin``, ``edit`` or ``view`` role to absorb.

    As in CDI, admin and edit are the same rules: the built-in roles differ only in RBAC itself.
    """
    labels = {**LABELS, f"rbac.authorization.k8s.io/aggregate-to-{level}": "true"}
    rules = VIEW_RULES if level == "view" else EDIT_RULES
    return {"apiVersion": RBAC_API, "kind": "ClusterRole",
            "metadata": {"name": f"cdi.kubevirt.io:{level}", "labels": labels}, "rules": [dict(r) for r in rules]}


def config_reader_role() -> Manifest:
    return {"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": _meta(CONFIG_READER, None),
            "rules": [_rule(CDI, ["cdiconfigs", "storageprofiles"], READ)]}


def config_reader_binding() -> Manifest:
    return {"apiVersion": RBAC_API, "kind": "ClusterRoleBinding", "metadata": _meta(CONFIG_READER, None),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONFIG_READER},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]}


MANIFESTS = (
    ("10-apiserver-serviceaccount.yaml", service_account),
    ("11-apiserver-auth-delegator.yaml", auth_delegator_binding),
    ("12-apiserver-auth-reader.yaml", auth_reader_binding),
    ("13-apiserver-deployment.yaml", deployment),
    ("14-apiserver-service.yaml", service),
    ("25-apiserver-clusterrole.yaml", cluster_role),
    ("26-apiserver-clusterrolebinding.yaml", cluster_role_binding),
    ("20-clusterrole-admin.yaml", lambda: aggregated_role("admin")),
    ("21-clusterrole-edit.yaml", lambda: aggregated_role("edit")),
    ("22-clusterrole-view.yaml", lambda: aggregated_role("view")),
    ("23-clusterrole-config-reader.yaml", config_reader_role),
    ("24-clusterrolebinding-config-reader.yaml", config_reader_binding),
    # last: once registered, the group is unavailable until the Deployment is ready and caBundle is set
    ("30-apiservice.yaml", api_service),
    ("31-datavolume-validate.yaml", validating_webhook),
    ("32-datavolume-mutate.yaml", mutating_webhook),
)
"""``(file name, builder)`` for ``deploy/``, after the controller's ``00``-``05``."""
