"""The upload flow: DataVolumes with ``source.upload``, filled by ``virtctl image-upload`` or
``cdi image-upload`` through the upload proxy.

The PVC is marked ``storage.upload.target`` (with its content type) for the PVC upload
controller, which runs the upload server; the server's state on the PVC gives the phase:
pod created -> UploadScheduled, ready for bytes -> UploadReady, upload done -> Succeeded.
An upload that fails is answered to the client, and the server stays up for another try, so an
upload DataVolume does not fail on its own.
"""

from __future__ import annotations

from typing import Any

from .. import annotations as ann
from ..config import ControllerConfig
from ..phases import EventType, Phase
from .flow import Event, WorkerFlow

NOT_CONFIGURED = ("UploadNotConfigured",
                  "this controller has no upload-server CA (UPLOADSERVER_CA_CERT_FILE/UPLOADSERVER_CA_KEY_FILE "
                  "and UPLOADPROXY_CLIENT_CA_FILE), so it cannot run upload servers")


class UploadFlow(WorkerFlow):
    component = "datavolume-upload-controller"
    progress_phase: Phase | None = Phase.UPLOAD_READY
    """While the upload runs the server reports how far it got (CDI shows N/A for uploads)."""
    pod_annotation = ann.UPLOAD_POD_NAME

    def __init__(self, configured: bool = True) -> None:
        self.configured = configured

    def refusal(self, dv: dict[str, Any]) -> tuple[str, str] | None:
        return None if self.configured else NOT_CONFIGURED

    def claim_annotations(self, dv: dict[str, Any], config: ControllerConfig) -> dict[str, str]:
        spec = dv.get("spec") or {}
        preallocation = spec.get("preallocation")
        return {
            ann.UPLOAD_TARGET: "",
            ann.CONTENT_TYPE: spec.get("contentType") or "kubevirt",
            ann.PREALLOCATION_REQUESTED: str(config.preallocation if preallocation is None
                                             else bool(preallocation)).lower(),
        }

    def worker_phase(self, annotations: dict[str, str], claim_name: str) -> tuple[Phase, Event] | None:
        phase = annotations.get(ann.POD_PHASE)
        if phase == "Succeeded":
            return Phase.SUCCEEDED, Event(EventType.NORMAL, "UploadSucceeded", f"Successfully uploaded into {claim_name}")
        if phase == "Running" and annotations.get(ann.POD_READY) == "true":
            return Phase.UPLOAD_READY, Event(EventType.NORMAL, "UploadReady", f"Upload into {claim_name} ready")
        if phase is not None or ann.UPLOAD_POD_NAME in annotations:
            return Phase.UPLOAD_SCHEDULED, Event(EventType.NORMAL, "UploadScheduled", f"Upload into {claim_name} scheduled")
        return None
