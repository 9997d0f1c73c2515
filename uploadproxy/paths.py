"""The upload URL paths and headers: CDI's, and the few we add.

CDI's paths (same at the proxy and the server; ``/v1alpha1/...`` are old aliases):

======================================  =====  =========  ==================================
path                                    mode   body       note
======================================  =====  =========  ==================================
``/v1beta1/upload``                     sync   raw        answer after conversion finished
``/v1beta1/upload-async``               async  raw        answer once bytes are in and
                                                          validated; ``HEAD`` answers 200
``/v1beta1/upload-form``                sync   multipart  the part named ``file``
``/v1beta1/upload-form-async``          async  multipart
``/v1beta1/upload-archive``             sync   raw        server only: the proxy rewrites
                                                          uploads to archive volumes here
======================================  =====  =========  ==================================

Ours: ``/v1beta1/upload-resumable`` (the offset protocol in :mod:`uploadproxy.resumable`) and
the ``Upload-*`` headers below; ``/v1beta1/clone``, where a cloner pod sends a host-assisted
clone (:mod:`uploadproxy.clone`), server only: not in :data:`PROXY_PATHS`, never proxied.
"""

from __future__ import annotations

from dataclasses import dataclass

HEALTHZ = "/healthz"
SYNC = "/v1beta1/upload"
ASYNC = "/v1beta1/upload-async"
FORM = "/v1beta1/upload-form"
FORM_ASYNC = "/v1beta1/upload-form-async"
ARCHIVE = "/v1beta1/upload-archive"
RESUMABLE = "/v1beta1/upload-resumable"
CLONE = "/v1beta1/clone"
"""The clone path at the upload server; the controller gives the cloner
``https://cdi-upload-<pvc>.<ns>.svc:8443`` + ``CLONE`` as ``UPLOAD_URL``."""

CHECKSUM_HEADER = "Upload-Checksum"
"""``<md5|sha1|sha256|sha512>:<hex>`` of the whole file as sent; the server verifies it."""
OFFSET_HEADER = "Upload-Offset"
LENGTH_HEADER = "Upload-Length"
ID_HEADER = "Upload-Id"
MODE_HEADER = "Upload-Mode"
"""``sync`` or ``async``: when the last resumable request is answered."""
CONTENT_TYPE_HEADER = "Upload-Content-Type"
"""``kubevirt`` or ``archive`` for a resumable upload; set by the proxy from the volume."""
STATE_HEADER = "Upload-State"
ERROR_HEADER = "Upload-Error"
"""On a failed upload: ``permanent`` (sending the same file again cannot help: an invalid or unsafe
image, one that needs scratch space the server lacks) or ``temporary``. CDI answers both with a
bare 500; our client stops retrying on the first."""
EXPOSED_HEADERS = (OFFSET_HEADER, LENGTH_HEADER, ID_HEADER, STATE_HEADER, ERROR_HEADER)


@dataclass(frozen=True)
class Route:
    asynchronous: bool
    form: bool = False
    archive: bool = False


ROUTES: dict[str, Route] = {
    SYNC: Route(asynchronous=False),
    ASYNC: Route(asynchronous=True),
    FORM: Route(asynchronous=False, form=True),
    FORM_ASYNC: Route(asynchronous=True, form=True),
    ARCHIVE: Route(asynchronous=False, archive=True),
}
ROUTES.update({path.replace("/v1beta1/", "/v1alpha1/"): route for path, route in list(ROUTES.items())})

PROXY_PATHS = tuple(p for p, r in ROUTES.items() if not r.archive)
"""What the proxy accepts from clients (the archive paths are chosen by the proxy itself)."""


def archive_path(path: str) -> str:
    """Where the proxy sends an upload to an ``archive`` volume, as CDI does: every upload
    path maps to the archive path of the same API version."""
    return ARCHIVE.replace("/v1beta1/", "/v1alpha1/") if path.startswith("/v1alpha1/") else ARCHIVE
