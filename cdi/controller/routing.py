"""Which reconcilers must look again when a watched object changes.

Each watch event names one object; :func:`keys_for` turns it into the :class:`~.keys.Key` s of the
reconcilers whose decisions depend on it. The rules are the only place that knows how objects
point at each other: owner references (a PVC to its DataVolume, a worker pod to its PVC), CDI's
annotations (a cloner pod and a temporary snapshot to the clone they serve), and references in
specs (a DataVolume's ``sourceRef`` to a DataSource, a clone's source PVC).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import annotations as ann
from . import resources as res
from .cache import ObjectCache
from .context import CONFIG_NAME
from .cron.imports import CRON_LABEL
from .keys import Key, Reconciler
from .resources import Resource

Body = dict[str, Any]


def _meta(body: Body) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return meta.get("namespace") or "", meta["name"]


def _owners(body: Body, kind: str) -> list[str]:
    return [ref["name"] for ref in (body.get("metadata") or {}).get("ownerReferences") or []
            if ref.get("kind") == kind]


def _annotations(body: Body) -> dict[str, str]:
    return dict((body.get("metadata") or {}).get("annotations") or {})


def _split(reference: str) -> tuple[str, str] | None:
    namespace, _, name = reference.partition("/")
    return (namespace, name) if namespace and name else None


def keys_for(cache: ObjectCache, resource: Resource, body: Body) -> Iterator[Key]:
    namespace, name = _meta(body)
    if resource == res.DATAVOLUME:
        yield Key(Reconciler.DATAVOLUME, namespace, name)
        # a clone of this DataVolume's PVC waits for it to succeed
        for dv in cache.select(res.DATAVOLUME, lambda d: _clone_source(d, "pvc") == (namespace, name)):
            yield Key(Reconciler.DATAVOLUME, *dv)
        yield from _data_sources_naming(cache, "pvc", namespace, name)
        cron = ((body.get("metadata") or {}).get("labels") or {}).get(CRON_LABEL)
        if cron:
            yield Key(Reconciler.CRON, namespace, cron)
    elif resource == res.DATAIMPORTCRON:
        yield Key(Reconciler.CRON, namespace, name)
    elif resource == res.PVC:
        yield from _claim_keys(cache, body, namespace, name)
    elif resource == res.POD:
        yield from _pod_keys(cache, body, namespace)
    elif resource == res.STORAGECLASS:
        yield Key(Reconciler.STORAGE_PROFILE, "", name)
        yield Key(Reconciler.CONFIG, "", CONFIG_NAME)
    elif resource == res.STORAGEPROFILE:
        yield Key(Reconciler.STORAGE_PROFILE, "", name)
    elif resource == res.CDICONFIG:
        yield Key(Reconciler.CONFIG, "", name)
    elif resource == res.VOLUMESNAPSHOTCLASS:  # profiles report the snapshot class of their driver
        for storage_class in cache.list(res.STORAGECLASS):
            yield Key(Reconciler.STORAGE_PROFILE, "", _meta(storage_class)[1])
    elif resource == res.VOLUMESNAPSHOT:
        yield from _snapshot_keys(cache, body, namespace, name)
        yield from _data_sources_naming(cache, "snapshot", namespace, name)
        cron = ((body.get("metadata") or {}).get("labels") or {}).get(CRON_LABEL)
        if cron:
            yield Key(Reconciler.CRON, namespace, cron)
    elif resource == res.DATASOURCE:
        yield Key(Reconciler.DATASOURCE, namespace, name)
        yield from _data_sources_naming(cache, "dataSource", namespace, name)
        yield from _referring_datavolumes(cache, namespace, name)


def _claim_keys(cache: ObjectCache, pvc: Body, namespace: str, name: str) -> Iterator[Key]:
    annotations = _annotations(pvc)
    if ann.IMPORT_ENDPOINT in annotations or ann.IMPORT_SOURCE in annotations:
        yield Key(Reconciler.IMPORT, namespace, name)
    if ann.UPLOAD_TARGET in annotations or ann.CLONE_REQUEST in annotations:
        yield Key(Reconciler.UPLOAD, namespace, name)
    if ann.CLONE_REQUEST in annotations:
        yield Key(Reconciler.CLONE, namespace, name)
    for owner in _owners(pvc, "DataVolume"):
        yield Key(Reconciler.DATAVOLUME, namespace, owner)
    yield from _data_sources_naming(cache, "pvc", namespace, name)
    # a clone waits for its source to exist, be populated and be free
    reference = f"{namespace}/{name}"
    for target in cache.select(res.PVC, lambda t: _annotations(t).get(ann.CLONE_REQUEST) == reference):
        yield Key(Reconciler.CLONE, *target)
    for dv in cache.select(res.DATAVOLUME, lambda d: _clone_source(d, "pvc") == (namespace, name)):
        yield Key(Reconciler.DATAVOLUME, *dv)
    source = _annotations(pvc).get(ann.CLONE_FOR_DATAVOLUME)
    if source and _split(source):
        yield Key(Reconciler.DATAVOLUME, *_split(source))  # type: ignore[misc]


def _clone_source(dv: Body, kind: str) -> tuple[str, str] | None:
    """(namespace, name) of the DataVolume's ``source.pvc`` or ``source.snapshot``."""
    source = ((dv.get("spec") or {}).get("source") or {}).get(kind)
    if not isinstance(source, dict) or not source.get("name"):
        return None
    return str(source.get("namespace") or (dv.get("metadata") or {}).get("namespace") or ""), str(source["name"])


def _pod_keys(cache: ObjectCache, pod: Body, namespace: str) -> Iterator[Key]:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    component = labels.get(ann.COMPONENT_LABEL)
    if component == ann.CLONER_COMPONENT:
        target = _split(_annotations(pod).get(ann.CLONE_TARGET, ""))
        if target:
            yield Key(Reconciler.CLONE, *target)
        return
    if component == ann.SIZE_DETECTION_COMPONENT:  # the clones of its source wait for its answer
        source = _annotations(pod).get(ann.SIZE_DETECTION_SOURCE)
        for dv in cache.select(res.DATAVOLUME, lambda d: _clone_source(d, "pvc") == (namespace, source)):
            yield Key(Reconciler.DATAVOLUME, *dv)
        return
    reconciler = Reconciler.UPLOAD if component == ann.UPLOAD_SERVER_COMPONENT else Reconciler.IMPORT
    for owner in _owners(pod, "PersistentVolumeClaim"):
        yield Key(reconciler, namespace, owner)


def _snapshot_keys(cache: ObjectCache, snapshot: Body, namespace: str, name: str) -> Iterator[Key]:
    owner = _split(_annotations(snapshot).get(ann.CLONE_FOR_DATAVOLUME, ""))
    if owner:
        yield Key(Reconciler.DATAVOLUME, *owner)
    for dv in cache.select(res.DATAVOLUME, lambda d: _clone_source(d, "snapshot") == (namespace, name)):
        yield Key(Reconciler.DATAVOLUME, *dv)


def _referring_datavolumes(cache: ObjectCache, namespace: str, name: str) -> Iterator[Key]:
    def refers(dv: Body) -> bool:
        ref = (dv.get("spec") or {}).get("sourceRef") or {}
        return ref.get("kind") == "DataSource" and ref.get("name") == name and \
            (ref.get("namespace") or _meta(dv)[0]) == namespace
    for dv in cache.select(res.DATAVOLUME, refers):
        yield Key(Reconciler.DATAVOLUME, *dv)


def _data_sources_naming(cache: ObjectCache, kind: str, namespace: str, name: str) -> Iterator[Key]:
    """DataSources whose ``spec.source.<kind>`` is this object (their namespace by default)."""
    def names(data_source: Body) -> bool:
        ref = ((data_source.get("spec") or {}).get("source") or {}).get(kind)
        return isinstance(ref, dict) and ref.get("name") == name and \
            (ref.get("namespace") or _meta(data_source)[0]) == namespace
    for found in cache.select(res.DATASOURCE, names):
        yield Key(Reconciler.DATASOURCE, *found)
