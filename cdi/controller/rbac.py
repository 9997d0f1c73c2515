"""What the DataVolume controller may do in the cluster: its ClusterRole's rules, as data.

``python -m cdi.controller.manifests`` renders them into ``deploy/``; ``tests/kube/test_deploy.py``
asks the real apiserver (SubjectAccessReviews) that every verb in its table of needs is allowed
and that a table of things the controller must never do is refused.

Decisions, so that nobody re-adds what was left out on purpose:

* **Secrets: create only, never read.** Importer pods get credentials through ``secretKeyRef``
  and secret volumes; creating a pod that references a Secret needs no permission on that Secret
  (the kubelet fetches it with the node's identity, which the Node authorizer allows for pods
  bound to it). Unlike ServiceAccount token rules there is no creator check. The one Secret the
  controller writes is each upload pod's TLS material (server key and certificate), created once
  with an owner reference to the PVC so the garbage collector removes it with the volume: hence
  ``create`` and nothing else (no get/list/watch, no update, no delete). The flip side is
  Kubernetes' known caveat: whoever may create pods in a namespace can read its Secrets through a
  pod, so ``pods: create`` is the controller's most powerful grant and is why nothing else is
  added to it.
* **No PersistentVolumes.** The annotation (legacy) import flow only reads its PVC's
  ``status.phase``; binding mode comes from the StorageClass. The populator flow (PV rebinding)
  is not implemented; it would need ``persistentvolumes: get, patch``.
* **Status subresources only where the CRDs serve them** (``crds/``): DataVolume and
  StorageProfile have ``/status``; DataSource and CDIConfig do not, so their status is written
  through the object itself (``patch``). ``datasources/status``/``cdiconfigs/status`` would grant
  nothing the apiserver serves. The test checks this against :data:`cdi.api.crds.KINDS`.
* **kopf, standalone and cluster-wide** (``kopf run --standalone -A``): no peering objects
  (``kopf.dev``/``zalando.org`` ``clusterkopfpeerings``; ``guess_selectors`` returns none when
  standalone), no namespaces (observed only for namespace patterns, not with ``-A``); it needs
  discovery (``/api``, ``/apis``: granted to every authenticated user by ``system:discovery``),
  list/watch of every watched resource, ``patch`` on resources with stateful handlers
  (on.create/update/resume keep their state in annotations and ``status.kopf``), core ``events:
  create`` for its own event posting, and list/watch of CRDs for its resource observer.
* **Handlers on pods and StorageClasses must be stateless** (``@kopf.on.event``, indexes):
  ``patch`` on them is refused on purpose, and kopf's stateful handlers patch their objects.
"""

from __future__ import annotations

from typing import TypedDict


class PolicyRule(TypedDict):
    """One rule of a (Cluster)Role, with the field names of ``rbac.authorization.k8s.io/v1``."""

    apiGroups: list[str]
    resources: list[str]
    verbs: list[str]


CDI = "cdi.kubevirt.io"
CORE = ""
SNAPSHOT = "snapshot.storage.k8s.io"
READ = ["get", "list", "watch"]

RULES: tuple[PolicyRule, ...] = (
    # DataVolumes are the reconciled objects (annotated with the clone plan and token); DataImportCrons create
    # one per version of their source and delete outdated ones
    PolicyRule(apiGroups=[CDI], resources=["datavolumes"], verbs=[*READ, "create", "update", "patch", "delete"]),
    # phase, progress, restartCount and conditions go through the status subresource
    PolicyRule(apiGroups=[CDI], resources=["datavolumes/status"], verbs=["get", "update", "patch"]),
    # sourceRef resolution; a DataImportCron's managed DataSource is created and repointed; DataSource has no
    # status subresource, so its Ready condition is a patch on the object
    PolicyRule(apiGroups=[CDI], resources=["datasources"], verbs=[*READ, "create", "patch"]),
    # one StorageProfile per StorageClass, created and kept in step by the controller
    PolicyRule(apiGroups=[CDI], resources=["storageprofiles"], verbs=[*READ, "create", "update", "patch"]),
    # the profile's resolved claimPropertySets/provisioner live in its status subresource
    PolicyRule(apiGroups=[CDI], resources=["storageprofiles/status"], verbs=["update", "patch"]),
    # the singleton `config`: read for defaults, created if missing, status resolved in place (no subresource)
    PolicyRule(apiGroups=[CDI], resources=["cdiconfigs"], verbs=[*READ, "create", "update", "patch"]),
    # DataImportCrons: polled on schedule; their status has no subresource, so it is a patch on the object
    PolicyRule(apiGroups=[CDI], resources=["dataimportcrons"], verbs=[*READ, "patch"]),
    # the target PVC: created from the DV, annotated with the import source and pod state, deleted on failure
    PolicyRule(apiGroups=[CORE], resources=["persistentvolumeclaims"],
               verbs=[*READ, "create", "update", "patch", "delete"]),
    # importer/upload/cloner pods: created, watched for phase and termination message, deleted when done
    # (never patched); every pod of a clone source's namespace is listed to see whether the source is in use
    PolicyRule(apiGroups=[CORE], resources=["pods"], verbs=[*READ, "create", "delete"]),
    # the controller's and kopf's own Events on DVs (kopf posts core/v1 events; patch aggregates repeats)
    PolicyRule(apiGroups=[CORE], resources=["events"], verbs=["create", "patch"]),
    # certConfigMap existence checks; the import proxy CA is copied into the DV namespace and removed after
    PolicyRule(apiGroups=[CORE], resources=["configmaps"], verbs=[*READ, "create", "delete"]),
    # per-PVC upload server Services (cdi-upload-<pvc>)
    PolicyRule(apiGroups=[CORE], resources=["services"], verbs=[*READ, "create", "delete"]),
    # each upload pod's TLS Secret, owned by its PVC, and each cloner's, owned by its pod (the garbage
    # collector deletes them): written once, never read back
    PolicyRule(apiGroups=[CORE], resources=["secrets"], verbs=["create"]),
    # smart clones: a temporary snapshot of the source, imported into the target namespace by a
    # pre-provisioned content (Retain) when the namespaces differ; classes tell the planner which driver snapshots
    PolicyRule(apiGroups=[SNAPSHOT], resources=["volumesnapshots"], verbs=[*READ, "create", "delete"]),
    PolicyRule(apiGroups=[SNAPSHOT], resources=["volumesnapshotcontents"], verbs=["get", "create", "delete"]),
    PolicyRule(apiGroups=[SNAPSHOT], resources=["volumesnapshotclasses"], verbs=READ),
    # the CDI CR's cloneStrategyOverride
    PolicyRule(apiGroups=[CDI], resources=["cdis"], verbs=READ),
    # default (virt) class, volumeBindingMode and provisioner; StorageProfiles follow StorageClasses
    PolicyRule(apiGroups=["storage.k8s.io"], resources=["storageclasses"], verbs=READ),
    # kopf's resource observer re-scans discovery when CRDs change (e.g. crds/ applied after the controller)
    PolicyRule(apiGroups=["apiextensions.k8s.io"], resources=["customresourcedefinitions"], verbs=["list", "watch"]),
)


def granted(rules: tuple[PolicyRule, ...] = RULES) -> set[tuple[str, str, str]]:
    """Every ``(apiGroup, resource, verb)`` the rules allow, for comparing against a table of needs."""
    return {(group, resource, verb)
            for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}
