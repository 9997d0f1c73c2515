"""The deployment manifests (controller and cdi-apiserver) and their least-privilege RBAC, against
the real apiserver.

Behaviours under test:

* ``deploy/`` is exactly what ``python -m cdi.controller.manifests`` generates (no stale, missing
  or stray YAML), and ``--check`` agrees;
* the ClusterRole grants exactly the table of needs below, nothing more, and every resource it
  names is served by the apiserver (a typo would silently grant nothing);
* ``/status`` rules exist only for CRDs that serve the status subresource, and a kind with one
  whose objects the controller patches can also patch its status;
* ``kubectl apply -f crds/`` then ``kubectl apply -f deploy/`` succeeds for real, without Pod
  Security warnings; re-applying changes nothing; every object exists afterwards;
* the Deployment as the apiserver stored it runs the controller's command, flags, images, env,
  probe and ServiceAccount, and its pod passes the namespace's enforced ``restricted`` Pod
  Security level (the ReplicaSet is refused only by the test's zero-pod quota, which admission
  checks after Pod Security);
* SubjectAccessReviews as ``system:serviceaccount:cdi:cdi-py-controller`` (with the groups a
  ServiceAccount token carries): every verb in NEEDS is allowed in all namespaces, discovery is
  allowed, and every row of MUST_NOT is refused both cluster-wide and in the controller's own
  namespace;
* cdi-apiserver's ServiceAccount may create SubjectAccessReviews and read the front-proxy ConfigMap
  in kube-system, and nothing of APISERVER_MUST_NOT; its pod passes ``restricted`` too;
* CDI's aggregated ClusterRoles end up inside the built-in ``admin``, ``edit`` and ``view`` roles.

The test keeps the controller and cdi-apiserver from actually running: a ResourceQuota of zero pods
in ``cdi`` stops their ReplicaSets (the real node would otherwise start a
controller that reconciles other tests' objects). At the end the Deployments and the quota are
deleted, and so is the APIService (it points at a server that never runs, and an unavailable
APIService breaks discovery and namespace deletion for the rest of the session; one that existed
before, e.g. a test harness's, is put back); the namespace, ServiceAccounts, RBAC and CDIConfig stay,
as the CRDs do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from cdi.api import crds
from cdi.apiserver import manifests as apiserver_manifests
from cdi.controller import manifests, upload_manifests, rbac
from kubeenv.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
SA_USER = f"system:serviceaccount:{manifests.NAMESPACE}:{manifests.NAME}"
SA_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{manifests.NAMESPACE}", "system:authenticated"]
QUOTA = "test-deploy-no-pods"
TENANT = "some-tenant"  # any namespace: the grants are cluster-wide (ignored for cluster-scoped resources)

CDI = "cdi.kubevirt.io"
CORE = ""

# What the controller needs: (apiGroup, resource, verbs). The ClusterRole must grant exactly this.
NEEDS: list[tuple[str, str, str]] = [
    (CDI, "datavolumes", "get list watch create update patch delete"),
    (CDI, "datavolumes/status", "get update patch"),
    (CDI, "datasources", "get list watch create patch"),
    (CDI, "storageprofiles", "get list watch create update patch"),
    (CDI, "storageprofiles/status", "update patch"),
    (CDI, "cdiconfigs", "get list watch create update patch"),
    (CDI, "dataimportcrons", "get list watch patch"),
    (CORE, "persistentvolumeclaims", "get list watch create update patch delete"),
    (CORE, "pods", "get list watch create delete"),
    (CORE, "events", "create patch"),
    (CORE, "configmaps", "get list watch create delete"),
    (CORE, "services", "get list watch create delete"),
    (CORE, "secrets", "create"),
    ("storage.k8s.io", "storageclasses", "get list watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list watch"),
    (CDI, "cdis", "get list watch"),
    ("snapshot.storage.k8s.io", "volumesnapshots", "get list watch create delete"),
    ("snapshot.storage.k8s.io", "volumesnapshotcontents", "get create delete"),
    ("snapshot.storage.k8s.io", "volumesnapshotclasses", "get list watch"),
]

# What the controller must never be able to do: (verb, apiGroup, resource[/subresource]).
MUST_NOT: list[tuple[str, str, str]] = [
    ("get", CORE, "secrets"),
    ("list", CORE, "secrets"),
    ("watch", CORE, "secrets"),
    ("update", CORE, "secrets"),  # upload pods' TLS Secrets are written once ...
    ("delete", CORE, "secrets"),  # ... and go with their PVC (or cloner pod) by owner reference
    ("create", CORE, "pods/exec"),
    ("create", CORE, "pods/attach"),
    ("create", CORE, "pods/portforward"),
    ("create", CORE, "pods/eviction"),
    ("patch", CORE, "pods"),  # pod handlers must be stateless (kopf on.event)
    ("update", CORE, "pods/status"),
    ("create", CORE, "serviceaccounts/token"),
    ("impersonate", CORE, "serviceaccounts"),
    ("impersonate", CORE, "users"),
    ("list", CORE, "namespaces"),  # kopf -A does not observe namespaces
    ("create", CORE, "namespaces"),
    ("delete", CORE, "namespaces"),
    ("update", CORE, "nodes"),
    ("patch", CORE, "nodes/status"),
    ("get", CORE, "persistentvolumes"),  # decided: the annotation flow never reads PVs
    ("delete", CORE, "persistentvolumes"),
    ("update", CORE, "configmaps"),
    ("update", CDI, "datasources/status"),  # no such subresource: status is patched on the object
    ("delete", CDI, "storageprofiles"),
    ("delete", CDI, "cdiconfigs"),
    ("update", CDI, "cdis"),
    ("patch", "storage.k8s.io", "storageclasses"),
    ("create", "storage.k8s.io", "storageclasses"),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("update", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("delete", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("create", "rbac.authorization.k8s.io", "clusterroles"),
    ("escalate", "rbac.authorization.k8s.io", "clusterroles"),
    ("bind", "rbac.authorization.k8s.io", "clusterroles"),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
    ("create", "rbac.authorization.k8s.io", "rolebindings"),
    ("update", "apps", "deployments"),  # not even its own
    ("create", "batch", "jobs"),
    ("create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    ("create", "admissionregistration.k8s.io", "validatingwebhookconfigurations"),
    ("create", "events.k8s.io", "events"),  # kopf posts core/v1 events
    ("create", "coordination.k8s.io", "leases"),
    ("patch", "kopf.dev", "clusterkopfpeerings"),  # standalone: no peering
    ("list", "zalando.org", "clusterkopfpeerings"),
]


APISERVER_USER = f"system:serviceaccount:{apiserver_manifests.NAMESPACE}:{apiserver_manifests.NAME}"
APISERVER_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{apiserver_manifests.NAMESPACE}",
                    "system:authenticated"]
# (verb, apiGroup, resource, namespace, name): what cdi-apiserver needs, and what it must not have
APISERVER_NEEDS: list[tuple[str, str, str, str, str]] = [
    ("create", "authorization.k8s.io", "subjectaccessreviews", "", ""),
    ("get", CORE, "configmaps", "kube-system", "extension-apiserver-authentication"),
    # what the DataVolume webhooks look up, one object at a time
    ("get", CORE, "persistentvolumeclaims", TENANT, "golden"),
    ("get", CORE, "namespaces", "", TENANT),
    ("get", "snapshot.storage.k8s.io", "volumesnapshots", TENANT, "golden"),
    ("get", CDI, "datasources", TENANT, "golden"),
]
APISERVER_MUST_NOT: list[tuple[str, str, str, str, str]] = [
    ("get", CORE, "secrets", apiserver_manifests.NAMESPACE, apiserver_manifests.SIGNING_SECRET),
    ("list", CORE, "secrets", "", ""),
    ("get", CORE, "configmaps", "kube-system", "kube-proxy"),
    ("list", CORE, "configmaps", "kube-system", ""),
    ("create", CORE, "pods", TENANT, ""),
    ("list", CORE, "persistentvolumeclaims", TENANT, ""),
    ("watch", CORE, "persistentvolumeclaims", "", ""),
    ("update", CORE, "persistentvolumeclaims", TENANT, "golden"),
    ("list", CORE, "namespaces", "", ""),
    ("list", CDI, "datasources", TENANT, ""),
    ("get", CDI, "datavolumes", TENANT, "golden"),
    ("create", apiserver_manifests.discovery.GROUP, "uploadtokenrequests", TENANT, ""),
    ("update", "apiregistration.k8s.io", "apiservices", "", apiserver_manifests.API_SERVICE),
]
DEPLOYMENTS = [manifests.NAME, apiserver_manifests.NAME, upload_manifests.NAME]
WEBHOOKS = [("validatingwebhookconfiguration", apiserver_manifests.VALIDATING_WEBHOOK),
            ("mutatingwebhookconfiguration", apiserver_manifests.MUTATING_WEBHOOK)]


def kubectl(plane: ControlPlane, *args: str, check: bool = True,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), *args],
                          capture_output=True, text=True, timeout=120, input=stdin)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def needs() -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for group, resource, verbs in NEEDS for verb in verbs.split()}


def allowed(kube: client.ApiClient, verb: str, group: str, resource: str, namespace: str, *,
            user: str = SA_USER, groups: list[str] = SA_GROUPS, object_name: str = "") -> bool:
    """A SubjectAccessReview for the controller's ServiceAccount (``namespace=""``: all namespaces)."""
    name, _, sub = resource.partition("/")
    attrs = client.V1ResourceAttributes(verb=verb, group=group, resource=name, subresource=sub or None,
                                        namespace=namespace or None, name=object_name or None)
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=groups, resource_attributes=attrs))
    result = client.AuthorizationV1Api(kube).create_subject_access_review(review)
    return bool(result.status.allowed)


def discovery_allowed(kube: client.ApiClient, path: str) -> bool:
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=SA_USER, groups=SA_GROUPS, non_resource_attributes=client.V1NonResourceAttributes(path=path, verb="get")))
    return bool(client.AuthorizationV1Api(kube).create_subject_access_review(review).status.allowed)


# -- the files -------------------------------------------------------------------------------------


def test_committed_deploy_matches_a_fresh_generation() -> None:
    assert manifests.committed() == manifests.generate(), "deploy/ is stale: run `python -m cdi.controller.manifests`"


def test_check_flag_reports_fresh_and_stale(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cdi.controller.manifests", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    manifests.write(tmp_path)
    (tmp_path / "02-clusterrole.yaml").write_text("# edited by hand\n")
    (tmp_path / "99-leftover.yaml").write_text("{}\n")
    assert manifests.stale(tmp_path) == ["02-clusterrole.yaml", "99-leftover.yaml"]
    manifests.write(tmp_path)
    assert manifests.stale(tmp_path) == []


def test_cluster_role_grants_exactly_the_needs() -> None:
    granted = rbac.granted()
    assert granted - needs() == set(), "granted but not needed"
    assert needs() - granted == set(), "needed but not granted"
    role = yaml.safe_load((manifests.DEPLOY_DIR / "02-clusterrole.yaml").read_text())
    assert rbac.granted(tuple(role["rules"])) == needs()


def test_status_rules_follow_the_crds_subresources() -> None:
    kinds = {k.plural: k for k in crds.KINDS}
    granted = rbac.granted()
    for group, resource, verb in granted:
        plural, _, sub = resource.partition("/")
        if group == CDI and sub == "status":
            assert kinds[plural].status_subresource, f"{resource}: the CRD serves no status subresource"
    for kind in crds.KINDS:
        if kind.status_subresource and (CDI, kind.plural, "patch") in granted:
            assert (CDI, f"{kind.plural}/status", "patch") in granted, f"{kind.plural}: status not patchable"


# -- on the apiserver ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(control_plane: ControlPlane) -> Iterator[subprocess.CompletedProcess[str]]:
    """``kubectl apply -f crds/`` then ``-f deploy/``, with a zero-pod quota so no controller runs."""
    kubectl(control_plane, "apply", "-f", str(crds.CRD_DIR))
    kubectl(control_plane, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds.CRD_DIR))
    kubectl(control_plane, "apply", "-f", str(manifests.DEPLOY_DIR / "00-namespace.yaml"))
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": QUOTA, "namespace": manifests.NAMESPACE},
             "spec": {"hard": {"pods": "0"}}}
    kubectl(control_plane, "apply", "-f", "-", stdin=json.dumps(quota))
    before = kubectl(control_plane, "get", "apiservice", apiserver_manifests.API_SERVICE, "-o", "json",
                     "--ignore-not-found").stdout
    hooks_before = {kind: kubectl(control_plane, "get", kind, name, "-o", "json", "--ignore-not-found").stdout
                    for kind, name in WEBHOOKS}
    applied = kubectl(control_plane, "apply", "-f", str(manifests.DEPLOY_DIR))
    yield applied
    restore_api_service(control_plane, before)
    for kind, name in WEBHOOKS:  # they point at a server that never runs: with Fail, no DataVolume could be written
        restore(control_plane, kind, name, hooks_before[kind])
    for name in DEPLOYMENTS:
        kubectl(control_plane, "delete", "deployment", name, "-n", manifests.NAMESPACE,
                "--cascade=foreground", "--wait", "--timeout=60s", "--ignore-not-found", check=False)
    kubectl(control_plane, "delete", "resourcequota", QUOTA, "-n", manifests.NAMESPACE, "--ignore-not-found",
            check=False)


def restore_api_service(plane: ControlPlane, before: str) -> None:
    """Remove deploy/'s APIService (its server never runs here) and put back one that was there before."""
    restore(plane, "apiservice", apiserver_manifests.API_SERVICE, before)


def restore(plane: ControlPlane, kind: str, name: str, before: str) -> None:
    """Delete ``kind/name`` and recreate it as it was before the test (``before``: its JSON, or empty)."""
    kubectl(plane, "delete", kind, name, "--ignore-not-found", check=False)
    if before.strip():
        saved = json.loads(before)
        saved.pop("status", None)
        saved["metadata"] = {k: v for k, v in saved["metadata"].items() if k in ("name", "labels", "annotations")}
        kubectl(plane, "create", "-f", "-", stdin=json.dumps(saved), check=False)


def test_apply_creates_every_object_without_warnings(deployed: subprocess.CompletedProcess[str],
                                                     control_plane: ControlPlane) -> None:
    assert "Warning" not in deployed.stderr, deployed.stderr
    expected = {f"{doc['kind']}/{doc['metadata']['name']}".lower()
                for text in manifests.generate().values() for doc in [yaml.safe_load(text)]}
    found = kubectl(control_plane, "get", "-f", str(manifests.DEPLOY_DIR), "-o", "name").stdout.split()
    kinds_and_names = {f"{line.split('/')[0].split('.')[0]}/{line.split('/')[1]}" for line in found}
    assert kinds_and_names == expected


def test_reapply_changes_nothing(deployed: subprocess.CompletedProcess[str], control_plane: ControlPlane) -> None:
    again = kubectl(control_plane, "apply", "-f", str(manifests.DEPLOY_DIR)).stdout.splitlines()
    assert again and all(line.endswith(" unchanged") for line in again), again


def test_deployment_as_stored(deployed: subprocess.CompletedProcess[str], kube: client.ApiClient) -> None:
    dep = client.AppsV1Api(kube).read_namespaced_deployment(manifests.NAME, manifests.NAMESPACE)
    assert dep.spec.replicas == 1 and dep.spec.strategy.type == "Recreate"
    pod = dep.spec.template.spec
    assert pod.service_account_name == "cdi-py-controller"
    (container,) = pod.containers
    assert container.image == "quay.io/cdi-py/cdi-py-controller:latest"
    assert container.command == ["python", "-m", "cdi.controller"]
    assert container.args == ["--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
    env = {e.name: e for e in container.env}
    assert env["IMPORTER_IMAGE"].value == "quay.io/cdi-py/cdi-py-importer:latest"
    assert env["CONTROLLER_NAMESPACE"].value_from.field_ref.field_path == "metadata.namespace"
    probe = container.liveness_probe.http_get
    assert (probe.path, probe.port, container.ports[0].container_port) == ("/healthz", "healthz", 8080)
    assert container.resources.requests and container.resources.limits
    sc = container.security_context
    assert (sc.run_as_non_root, sc.allow_privilege_escalation, sc.capabilities.drop) == (True, False, ["ALL"])
    assert sc.seccomp_profile.type == "RuntimeDefault"


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_pod_passes_enforced_restricted_pod_security(deployed: subprocess.CompletedProcess[str],
                                                     kube: client.ApiClient, name: str) -> None:
    apps = client.AppsV1Api(kube)
    selector = f"app.kubernetes.io/name={name}"
    deadline, message = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        for rs in apps.list_namespaced_replica_set(manifests.NAMESPACE, label_selector=selector).items:
            for cond in rs.status.conditions or []:
                if cond.type == "ReplicaFailure":
                    message = cond.message or ""
        if message:
            break
        time.sleep(0.5)
    assert "PodSecurity" not in message
    assert f"exceeded quota: {QUOTA}" in message, message or "the ReplicaSet never tried to create its pod"


def test_rules_name_served_resources(deployed: subprocess.CompletedProcess[str], control_plane: ControlPlane) -> None:
    served: dict[str, set[str]] = {}
    for group in {g for g, _, _ in NEEDS}:
        if group == CORE:
            path = "/api/v1"
        else:
            info: dict[str, Any] = json.loads(kubectl(control_plane, "get", "--raw", f"/apis/{group}").stdout)
            path = f"/apis/{info['preferredVersion']['groupVersion']}"
        listing = json.loads(kubectl(control_plane, "get", "--raw", path).stdout)
        served[group] = {r["name"] for r in listing["resources"]}
    unserved = [(g, r) for g, r, _ in NEEDS if r not in served[g]]
    assert unserved == []


@pytest.mark.parametrize("group,resource,verbs", NEEDS, ids=[f"{r}.{g or 'core'}" for g, r, _ in NEEDS])
def test_controller_may(deployed: subprocess.CompletedProcess[str], kube: client.ApiClient,
                        group: str, resource: str, verbs: str) -> None:
    denied = [(verb, ns or "*") for verb in verbs.split() for ns in ("", TENANT)
              if not allowed(kube, verb, group, resource, ns)]
    assert denied == []


@pytest.mark.parametrize("path", ["/api", "/api/v1", "/apis", "/apis/cdi.kubevirt.io/v1beta1", "/version"])
def test_controller_may_discover(deployed: subprocess.CompletedProcess[str], kube: client.ApiClient,
                                 path: str) -> None:
    assert discovery_allowed(kube, path)


@pytest.mark.parametrize("verb,group,resource", MUST_NOT,
                         ids=[f"{v}-{r.replace('/', '.')}.{g or 'core'}" for v, g, r in MUST_NOT])
def test_controller_may_not(deployed: subprocess.CompletedProcess[str], kube: client.ApiClient,
                            verb: str, group: str, resource: str) -> None:
    allowed_in = [ns or "*" for ns in ("", manifests.NAMESPACE) if allowed(kube, verb, group, resource, ns)]
    assert allowed_in == []


# -- cdi-apiserver -----------------------------------------------------------------------------------


def test_apiserver_deployment_as_stored(deployed: subprocess.CompletedProcess[str], kube: client.ApiClient) -> None:
    dep = client.AppsV1Api(kube).read_namespaced_deployment(apiserver_manifests.NAME, apiserver_manifests.NAMESPACE)
    pod = dep.spec.template.spec
    assert pod.service_account_name == "cdi-apiserver"
    (container,) = pod.containers
    assert container.command == ["python", "-m", "cdi.apiserver"]
    env = {e.name: e.value for e in container.env}
    assert env["APISERVER_PRIVATE_KEY_FILE"] == "/var/run/cdi/token/keys/id_rsa"
    assert container.readiness_probe.http_get.scheme == "HTTPS"
    secrets = {v.secret.secret_name for v in pod.volumes if v.secret}
    assert secrets == {"cdi-apiserver-server-cert", "cdi-api-signing-key"}
    svc = client.CoreV1Api(kube).read_namespaced_service("cdi-api", apiserver_manifests.NAMESPACE)
    assert [(p.port, p.target_port) for p in svc.spec.ports] == [(443, "https")]


def test_api_service_points_at_the_service(deployed: subprocess.CompletedProcess[str],
                                           control_plane: ControlPlane) -> None:
    stored = json.loads(kubectl(control_plane, "get", "apiservice", apiserver_manifests.API_SERVICE,
                                "-o", "json").stdout)
    assert stored["spec"]["service"] == {"namespace": "cdi", "name": "cdi-api", "port": 443}
    assert "caBundle" not in stored["spec"]  # the installer's job (or cert-manager's cainjector)


def test_webhooks_point_at_the_service(deployed: subprocess.CompletedProcess[str],
                                       control_plane: ControlPlane) -> None:
    for kind, name in WEBHOOKS:
        (hook,) = json.loads(kubectl(control_plane, "get", kind, name, "-o", "json").stdout)["webhooks"]
        path = "/datavolume-validate" if kind.startswith("validating") else "/datavolume-mutate"
        assert hook["clientConfig"] == {"service": {"namespace": "cdi", "name": "cdi-api", "path": path, "port": 443}}
        assert (hook["failurePolicy"], hook["sideEffects"], hook["admissionReviewVersions"]) == ("Fail", "None", ["v1"])
        assert hook["rules"][0]["resources"] == ["datavolumes"]
        assert hook["rules"][0]["operations"] == (["CREATE", "UPDATE"] if path.endswith("validate") else ["CREATE"])


@pytest.mark.parametrize("verb,group,resource,namespace,name", APISERVER_NEEDS,
                         ids=[f"{v}-{r}" for v, _, r, _, _ in APISERVER_NEEDS])
def test_apiserver_may(deployed: subprocess.CompletedProcess[str], kube: client.ApiClient,
                       verb: str, group: str, resource: str, namespace: str, name: str) -> None:
    assert allowed(kube, verb, group, resource, namespace, user=APISERVER_USER, groups=APISERVER_GROUPS,
                   object_name=name)


@pytest.mark.parametrize("verb,group,resource,namespace,name", APISERVER_MUST_NOT,
                         ids=[f"{v}-{r}-{ns or 'all'}" for v, _, r, ns, _ in APISERVER_MUST_NOT])
def test_apiserver_may_not(deployed: subprocess.CompletedProcess[str], kube: client.ApiClient,
                           verb: str, group: str, resource: str, namespace: str, name: str) -> None:
    assert not allowed(kube, verb, group, resource, namespace, user=APISERVER_USER, groups=APISERVER_GROUPS,
                       object_name=name)


@pytest.mark.parametrize("role,rule", [
    ("admin", ("upload.cdi.kubevirt.io", "uploadtokenrequests", "*")),
    ("edit", ("upload.cdi.kubevirt.io", "uploadtokenrequests", "*")),
    ("edit", (CDI, "datavolumes", "*")),
    ("view", (CDI, "datavolumes", "get")),
])
def test_builtin_roles_aggregate_cdi_rules(deployed: subprocess.CompletedProcess[str], kube: client.ApiClient,
                                           role: str, rule: tuple[str, str, str]) -> None:
    rbac_api = client.RbacAuthorizationV1Api(kube)
    deadline = time.monotonic() + 30
    while True:
        rules = rbac_api.read_cluster_role(role).rules or []
        found = {(g, r, v) for x in rules for g in x.api_groups or [] for r in x.resources or [] for v in x.verbs}
        if rule in found or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rule in found


PROXY_USER = f"system:serviceaccount:{upload_manifests.NAMESPACE}:{upload_manifests.NAME}"
PROXY_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{upload_manifests.NAMESPACE}",
                "system:authenticated"]


@pytest.mark.parametrize("verb,resource,allowed_", [
    ("get", "persistentvolumeclaims", True),        # is the volume's upload server ready?
    ("list", "persistentvolumeclaims", False),
    ("update", "persistentvolumeclaims", False),
    ("get", "secrets", False),
    ("create", "pods", False),
])
def test_uploadproxy_may_only_read_claims(deployed: subprocess.CompletedProcess[str], kube: client.ApiClient,
                                          verb: str, resource: str, allowed_: bool) -> None:
    assert allowed(kube, verb, "", resource, "somewhere", user=PROXY_USER, groups=PROXY_GROUPS) is allowed_
