"""The library face of the import pipeline: ``cdi.import_image`` and ``cdi.create_blank``.

The same data path as the importer pod, with keyword arguments instead of environment
variables and no cluster needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from importer.checksum import Checksum
from importer.pipeline import ImportOptions, ImportResult, create_blank as _create_blank, run_import
from importer.progress import Progress, ProgressEvent
from importer.sources import RetryPolicy, SourceOptions, open_source
from importer.target import TargetSpec


def import_image(
    source: str,
    target: str | Path,
    *,
    size: int | None = None,
    checksum: str | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    source_kind: str | None = None,
    username: str | None = None,
    password: str | None = None,
    cert_dir: str | Path | None = None,
    insecure: bool = False,
    headers: list[str] | None = None,
    secret_headers: list[str] | None = None,
    s3_endpoint: str | None = None,
    architecture: str | None = None,
    preallocate: bool = False,
    filesystem_overhead: float = 0.0,
    scratch_dir: str | Path | None = None,
    retry: RetryPolicy | None = None,
    content_type: str = "kubevirt",
) -> ImportResult:
    """Import the image at ``source`` (URL or path) into ``target`` as a raw disk.

    ``target`` is a file path, a directory (``disk.img`` is written in it) or a block device.
    ``size`` grows the raw disk to that many bytes (less ``filesystem_overhead``), never
    shrinking it, and is the limit the image must fit in. ``checksum`` is
    ``md5|sha1|sha256|sha512:<hex>`` over the bytes as received. ``progress`` is called with
    :class:`~importer.progress.ProgressEvent` values. A scratch file, only for the rare
    formats and sources that need one, goes to ``scratch_dir`` (default: the target's
    directory). ``content_type="archive"`` unpacks a tar into the ``target`` directory instead.
    Raises a :class:`~importer.errors.CdiImportError` on failure, leaving no partial image
    behind.
    """
    options = SourceOptions(
        access_key_id=username, secret_key=password,
        cert_dir=Path(cert_dir) if cert_dir else None, insecure=insecure,
        extra_headers=list(headers or []), secret_headers=list(secret_headers or []),
        s3_endpoint=s3_endpoint, architecture=architecture, retry=retry or RetryPolicy())
    spec = TargetSpec(path=Path(target), size=size, filesystem_overhead=filesystem_overhead,
                      preallocate=preallocate)
    target_dir = Path(target) if Path(target).is_dir() else Path(target).parent
    run_options = ImportOptions(
        checksum=Checksum.parse(checksum) if checksum else None,
        content_type=content_type,
        scratch_dir=Path(scratch_dir) if scratch_dir else target_dir,
        progress=Progress([progress] if progress else []))
    return run_import(open_source(source, options, kind=source_kind), spec, run_options)


def create_blank(target: str | Path, size: int, *, preallocate: bool = False,
                 filesystem_overhead: float = 0.0) -> ImportResult:
    """A blank raw disk of ``size`` bytes (less the filesystem overhead) at ``target``."""
    spec = TargetSpec(path=Path(target), size=size, filesystem_overhead=filesystem_overhead,
                      preallocate=preallocate)
    return _create_blank(spec)
