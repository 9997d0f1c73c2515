"""The import flow: http, s3, registry and blank DataVolumes.

The DataVolume's source is written onto its PVC as CDI's ``storage.import.*`` annotations
(so a bare annotated PVC and a DataVolume's PVC are served by the same PVC import controller),
and the importer pod's state, mirrored on the PVC, gives the phase:
pod Pending -> ImportScheduled, Running -> ImportInProgress, Succeeded -> Succeeded (100.0%),
a permanent error or too many failed runs -> Failed.
"""

from __future__ import annotations

from typing import Any

from .. import annotations as ann
from ..config import ControllerConfig
from ..phases import EventType, Phase
from .flow import Event, WorkerFlow

SERVED = ("http", "s3", "registry", "blank")


def source_of(dv: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    source = (dv.get("spec") or {}).get("source") or {}
    for kind, value in source.items():
        if isinstance(value, dict):
            return kind, value
    return "", {}


def _indexed(prefix: str, values: list[str] | None) -> dict[str, str]:
    return {f"{prefix}.{i}": v for i, v in enumerate(values or [])}


def source_annotations(kind: str, source: dict[str, Any]) -> dict[str, str]:
    """CDI's ``storage.import.*`` annotations for one source."""
    if kind == "blank":
        return {ann.IMPORT_SOURCE: "none"}
    out = {ann.IMPORT_SOURCE: kind, ann.IMPORT_ENDPOINT: str(source.get("url", ""))}
    if source.get("secretRef"):
        out[ann.IMPORT_SECRET] = source["secretRef"]
    if source.get("certConfigMap"):
        out[ann.IMPORT_CERT_CONFIG_MAP] = source["certConfigMap"]
    if kind == "http":
        if source.get("checksum"):
            out[ann.IMPORT_CHECKSUM] = source["checksum"]
        if source.get("insecureSkipVerify"):
            out[ann.IMPORT_INSECURE_SKIP_VERIFY] = "true"
        out.update(_indexed(ann.IMPORT_EXTRA_HEADERS, source.get("extraHeaders")))
        out.update(_indexed(ann.IMPORT_SECRET_EXTRA_HEADERS, source.get("secretExtraHeaders")))
    if kind == "registry":
        out[ann.IMPORT_REGISTRY_METHOD] = source.get("pullMethod") or "pod"
        architecture = (source.get("platform") or {}).get("architecture")
        if architecture:
            out[ann.IMPORT_REGISTRY_ARCHITECTURE] = architecture
    return out


class ImportFlow(WorkerFlow):
    component = "datavolume-import-controller"
    progress_phase: Phase | None = Phase.IMPORT_IN_PROGRESS
    pod_annotation = ann.IMPORT_POD_NAME

    def refusal(self, dv: dict[str, Any]) -> tuple[str, str] | None:
        kind, source = source_of(dv)
        if kind not in SERVED:
            return "UnsupportedSource", f"this controller does not import from {kind or 'an empty'} sources yet"
        if kind == "registry" and not source.get("url"):
            return "UnsupportedSource", "registry imports from an imageStream are not supported; give a url"
        return None

    def claim_annotations(self, dv: dict[str, Any], config: ControllerConfig) -> dict[str, str]:
        kind, source = source_of(dv)
        spec = dv.get("spec") or {}
        out = source_annotations(kind, source)
        out[ann.CONTENT_TYPE] = spec.get("contentType") or "kubevirt"
        preallocation = spec.get("preallocation")
        out[ann.PREALLOCATION_REQUESTED] = str(config.preallocation if preallocation is None
                                               else bool(preallocation)).lower()
        return out

    def worker_phase(self, annotations: dict[str, str], claim_name: str) -> tuple[Phase, Event] | None:
        if annotations.get(ann.FATAL_ERROR) == "true":
            why = annotations.get(ann.RUNNING_CONDITION_MESSAGE, "")
            return Phase.FAILED, Event(EventType.WARNING, "ImportFailed", f"Failed to import into PVC {claim_name}: {why}")
        phase = annotations.get(ann.POD_PHASE)
        if phase == "Succeeded":
            return Phase.SUCCEEDED, Event(EventType.NORMAL, "ImportSucceeded", f"Successfully imported into PVC {claim_name}")
        if phase == "Running":
            return Phase.IMPORT_IN_PROGRESS, Event(EventType.NORMAL, "ImportInProgress", f"Import into {claim_name} in progress")
        if phase in ("Pending", "Failed") or ann.IMPORT_POD_NAME in annotations:
            return Phase.IMPORT_SCHEDULED, Event(EventType.NORMAL, "ImportScheduled", f"Import into {claim_name} scheduled")
        return None
