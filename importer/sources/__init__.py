"""Sources of images, one module each, behind the :class:`~importer.sources.base.Source` interface.

:func:`open_source` picks the module from the URL scheme (or the explicit ``kind``):

==================  =============================================  ========================
kind                URL forms                                       module
==================  =============================================  ========================
``http``            ``http://...``, ``https://...``                 :mod:`.http`
``s3``              ``s3://bucket/key``, ``https://host/bucket/key`` :mod:`.s3`
``registry``        ``docker://host[:port]/repo[:tag|@digest]``     :mod:`.registry`
``file``            ``/path``, ``file:///path``                     :mod:`.file`
==================  =============================================  ========================

Blank images have no source: the pipeline creates them (:func:`importer.pipeline.create_blank`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidSource
from .base import RetryPolicy, Source, SourceInfo

__all__ = ["Source", "SourceInfo", "SourceOptions", "RetryPolicy", "open_source", "source_kind"]


@dataclass
class SourceOptions:
    """Everything a source may need besides its URL; each source uses what applies to it."""

    access_key_id: str | None = None
    """Username (HTTP basic, registry) or S3 access key: CDI's Secret key ``accessKeyId``."""
    secret_key: str | None = None
    """Password or S3 secret key: CDI's Secret key ``secretKey``."""
    cert_dir: Path | None = None
    """A directory of CA certificates (every file in it, any name) trusted besides the
    system's (CDI's ``certConfigMap`` mounted at ``/certs``)."""
    proxy_cert_dir: Path | None = None
    """CA certificates of the HTTP(S) proxy (CDI's ``/proxycerts``)."""
    insecure: bool = False
    """Skip TLS verification (CDI's ``insecureSkipVerify`` / ``INSECURE_TLS``)."""
    extra_headers: list[str] = field(default_factory=list)
    """``Name: value`` headers sent with every request."""
    secret_headers: list[str] = field(default_factory=list)
    """Like ``extra_headers`` but never logged and dropped on redirects to other hosts."""
    s3_endpoint: str | None = None
    """For ``s3://`` URLs: the endpoint URL (e.g. ``http://127.0.0.1:8333``)."""
    s3_region: str | None = None
    architecture: str | None = None
    """Registry: the platform architecture to pick from a manifest list (default: this host's)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connections: int = 4
    """HTTP(S) and S3: connections reading ranges of one image at once, when the server
    supports ranges (:mod:`.ranged`); 1 reads it as one stream."""


def source_kind(url: str) -> str:
    """The source kind a URL implies."""
    lower = url.lower()
    if lower.startswith(("http://", "https://")):
        return "http"
    if lower.startswith("s3://"):
        return "s3"
    if lower.startswith(("docker://", "oci://")):
        return "registry"
    if lower.startswith("file://") or "://" not in lower:
        return "file"
    raise InvalidSource(f"unsupported source URL {url!r}: expected http(s)://, s3://, docker:// or a path")


def open_source(url: str, options: SourceOptions | None = None, kind: str | None = None) -> Source:
    """Build (not yet open) the source for ``url``; ``kind`` overrides the scheme's choice
    (``s3`` for ``https://host/bucket/key``, as CDI's ``source.s3.url``)."""
    options = options or SourceOptions()
    kind = kind or source_kind(url)
    if kind == "http":
        from .http import HttpSource

        return HttpSource(url, options)
    if kind == "s3":
        from .s3 import S3Source

        return S3Source(url, options)
    if kind == "registry":
        from .registry import RegistrySource

        return RegistrySource(url, options)
    if kind == "file":
        from .file import FileSource

        return FileSource(url, options)
    raise InvalidSource(f"unknown source kind {kind!r}")
