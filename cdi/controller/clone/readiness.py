"""Whether a clone may start: its source exists, holds its data, and nobody is writing to it.

CDI waits, rather than fails, while the source is missing (it may be created later, e.g. by a
DataImportCron), while it is still being populated (a DataVolume that has not succeeded), and
while a pod other than CDI's own uses it (copying a disk a running VM writes to gives a torn
copy); each wait is explained on the DataVolume.
"""

from __future__ import annotations

from typing import Any

from .. import annotations as ann
from .. import resources as res
from ..cache import ObjectCache
from ..errors import Explained
from ..kube import Kube
from ..phases import Reason
from .source import CloneSource, SourceKind

Body = dict[str, Any]


class NotReady(Explained):
    """The source cannot be cloned yet (missing, not populated, in use): the clone waits."""


def source_object(cache: ObjectCache, source: CloneSource) -> Body:
    """The source's body, if it exists and is populated; else :class:`NotReady` saying why."""
    body = cache.get(source.kind.resource, source.namespace, source.name)
    if body is None:
        what = "PVC" if source.kind is SourceKind.PVC else "VolumeSnapshot"
        raise NotReady(Reason.CLONE_WITHOUT_SOURCE, f"Clone source {what} {source} not found")
    if source.kind is SourceKind.SNAPSHOT:
        if not (body.get("status") or {}).get("readyToUse"):
            raise NotReady(Reason.CLONE_SOURCE_NOT_POPULATED, f"Clone source VolumeSnapshot {source} is not ready to use")
        return body
    if (body.get("status") or {}).get("phase") != "Bound":
        raise NotReady(Reason.CLONE_SOURCE_NOT_POPULATED, f"Clone source PVC {source} is not bound")
    for owner in body["metadata"].get("ownerReferences") or []:
        if owner.get("kind") != "DataVolume":
            continue
        dv = cache.get(res.DATAVOLUME, source.namespace, str(owner.get("name")))
        if dv is not None and (dv.get("status") or {}).get("phase") != "Succeeded":
            raise NotReady(Reason.CLONE_SOURCE_NOT_POPULATED,
                           f"Clone source PVC {source} is not populated yet (DataVolume {owner.get('name')} "
                           f"is {(dv.get('status') or {}).get('phase') or 'Pending'})")
    return body


def users_of(kube: Kube, source: CloneSource) -> list[str]:
    """Names of the running pods, other than CDI's, that mount the source PVC."""
    users = []
    for pod in kube.list(res.POD, source.namespace):
        meta = pod.get("metadata") or {}
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if (meta.get("labels") or {}).get(ann.COMPONENT_LABEL) in (ann.CLONER_COMPONENT, ann.SIZE_DETECTION_COMPONENT):
            continue
        claims = {(v.get("persistentVolumeClaim") or {}).get("claimName")
                  for v in (pod.get("spec") or {}).get("volumes") or []}
        if source.name in claims:
            users.append(str(meta.get("name")))
    return sorted(users)


def ensure_unused(kube: Kube, source: CloneSource) -> None:
    if source.kind is not SourceKind.PVC:
        return
    users = users_of(kube, source)
    if users:
        raise NotReady(Reason.CLONE_SOURCE_IN_USE,
                       f"pod {', '.join(users)} is using clone source PVC {source}; the clone waits until it is free")
