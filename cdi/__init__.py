"""cdi-py: get VM disk images into volumes, as KubeVirt's CDI does.

``import cdi; cdi.import_image("https://.../disk.qcow2", "/var/lib/vols/vm1", size=10 << 30)``
"""

from importer.errors import (AuthenticationFailed, CdiImportError, ChecksumMismatch, ImageTooLarge,
                             InvalidImage, InvalidSource, PermanentError, ScratchSpaceRequired,
                             SourceNotFound, SourceUnavailable, TemporaryError, UnsafeImage)
from importer.pipeline import ImportResult
from importer.progress import ProgressEvent
from importer.sources import RetryPolicy

from .library import create_blank, import_image

__all__ = [
    "import_image", "create_blank", "ImportResult", "ProgressEvent", "RetryPolicy",
    "CdiImportError", "TemporaryError", "PermanentError", "SourceUnavailable", "SourceNotFound",
    "AuthenticationFailed", "InvalidSource", "InvalidImage", "UnsafeImage", "ImageTooLarge",
    "ChecksumMismatch", "ScratchSpaceRequired",
]
