"""A clone's source: a PVC or a VolumeSnapshot, named directly or through a DataSource.

KubeVirt writes ``sourceRef: {kind: DataSource}`` into a VM's DataVolume templates; CDI resolves
the DataSource (which may point at one more DataSource, in its own namespace) to the PVC or
snapshot it names, and from then on the DataVolume is a plain clone of that object.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from .. import resources as res
from ..cache import ObjectCache
from ..errors import Explained
from ..resources import Resource

Body = dict[str, Any]


class SourceKind(str, Enum):
    PVC = "PersistentVolumeClaim"
    SNAPSHOT = "VolumeSnapshot"

    @property
    def resource(self) -> Resource:
        return res.PVC if self is SourceKind.PVC else res.VOLUMESNAPSHOT


@dataclass(frozen=True)
class CloneSource:
    kind: SourceKind
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class Unresolved(Explained):
    """The DataVolume names a DataSource that does not (yet) lead to a source."""



def is_clone(dv: Body) -> bool:
    spec = dv.get("spec") or {}
    source = spec.get("source") or {}
    return bool(spec.get("sourceRef")) or isinstance(source.get("pvc"), dict) or isinstance(source.get("snapshot"), dict)


def clone_source(dv: Body, cache: ObjectCache) -> CloneSource:
    """The PVC or snapshot the DataVolume clones; :class:`Unresolved` if a DataSource is in the way."""
    spec = dv.get("spec") or {}
    namespace = dv["metadata"]["namespace"]
    ref = spec.get("sourceRef")
    if ref:
        return _from_data_source(cache, str(ref.get("namespace") or namespace), str(ref.get("name") or ""), depth=0)
    return _direct((spec.get("source") or {}), namespace)


def resolve_data_source(cache: ObjectCache, namespace: str, name: str) -> CloneSource:
    """The PVC or snapshot a DataSource names (through at most one more DataSource)."""
    return _from_data_source(cache, namespace, name, depth=0)


def _direct(source: Body, namespace: str) -> CloneSource:
    for key, kind in (("pvc", SourceKind.PVC), ("snapshot", SourceKind.SNAPSHOT)):
        value = source.get(key)
        if isinstance(value, dict):
            return CloneSource(kind, str(value.get("namespace") or namespace), str(value.get("name") or ""))
    raise Unresolved("UnsupportedSource", "the DataVolume's source is neither a PVC nor a VolumeSnapshot")


def _from_data_source(cache: ObjectCache, namespace: str, name: str, depth: int) -> CloneSource:
    data_source = cache.get(res.DATASOURCE, namespace, name)
    if data_source is None:
        raise Unresolved("DataSourceNotFound", f"DataSource {namespace}/{name} not found")
    source = (data_source.get("spec") or {}).get("source") or {}
    chained = source.get("dataSource")
    if isinstance(chained, dict):
        if depth >= 1:
            raise Unresolved("DataSourceChainTooDeep",
                             f"DataSource {namespace}/{name} points to another DataSource more than one level deep")
        if chained.get("namespace") not in (None, "", namespace):
            raise Unresolved("DataSourceCrossNamespace",
                             f"DataSource {namespace}/{name} may only point to a DataSource in its own namespace")
        return _from_data_source(cache, namespace, str(chained.get("name") or ""), depth + 1)
    try:
        return _direct(source, namespace)
    except Unresolved:
        raise Unresolved("DataSourceNotReady", f"DataSource {namespace}/{name} has no source") from None
