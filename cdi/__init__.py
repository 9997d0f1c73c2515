"""cdi-py: get VM disk images into volumes, as KubeVirt's CDI does.

``import cdi; cdi.import_image("https://.../disk.qcow2", "/var/lib/vols/vm1", size=10 << 30)``;
``cdi.upload_image("vm1-disk", "disk.qcow2", size="10Gi")`` uploads into a cluster as virtctl does.
"""

from typing import TYPE_CHECKING, Any

from importer.errors import (AuthenticationFailed, CdiImportError, ChecksumMismatch, ImageTooLarge,
                             InvalidImage, InvalidSource, PermanentError, ScratchSpaceRequired,
                             SourceNotFound, SourceUnavailable, TemporaryError, UnsafeImage)
from importer.pipeline import ImportResult
from importer.progress import ProgressEvent
from importer.sources import RetryPolicy

from .imageupload.errors import ImageUploadError
from .library import create_blank, import_image

if TYPE_CHECKING:
    from .imageupload.flow import ImageUploadResult, upload_image

__all__ = [
    "import_image", "create_blank", "ImportResult", "ProgressEvent", "RetryPolicy",
    "CdiImportError", "TemporaryError", "PermanentError", "SourceUnavailable", "SourceNotFound",
    "AuthenticationFailed", "InvalidSource", "InvalidImage", "UnsafeImage", "ImageTooLarge",
    "ChecksumMismatch", "ScratchSpaceRequired",
    "upload_image", "ImageUploadResult", "ImageUploadError",
]


def __getattr__(name: str) -> Any:
    """The upload call loads the Kubernetes client (~0.4 s), so only when first used: ``import cdi``
    and ``cdi import`` stay quick."""
    if name in ("upload_image", "ImageUploadResult"):
        from .imageupload import flow

        return getattr(flow, name)
    raise AttributeError(f"module 'cdi' has no attribute {name!r}")
