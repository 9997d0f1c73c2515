"""Which flow serves a DataVolume: one table from source kind to flow, and the flow for
sources this controller does not handle yet."""

from __future__ import annotations

from typing import Any

from ..config import ControllerConfig
from .flow import Event, Flow
from .importer import ImportFlow, source_of
from .upload import UploadFlow

IMPORTED = ("http", "s3", "registry", "blank", "gcs", "imageio", "vddk")
"""Sources the import flow owns; it refuses those it cannot import yet (gcs, imageio, vddk)
with a reason, as it owns their refusal messages."""


class UnsupportedFlow:
    """Clones (``pvc``, ``snapshot``, ``sourceRef``) and any other source this controller does not
    run yet: the DataVolume stays Pending with a condition that says so, and no PVC is created."""

    component = "datavolume-controller"
    progress_phase: str | None = None
    pod_annotation = ""

    def refusal(self, dv: dict[str, Any]) -> tuple[str, str] | None:
        spec = dv.get("spec") or {}
        if spec.get("sourceRef"):
            return "UnsupportedSource", "DataVolumes from a DataSource (sourceRef) are clones, not supported yet"
        kind, _ = source_of(dv)
        return "UnsupportedSource", f"this controller does not handle {kind or 'an empty'} sources yet"

    def claim_annotations(self, dv: dict[str, Any], config: ControllerConfig) -> dict[str, str]:
        return {}

    def worker_phase(self, annotations: dict[str, str], claim_name: str) -> tuple[str, Event] | None:
        return None


def flow_for(dv: dict[str, Any], *, upload_configured: bool = True) -> Flow:
    """The flow for this DataVolume's source; ``upload_configured`` says whether this controller
    was given the upload-server CA (without it upload volumes wait with a reason)."""
    kind, _ = source_of(dv)
    if (dv.get("spec") or {}).get("sourceRef"):
        return UnsupportedFlow()
    if kind in IMPORTED:
        return ImportFlow()
    if kind == "upload":
        return UploadFlow(configured=upload_configured)
    return UnsupportedFlow()
