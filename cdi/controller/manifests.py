"""Generate the deployment manifests in ``deploy/``: the controller's, then cdi-apiserver's.

``python -m cdi.controller.manifests`` (re)writes them; ``--check`` only compares and exits 1 when
``deploy/`` is stale. ``tests/kube/test_deploy.py`` runs the same comparison, applies the result
to a real apiserver and checks the RBAC with SubjectAccessReviews.

Files are numbered because ``kubectl apply -f deploy/`` applies them in name order: the namespace
before what lives in it, the APIService last. ``00``-``05`` are the controller's (built here),
``10``-``14`` and ``20`` and up cdi-apiserver's (:mod:`cdi.apiserver.manifests`), ``15``-``19`` the
upload proxy's (:mod:`cdi.controller.upload_manifests`). Install with
``kubectl apply -f crds/ && kubectl apply -f deploy/``, then set the APIService's ``caBundle``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from cdi.api import v1beta1
from cdi.apiserver import manifests as apiserver

from . import rbac, upload_manifests

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"

NAMESPACE = "cdi"
NAME = "cdi-py-controller"
CONTROLLER_IMAGE = "quay.io/cdi-py/cdi-py-controller:latest"
IMPORTER_IMAGE = "quay.io/cdi-py/cdi-py-importer:latest"
HEALTH_PORT = 8080
HEALTH_PATH = "/healthz"
# the UID the image's USER sets; stated again here so runAsNonRoot is verifiable without the image
RUN_AS_USER = 1001

LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "cdi-py",
          "app.kubernetes.io/component": "controller"}

Manifest = dict[str, Any]


def _meta(name: str, *, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespaced:
        meta["namespace"] = NAMESPACE
    meta["labels"] = dict(LABELS)
    return meta


def namespace() -> Manifest:
    """The controller's namespace, held to the ``restricted`` Pod Security Standard."""
    labels = {**LABELS, **{f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": labels}}


def service_account() -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME)}


def cluster_role() -> Manifest:
    """Everything the controller may do, from :data:`cdi.controller.rbac.RULES` (it watches all namespaces)."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": _meta(NAME, namespaced=False), "rules": [dict(rule) for rule in rbac.RULES]}


def cluster_role_binding() -> Manifest:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": _meta(NAME, namespaced=False),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]}


def cdi_config() -> Manifest:
    """The default singleton ``config``; the controller resolves its status."""
    return {"apiVersion": f"{v1beta1.GROUP}/{v1beta1.VERSION}", "kind": "CDIConfig",
            "metadata": {"name": "config", "labels": dict(LABELS)}, "spec": {}}


def _security_context() -> dict[str, Any]:
    """The container half of the ``restricted`` profile, plus a read-only root filesystem."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True, "runAsNonRoot": True, "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}}


def _container() -> dict[str, Any]:
    env = [
        {"name": "IMPORTER_IMAGE", "value": IMPORTER_IMAGE},
        {"name": "CONTROLLER_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        *upload_manifests.controller_env(),
        apiserver.controller_clone_key()[2],
    ]
    return {
        "name": "controller",
        "image": CONTROLLER_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "cdi.controller"],
        # kopf run's flags: no peering objects, every namespace, kopf's liveness endpoint
        "args": ["--standalone", "--all-namespaces", f"--liveness=http://0.0.0.0:{HEALTH_PORT}{HEALTH_PATH}"],
        "env": env,
        "ports": [{"name": "healthz", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": HEALTH_PATH, "port": "healthz"}, "initialDelaySeconds": 15,
                          "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": _security_context(),
        # Python and its libraries may want a scratch directory; the root filesystem is read-only
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *upload_manifests.controller_mounts()[1],
                         apiserver.controller_clone_key()[1]],
    }


def deployment() -> Manifest:
    """One replica, replaced rather than rolled: standalone kopf has no peering to keep two apart."""
    selector = {"app.kubernetes.io/name": NAME}
    pod_spec: dict[str, Any] = {
        "serviceAccountName": NAME,
        "securityContext": {"runAsNonRoot": True, "fsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container()],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, *upload_manifests.controller_mounts()[0],
                    apiserver.controller_clone_key()[0]],
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(NAME),
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": dict(LABELS)}, "spec": pod_spec}}}


MANIFESTS: tuple[tuple[str, Callable[[], Manifest]], ...] = (
    ("00-namespace.yaml", namespace),
    ("01-serviceaccount.yaml", service_account),
    ("02-clusterrole.yaml", cluster_role),
    ("03-clusterrolebinding.yaml", cluster_role_binding),
    ("04-cdiconfig.yaml", cdi_config),
    ("05-deployment.yaml", deployment),
    *apiserver.MANIFESTS,
    *upload_manifests.MANIFESTS,
)


def render(manifest: Manifest) -> str:
    """The YAML text of one object, deterministic so regeneration gives identical bytes."""
    header = "# Generated by `python -m cdi.controller.manifests` from cdi/controller and cdi/apiserver; do not edit.\n"
    # a JSON round trip unshares lists two rules hold in common, which YAML would write as &id001 aliases
    plain = json.loads(json.dumps(manifest))
    return header + str(yaml.safe_dump(plain, sort_keys=False, width=120))


def generate() -> dict[str, str]:
    """Every manifest file: name → content."""
    return {name: render(build()) for name, build in MANIFESTS}


def committed(directory: Path = DEPLOY_DIR) -> dict[str, str]:
    """The YAML files now in ``directory`` (a stray or missing file is a difference too)."""
    return {p.name: p.read_text() for p in sorted(directory.glob("*.yaml"))}


def stale(directory: Path = DEPLOY_DIR) -> list[str]:
    """Names of files that differ from a fresh generation, are missing, or should not be there."""
    fresh, now = generate(), committed(directory)
    return sorted(name for name in fresh.keys() | now.keys() if fresh.get(name) != now.get(name))


def write(directory: Path = DEPLOY_DIR) -> list[Path]:
    """(Re)write the manifests and remove YAML files no longer generated, returning the written paths."""
    directory.mkdir(parents=True, exist_ok=True)
    fresh = generate()
    for old in directory.glob("*.yaml"):
        if old.name not in fresh:
            old.unlink()
    paths = []
    for name, text in fresh.items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdi.controller.manifests", description="Generate deploy/*.yaml.")
    parser.add_argument("--check", action="store_true", help="exit 1 if deploy/ differs from a fresh generation")
    args = parser.parse_args(argv)
    if args.check:
        differing = stale()
        for name in differing:
            print(f"stale: {DEPLOY_DIR / name}", file=sys.stderr)
        if differing:
            print("run `python -m cdi.controller.manifests`", file=sys.stderr)
        return 1 if differing else 0
    for path in write():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
