"""``/datavolume-validate``: what CDI's validating webhook refuses and our CRD's CEL cannot (CDI's
``datavolume-validate.go``). Refusals are 422 with CDI's messages; a failed lookup is a 400.

On UPDATE the spec is immutable: ``Cannot update DataVolume Spec``. The one exception is CDI's
multi-stage (warm) import: for a vddk or imageio source with checkpoints, ``checkpoints`` and
``finalCheckpoint`` may change as long as nothing else does. Metadata and status may always change.
The other checks read the cluster, so they run on CREATE only:

* a PVC with the DataVolume's name must not exist already, unless it is one the DataVolume may
  take over: populated for it (``cdi.kubevirt.io/storage.populatedFor``), adoption allowed by the
  DataVolume's ``cdi.kubevirt.io/allowClaimAdoption``, or controlled by a DataVolume;
* the spec checks of :mod:`.speccheck`;
* ``sourceRef``: the DataSource must exist (``SourceRef DataSource/<ns>/<name> not found``) and
  point at a PVC or snapshot (``Empty source field in '<name>'. DataSource may not be ready yet``);
* the clone source, when it exists, must suit the target (:mod:`.clonecheck`); when it does not
  exist yet the DataVolume is admitted and waits for it.
"""

from __future__ import annotations

import copy
from typing import Any

from . import clonecheck, review, speccheck
from .cluster import PVCS, SNAPSHOTS, Cluster
from .review import Cause, Request, obj
from .sources import BadDataSourceChain, CloneSource, DataSourceMissing, data_source_for, direct

POPULATED_FOR = "cdi.kubevirt.io/storage.populatedFor"
ALLOW_CLAIM_ADOPTION = "cdi.kubevirt.io/allowClaimAdoption"
TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool


class Validator:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def admit(self, request: Request) -> dict[str, Any]:
        dv = request.object
        spec = obj(dv.get("spec"))
        if request.operation == "UPDATE":
            old = obj(obj(request.old_object).get("spec"))
            if not spec_change_allowed(old, spec):
                return review.reject(request.uid, 422, [Cause("Cannot update DataVolume Spec", "DataVolume.Spec",
                                                              "FieldValueDuplicate")])
            return review.allow(request.uid)
        if request.operation != "CREATE":
            return review.allow(request.uid)
        metadata = obj(dv.get("metadata"))
        namespace = str(metadata.get("namespace") or request.namespace)
        cause = await self._claim_cause(dv, namespace) or speccheck.size_cause(spec) \
            or await self._source_cause(spec, namespace)
        return review.reject(request.uid, 422, [cause]) if cause else review.allow(request.uid)

    async def _claim_cause(self, dv: dict[str, Any], namespace: str) -> Cause | None:
        name = str(obj(dv.get("metadata")).get("name") or "")
        pvc = await self.cluster.get(PVCS, namespace, name) if name else None
        if pvc is None or may_take_over(pvc, dv):
            return None
        return Cause(f"Destination PVC {namespace}/{name} already exists", "DataVolume.Name", "FieldValueDuplicate")

    async def _source_cause(self, spec: dict[str, Any], namespace: str) -> Cause | None:
        content_type = str(spec.get("contentType") or "")
        ref = spec.get("sourceRef")
        if isinstance(ref, dict):
            return speccheck.source_ref_cause(ref) or await self._source_ref_cause(ref, spec, namespace)
        if not isinstance(spec.get("source"), dict):
            return None
        cause = speccheck.source_cause(obj(spec.get("source")), content_type)
        clone = direct(spec, namespace)
        if cause or clone is None:
            return cause
        label = "PVC" if clone.kind == "pvc" else "Snapshot"
        return await self._clone_cause(clone, spec, f"spec.source.{label}")

    async def _source_ref_cause(self, ref: dict[str, Any], spec: dict[str, Any], namespace: str) -> Cause | None:
        ds_namespace, name = str(ref.get("namespace") or namespace), str(ref["name"])
        try:
            data_source = await data_source_for(ref, namespace, self.cluster)
        except DataSourceMissing:
            return Cause(f"SourceRef DataSource/{ds_namespace}/{name} not found", "spec.sourceRef", "FieldValueNotFound")
        except BadDataSourceChain as err:
            return Cause(str(err), "spec.sourceRef")
        resolved_namespace = str(obj(data_source.get("metadata")).get("namespace") or ds_namespace)
        clone = direct(obj(data_source.get("spec")), resolved_namespace)
        if clone is None:
            return Cause(f"Empty source field in '{name}'. DataSource may not be ready yet", "spec.sourceRef")
        return await self._clone_cause(clone, spec, "spec.sourceRef")

    async def _clone_cause(self, clone: CloneSource, spec: dict[str, Any], field: str) -> Cause | None:
        found = await self.cluster.get(PVCS if clone.kind == "pvc" else SNAPSHOTS, clone.namespace, clone.name)
        if found is None:
            return None  # admitted: the clone waits for its source
        check = clonecheck.pvc_problem if clone.kind == "pvc" else clonecheck.snapshot_problem
        try:
            problem = check(found, spec)
        except ValueError as err:
            problem = f"unreadable size: {err}"
        return Cause(problem, field) if problem else None


def spec_change_allowed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Equal specs, or a multi-stage import that changed only its checkpoints."""
    if old == new:
        return True
    source = obj(new.get("source"))
    multi_stage = bool(new.get("checkpoints")) and ("vddk" in source or "imageio" in source)
    return multi_stage and _without_checkpoints(old) == _without_checkpoints(new)


def may_take_over(pvc: dict[str, Any], dv: dict[str, Any]) -> bool:
    """Whether an existing PVC of the DataVolume's name is one it may use (CDI's rules)."""
    meta, dv_meta = obj(pvc.get("metadata")), obj(dv.get("metadata"))
    if obj(meta.get("annotations")).get(POPULATED_FOR) == dv_meta.get("name"):
        return True
    if obj(dv_meta.get("annotations")).get(ALLOW_CLAIM_ADOPTION) in TRUE:
        return True
    owners = [obj(o) for o in meta.get("ownerReferences") or [] if obj(o).get("controller")]
    return bool(owners) and owners[0].get("kind") == "DataVolume"


def _without_checkpoints(spec: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(spec)
    stripped.pop("checkpoints", None)
    stripped.pop("finalCheckpoint", None)
    return stripped
