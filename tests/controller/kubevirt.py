"""What KubeVirt's virt-controller does with a VirtualMachine's ``dataVolumeTemplates``, for tests
that stand where KubeVirt stands (no KubeVirt runs here).

:func:`render_data_volume` follows KubeVirt 1.7's rendering (``pkg/storage/types/dv.go``,
``GenerateDataVolumeFromTemplate``, and the VM controller that creates the result), written
from its behaviour:

* name, labels and annotations come from the template's metadata; the annotation
  ``cdi.kubevirt.io/allowClaimAdoption: "true"`` is added;
* the VM's ``priorityClassName`` is used when the template names none;
* a ``sourceRef`` to a DataSource is resolved by reading the DataSource's **spec** and replaced
  by ``source.pvc`` or ``source.snapshot`` (the namespace defaulting to the DataSource's), so
  CDI sees a plain clone; ``sourceRef`` is removed;
* the DataVolume is owned by the VM (a controller reference).

:data:`VM_CRD` is a minimal ``virtualmachines.kubevirt.io`` definition, so a real VM object can
own the DataVolume as it does under KubeVirt.
"""

from __future__ import annotations

import copy
from typing import Any

Body = dict[str, Any]
ALLOW_CLAIM_ADOPTION = "cdi.kubevirt.io/allowClaimAdoption"

VM_CRD: Body = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "virtualmachines.kubevirt.io"},
    "spec": {"group": "kubevirt.io", "scope": "Namespaced",
             "names": {"kind": "VirtualMachine", "plural": "virtualmachines", "singular": "virtualmachine",
                       "shortNames": ["vm", "vms"]},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def resolved_source(data_source: Body, default_namespace: str) -> Body:
    source = (data_source.get("spec") or {}).get("source") or {}
    for kind in ("pvc", "snapshot"):
        if isinstance(source.get(kind), dict):
            ref = dict(source[kind])
            ref.setdefault("namespace", default_namespace)
            if not ref["namespace"]:
                ref["namespace"] = default_namespace
            return {kind: ref}
    raise ValueError("the DataSource names neither a pvc nor a snapshot")


def render_data_volume(vm: Body, template: Body, data_source: Body | None) -> Body:
    """The DataVolume virt-controller creates for ``template`` (one of ``vm``'s dataVolumeTemplates)."""
    meta = copy.deepcopy(template.get("metadata") or {})
    spec: Body = copy.deepcopy(template.get("spec") or {})
    annotations = dict(meta.get("annotations") or {})
    annotations[ALLOW_CLAIM_ADOPTION] = "true"
    vm_meta = vm["metadata"]
    priority = ((vm.get("spec") or {}).get("template") or {}).get("spec", {}).get("priorityClassName")
    if not spec.get("priorityClassName") and priority:
        spec["priorityClassName"] = priority
    ref = spec.get("sourceRef")
    if ref and ref.get("kind") == "DataSource":
        assert data_source is not None, "a sourceRef needs its DataSource"
        spec["source"] = resolved_source(data_source, str(ref.get("namespace") or vm_meta["namespace"]))
        spec.pop("sourceRef")
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": meta["name"], "namespace": vm_meta["namespace"],
                     "labels": dict(meta.get("labels") or {}), "annotations": annotations,
                     "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                                          "name": vm_meta["name"], "uid": vm_meta["uid"],
                                          "controller": True, "blockOwnerDeletion": True}]},
        "spec": spec,
    }
