"""A dynamic provisioner for local volumes, so kube-controller-manager's PV binder binds them for real.

Two StorageClasses share the provisioner: ``cdi-local`` (Immediate, the default class) and
``cdi-local-wffc`` (WaitForFirstConsumer). For a pending claim of either, once it may be provisioned
(at once, or when ``volume.kubernetes.io/selected-node`` names this node), the provisioner makes
the backing directory or sparse file and creates a PV pre-bound to the claim (``claimRef``), with
node affinity to this node, exactly as an external CSI provisioner would; binding is left to
kube-controller-manager. A Released PV with the Delete policy has its backing removed and is deleted.

Limits: a Filesystem volume is a plain directory, so its size is not enforced (statvfs shows the
host disk); claims whose ``dataSourceRef`` names a populator are left to that populator.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from kubernetes.client import ApiClient, ApiException, CoreV1Api, StorageV1Api

from kubeenv.nodeagent import backing
from kubeenv.nodeagent.kube import Informer, Obj, ignore_missing, raw

PROVISIONER = "kubeenv.cdi.kubevirt.io/local"
CLASS_IMMEDIATE = "cdi-local"
CLASS_WFFC = "cdi-local-wffc"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
BACKING = "kubeenv.cdi.kubevirt.io/backing-path"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
log = logging.getLogger("kubeenv.nodeagent.storage")

_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(text: str) -> int:
    """Bytes in a resource quantity ("1Gi", "500M", "1e9"); fractions round up like the apiserver."""
    match = re.fullmatch(r"([0-9.]+(?:[eE][0-9]+)?)([a-zA-Z]*)", str(text).strip())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"bad quantity {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    return int(-(-value // 1))


def storage_classes(default: bool = True) -> list[Obj]:
    """The two classes; ``cdi-local`` is marked default so claims without a class still provision."""
    def make(name: str, mode: str, is_default: bool) -> Obj:
        annotations = {DEFAULT_CLASS: "true"} if is_default else {}
        return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": name, "annotations": annotations},
                "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": mode}
    return [make(CLASS_IMMEDIATE, "Immediate", default), make(CLASS_WFFC, "WaitForFirstConsumer", False)]


class Provisioner:
    """Turns claims of our classes into PVs, and Released PVs back into nothing."""

    def __init__(self, api: ApiClient, node_name: str, root: Path, *, default_class: bool = True) -> None:
        self.core = CoreV1Api(api)
        self.storage = StorageV1Api(api)
        self.node_name = node_name
        self.root = root
        self.default_class = default_class
        self.claims = Informer("pvcs", self.core.list_persistent_volume_claim_for_all_namespaces,
                               self._on_claim, resync=5)
        self.volumes = Informer("pvs", self.core.list_persistent_volume, self._on_volume, resync=5)
        self._classes: dict[str, Obj] = {}

    def start(self) -> None:
        self.ensure_classes()
        self.volumes.start().wait_synced()
        self.claims.start().wait_synced()

    def stop(self) -> None:
        self.claims.stop()
        self.volumes.stop()

    def ensure_classes(self) -> None:
        for cls in storage_classes(self.default_class):
            try:
                raw(self.storage.create_storage_class, body=cls)
            except ApiException as error:
                if error.status != 409:
                    raise

    # -- claims -----------------------------------------------------------------------------

    def _on_claim(self, event: str, claim: Obj) -> None:
        if event == "DELETED" or not self._wants_volume(claim):
            return
        name = f"pvc-{claim['metadata']['uid']}"
        # the informer may lag behind our own create; ask the apiserver before making it twice
        if self.volumes.get(name) is not None or ignore_missing(self.core.read_persistent_volume, name):
            return
        self._provision(claim, name)

    def _wants_volume(self, claim: Obj) -> bool:
        """Pending, ours, allowed now (Immediate, or WFFC with this node selected), not a populator's."""
        spec, meta = claim["spec"], claim["metadata"]
        if spec.get("volumeName") or claim.get("status", {}).get("phase", "Pending") != "Pending":
            return False
        if meta.get("deletionTimestamp"):
            return False
        cls = self._class(spec.get("storageClassName") or "")
        if cls is None or cls.get("provisioner") != PROVISIONER:
            return False
        if cls.get("volumeBindingMode") == "WaitForFirstConsumer" and \
                meta.get("annotations", {}).get(SELECTED_NODE) != self.node_name:
            return False
        ref = spec.get("dataSourceRef") or {}
        return not ref or ref.get("kind") == "PersistentVolumeClaim" and not ref.get("apiGroup")

    def _class(self, name: str) -> Obj | None:
        if name not in self._classes:
            found = ignore_missing(self.storage.read_storage_class, name) if name else None
            if found is None:
                return None
            self._classes[name] = found
        return self._classes[name]

    def _provision(self, claim: Obj, name: str) -> None:
        spec = claim["spec"]
        request = spec["resources"]["requests"]["storage"]
        block = spec.get("volumeMode") == "Block"
        path = self.root / (f"{name}.img" if block else name)
        if block:
            backing.create_sparse_file(path, parse_quantity(request))
        else:
            backing.create_dir(path)
        self._clone_if_asked(claim, path)
        try:
            raw(self.core.create_persistent_volume, body=self._volume(claim, name, path, request))
        except ApiException as error:
            if error.status != 409:
                backing.remove(path)
                raise
        log.info("provisioned %s for %s/%s", name, claim["metadata"]["namespace"], claim["metadata"]["name"])

    def _volume(self, claim: Obj, name: str, path: Path, request: str) -> Obj:
        meta, spec = claim["metadata"], claim["spec"]
        cls = self._class(spec.get("storageClassName") or "") or {}
        affinity = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [self.node_name]}]}]}}
        return {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER, BACKING: str(path)}},
            "spec": {
                "capacity": {"storage": request},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "volumeMode": spec.get("volumeMode") or "Filesystem",
                "persistentVolumeReclaimPolicy": cls.get("reclaimPolicy", "Delete"),
                "storageClassName": spec.get("storageClassName"),
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                             "name": meta["name"], "uid": meta["uid"]},
                "local": {"path": str(path)},
                "nodeAffinity": affinity,
                "mountOptions": cls.get("mountOptions") or None,
            },
        }

    def _clone_if_asked(self, claim: Obj, target: Path) -> None:
        """A ``dataSource`` naming a bound PVC of the same mode: copy its contents (a CSI clone)."""
        source = claim["spec"].get("dataSourceRef") or claim["spec"].get("dataSource") or {}
        if source.get("kind") != "PersistentVolumeClaim" or source.get("apiGroup"):
            return
        namespace = source.get("namespace") or claim["metadata"]["namespace"]
        other = self.claims.get(source["name"], namespace)
        volume = self.volumes.get(other["spec"].get("volumeName", "")) if other else None
        path = (volume or {}).get("spec", {}).get("local", {}).get("path")
        if not path:
            raise RuntimeError(f"clone source {namespace}/{source['name']} is not bound yet")
        backing.copy_contents(Path(path), target)

    # -- volumes ----------------------------------------------------------------------------

    def _on_volume(self, event: str, volume: Obj) -> None:
        meta, spec = volume["metadata"], volume["spec"]
        if event == "DELETED" or meta.get("deletionTimestamp") or \
                meta.get("annotations", {}).get(PROVISIONED_BY) != PROVISIONER:
            return
        if volume.get("status", {}).get("phase") != "Released" or \
                spec.get("persistentVolumeReclaimPolicy") != "Delete":
            return
        path = meta["annotations"].get(BACKING) or spec.get("local", {}).get("path")
        if path and Path(path).is_relative_to(self.root):
            backing.remove(Path(path))
        ignore_missing(self.core.delete_persistent_volume, meta["name"])
        log.info("deleted released %s", meta["name"])
