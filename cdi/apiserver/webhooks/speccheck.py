"""The spec checks of CDI's DataVolume validating webhook that need no lookup, with CDI's messages.

The CRD's CEL rules (``crds/cdi.kubevirt.io_datavolumes.yaml``) already refuse: no or several
sources, ``source`` with ``sourceRef``, no ``pvc``/``storage`` or both, an unknown ``contentType``,
``blank`` with ``archive``. What remains here is what CEL in our schema does not say:

* a size is required (``PVC size is missing`` / ``Storage size is missing``) and must be positive,
  except with ``storage`` for a clone, whose size comes from the source;
* ``sourceRef``: kind given and ``DataSource``, name given;
* URLs of http, s3, gcs, imageio and vddk sources: parseable, scheme http, https or gs (CDI's list;
  ``s3://`` too for s3 sources, which our importer reads and CDI's does not);
* registry: ``kubevirt`` content only, a ``url`` xor an ``imageStream``, a docker:// or
  oci-archive:// URL, ``pullMethod`` pod or node, an ImageStream only with node pull;
* imageio needs secretRef, certConfigMap and diskId; vddk needs secretRef, uuid, backingFile and
  thumbprint; pvc and snapshot sources need a non-empty namespace and name.

Each check returns the first problem as a :class:`~.review.Cause` (CDI stops at the first too).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from kubernetes.utils import parse_quantity

from .review import Cause, obj

URL_SCHEMES = ("http", "https", "gs")
REGISTRY_SCHEMES = ("docker", "oci-archive")
PULL_METHODS = ("pod", "node")


def size_cause(spec: dict[str, Any]) -> Cause | None:
    name, holder = ("PVC", spec.get("pvc")) if isinstance(spec.get("pvc"), dict) else ("Storage", spec.get("storage"))
    value = obj(obj(obj(holder).get("resources")).get("requests")).get("storage")
    field = f"spec.{name}.resources.requests.size"
    if value is None:
        source = obj(spec.get("source"))
        clone = "sourceRef" in spec or "pvc" in source or "snapshot" in source
        return None if name == "Storage" and clone else Cause(f"{name} size is missing", field)
    try:
        size = parse_quantity(str(value))
    except ValueError:
        return Cause(f"{name} size {value!r} is not a quantity", field)
    return Cause(f"{name} size can't be equal or less than zero", field) if size <= 0 else None


def source_ref_cause(ref: dict[str, Any]) -> Cause | None:
    kind = ref.get("kind") or ""
    if not kind:
        return Cause("Missing sourceRef kind", "spec.sourceRef.Kind")
    if kind != "DataSource":
        return Cause(f"Unsupported sourceRef kind {kind}, currently only DataSource is supported",
                     "spec.sourceRef.Kind")
    if not ref.get("name"):
        return Cause("Missing sourceRef name", "spec.sourceRef.Name")
    return None


def source_cause(source: dict[str, Any], content_type: str) -> Cause | None:
    """The first problem with ``spec.source`` (already known to hold exactly one kind)."""
    for kind, check in CHECKS.items():
        value = source.get(kind)
        if isinstance(value, dict):
            cause = check(value, content_type)
            if cause is not None:
                return cause
    return None


def url_cause(url: Any, label: str, schemes: tuple[str, ...] = URL_SCHEMES) -> Cause | None:
    """CDI's ``validateSourceURL``: Go's ``ParseRequestURI`` wants an absolute URL or path."""
    field = f"spec.source.{label}.url"
    if not url:
        return Cause("spec.source source URL is empty", field)
    parsed = urllib.parse.urlsplit(str(url))
    if not (parsed.scheme or str(url).startswith("/")) or any(c in str(url) for c in " \t\r\n"):
        return Cause(f"spec.source Invalid source URL: {url}", field)
    if parsed.scheme not in schemes:
        return Cause(f"spec.source Invalid source URL scheme: {url}", field)
    return None


def _http(value: dict[str, Any], _: str) -> Cause | None:
    return url_cause(value.get("url"), "HTTP")


def _s3(value: dict[str, Any], _: str) -> Cause | None:
    return url_cause(value.get("url"), "S3", (*URL_SCHEMES, "s3"))


def _gcs(value: dict[str, Any], _: str) -> Cause | None:
    return url_cause(value.get("url"), "GCS")


def _imageio(value: dict[str, Any], _: str) -> Cause | None:
    if not (value.get("secretRef") and value.get("certConfigMap") and value.get("diskId")):
        return Cause("spec.source.Imageio source Imageio is not valid", "spec.source.Imageio")
    return url_cause(value.get("url"), "ImageIO")


def _vddk(value: dict[str, Any], _: str) -> Cause | None:
    if not all(value.get(k) for k in ("secretRef", "uuid", "backingFile", "thumbprint")):
        return Cause("spec.source.VDDK source VDDK is not valid", "spec.source.VDDK")
    return url_cause(value.get("url"), "VDDK")


def _registry(value: dict[str, Any], content_type: str) -> Cause | None:
    if content_type not in ("", "kubevirt"):
        return Cause("ContentType must be kubevirt when Source is Registry", "spec.contentType")
    url, stream, method = value.get("url"), value.get("imageStream"), value.get("pullMethod")
    if (url is None) == (stream is None):
        return Cause("Source registry should have either URL or ImageStream", "spec.source.Registry")
    if url is not None and urllib.parse.urlsplit(str(url)).scheme not in REGISTRY_SCHEMES:
        return Cause(f"Illegal registry source URL scheme {url}", "spec.source.Registry.URL")
    if method is not None and method not in PULL_METHODS:
        return Cause(f'ImportMethod {method} is neither pod, node or ""', "spec.source.Registry.importMethod")
    if stream is not None and not stream:
        return Cause("Source registry ImageStream is not valid", "spec.source.Registry.importMethod")
    if stream is not None and method != "node":
        return Cause("Source registry ImageStream is supported only with node pull import method",
                     "spec.source.Registry.importMethod")
    return None


def _named(label: str, noun: str) -> Callable[[dict[str, Any], str], Cause | None]:
    def check(value: dict[str, Any], _: str) -> Cause | None:
        if not value.get("namespace") or not value.get("name"):
            return Cause(f"spec.source.{label} source {noun} is not valid", f"spec.source.{label}")
        return None
    return check


CHECKS: dict[str, Callable[[dict[str, Any], str], Cause | None]] = {
    "http": _http, "s3": _s3, "gcs": _gcs, "registry": _registry, "imageio": _imageio, "vddk": _vddk,
    "pvc": _named("PVC", "PVC"), "snapshot": _named("Snapshot", "snapshot"),
}
