"""Is the clone source, if it exists already, compatible with the target? (CDI's ``ValidateClone``.)

CDI admits a clone whose source does not exist yet: the DataVolume waits (``CloneWithoutSource``)
and the controller checks again once the source appears. When the source exists:

* a PVC: its content type (annotation ``cdi.kubevirt.io/storage.contentType``, ``kubevirt`` when
  absent or unknown) must equal the DataVolume's; and the target's requested size must not be
  smaller than the source's request, checked when the target is ``spec.pvc`` (sizes used verbatim)
  or ``spec.storage`` with a size and the source is a Block volume (a Filesystem source's size
  says nothing exact about the image once filesystem overhead is added, so CDI leaves that to the
  controller);
* a VolumeSnapshot: it must have a status, no error, and a VolumeSnapshotClass; a target size, if
  given, must not be smaller than the snapshot's ``restoreSize``.
"""

from __future__ import annotations

from typing import Any

from kubernetes.utils import parse_quantity

from .review import obj

CONTENT_TYPE_ANNOTATION = "cdi.kubevirt.io/storage.contentType"
CONTENT_TYPES = ("kubevirt", "archive")


def requested(resources: Any) -> int | None:
    """``resources.requests.storage`` in bytes; ``None`` if absent (ValueError if not a quantity)."""
    value = obj(obj(resources).get("requests")).get("storage")
    return None if value is None else int(parse_quantity(str(value)))


def target_resources(spec: dict[str, Any]) -> tuple[Any, bool]:
    """``(resources, explicit)``: the target's resources, and whether they come from ``spec.pvc``."""
    if isinstance(spec.get("pvc"), dict):
        return spec["pvc"].get("resources"), True
    return obj(spec.get("storage")).get("resources"), False


def content_type(value: Any) -> str:
    return value if value in CONTENT_TYPES else "kubevirt"


def pvc_problem(source: dict[str, Any], spec: dict[str, Any]) -> str | None:
    annotations = obj(obj(source.get("metadata")).get("annotations"))
    source_type, target_type = content_type(annotations.get(CONTENT_TYPE_ANNOTATION)), content_type(
        spec.get("contentType") or "kubevirt")
    if source_type != target_type:
        return f"Source contentType ({source_type}) and target contentType ({target_type}) do not match"
    resources, explicit = target_resources(spec)
    target = requested(resources)
    source_spec = obj(source.get("spec"))
    block = source_spec.get("volumeMode") == "Block"
    if not explicit and (target is None or not block):
        return None
    return _size_problem(requested(source_spec.get("resources")), target)


def snapshot_problem(snapshot: dict[str, Any], spec: dict[str, Any]) -> str | None:
    if not isinstance(snapshot.get("status"), dict):
        return "no status on source snapshot yet"
    status = obj(snapshot.get("status"))
    if isinstance(status.get("error"), dict):
        return f"snapshot in error state with msg: {status['error'].get('message') or 'no details'}"
    if not obj(snapshot.get("spec")).get("volumeSnapshotClassName"):
        meta = obj(snapshot.get("metadata"))
        return (f"snapshot {meta.get('name')}/{meta.get('namespace')} does not have volume snap class populated, "
                "can't clone")
    target = requested(target_resources(spec)[0])
    restore = status.get("restoreSize")
    if target is None or restore is None:
        return None
    if int(parse_quantity(str(restore))) > target:
        return "target resources requests storage size is smaller than the source"
    return None


def _size_problem(source: int | None, target: int | None) -> str | None:
    if source is None or target is None:
        return "source/target missing storage resource requests"
    if source > target:
        return f"target resources requests storage size is smaller than the source {target} < {source}"
    return None
