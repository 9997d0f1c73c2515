"""Which PVC or VolumeSnapshot a DataVolume clones, following ``sourceRef`` to its DataSource.

A clone DataVolume names its source directly (``spec.source.pvc`` or ``spec.source.snapshot``,
``{namespace, name}``) or through ``spec.sourceRef: {kind: DataSource, namespace?, name}`` (the
DataVolume's namespace when omitted), which is how KubeVirt VM templates point at golden images.
A DataSource may in turn point at one other DataSource (``spec.source.dataSource``), never more,
never itself (CDI's ``ResolveDataSourceChain``). A DataSource with no pvc or snapshot (not ready
yet) resolves to no clone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdi.clonetoken import SourceKind

from .cluster import DATASOURCES, Cluster
from .review import obj

DATASOURCE_KIND = "DataSource"
MAX_DEPTH = "DataSource reference chain exceeds maximum depth of 1"
SELF_REFERENCE = "DataSource cannot self-reference"


class DataSourceMissing(LookupError):
    """``sourceRef`` names a DataSource that does not exist; the message is kube-apiserver's 404 wording."""


class BadDataSourceChain(ValueError):
    """A DataSource points at itself or at a DataSource that points further."""


@dataclass(frozen=True)
class CloneSource:
    kind: SourceKind
    namespace: str
    name: str

    @property
    def as_tuple(self) -> tuple[str, str, str]:
        return self.kind, self.namespace, self.name


def direct(spec: dict[str, Any], default_namespace: str) -> CloneSource | None:
    """The clone source named in ``spec.source`` (``None`` for imports, uploads and blanks)."""
    return _from_source(obj(spec.get("source")), default_namespace)


async def resolve(spec: dict[str, Any], namespace: str, cluster: Cluster) -> CloneSource | None:
    """The clone source of a DataVolume in ``namespace``, reading its DataSource when it has a ``sourceRef``."""
    ref = spec.get("sourceRef")
    if "source" in spec or not isinstance(ref, dict) or ref.get("kind") != DATASOURCE_KIND:
        return direct(spec, namespace)
    data_source = await data_source_for(ref, namespace, cluster)
    ds_source = obj(obj(data_source.get("spec")).get("source"))
    return _from_source(ds_source, str(obj(data_source.get("metadata")).get("namespace") or namespace))


async def data_source_for(ref: dict[str, Any], namespace: str, cluster: Cluster) -> dict[str, Any]:
    """The DataSource ``ref`` names, after one ``dataSource`` hop at most."""
    ds_namespace, name = str(ref.get("namespace") or namespace), str(ref.get("name") or "")
    found = await cluster.get(DATASOURCES, ds_namespace, name)
    if found is None:
        raise DataSourceMissing(f'datasources.cdi.kubevirt.io "{name}" not found')
    hop = obj(obj(found.get("spec")).get("source")).get("dataSource")
    if not isinstance(hop, dict):
        return found
    hop_namespace, hop_name = str(hop.get("namespace") or ds_namespace), str(hop.get("name") or "")
    if (hop_namespace, hop_name) == (ds_namespace, name):
        raise BadDataSourceChain(SELF_REFERENCE)
    resolved = await cluster.get(DATASOURCES, hop_namespace, hop_name)
    if resolved is None:
        raise DataSourceMissing(f'datasources.cdi.kubevirt.io "{hop_name}" not found')
    if isinstance(obj(obj(resolved.get("spec")).get("source")).get("dataSource"), dict):
        raise BadDataSourceChain(MAX_DEPTH)
    return resolved


def _from_source(source: dict[str, Any], default_namespace: str) -> CloneSource | None:
    kinds: tuple[SourceKind, ...] = ("pvc", "snapshot")
    for kind in kinds:
        ref = source.get(kind)
        if isinstance(ref, dict):
            return CloneSource(kind, str(ref.get("namespace") or default_namespace), str(ref.get("name") or ""))
    return None
