"""Which flow serves a DataVolume: one table from source kind to flow."""

from __future__ import annotations

from typing import Any

from ..clone.source import is_clone
from .clone import CloneFlow
from .flow import Flow
from .importer import ImportFlow, source_of
from .upload import UploadFlow

IMPORTED = ("http", "s3", "registry", "blank", "gcs", "imageio", "vddk")
"""Sources the import flow owns; it refuses those it cannot import yet (gcs, imageio, vddk)
with a reason, as it owns their refusal messages."""


def flow_for(dv: dict[str, Any], *, upload_configured: bool = True) -> Flow:
    """The flow for this DataVolume's source; ``upload_configured`` says whether this controller
    was given the upload-server CA (without it upload volumes wait with a reason)."""
    if is_clone(dv):
        return CloneFlow()
    kind, _ = source_of(dv)
    if kind == "upload":
        return UploadFlow(configured=upload_configured)
    return ImportFlow()
