"""The upload request as one value, and every check that needs no cluster.

:func:`validate` runs before anything is created, so a typo never leaves a half-made
DataVolume behind. The rules are virtctl's (size required when creating, archives only into
Filesystem volumes, no ReadOnlyMany target, exactly one of image and archive path), with
messages that say what to change.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from importer.checksum import Checksum
from importer.errors import InvalidSource
from importer.quantity import parse_quantity

from .errors import InvalidUploadRequest

KINDS = ("dv", "pvc")
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
VOLUME_MODES = {"block": "Block", "filesystem": "Filesystem"}
READ_ONLY = "ReadOnlyMany"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class UploadRequest:
    """What to upload where, and how to wait; field names follow virtctl's flags."""

    kind: str
    """``dv`` (a DataVolume with an upload source) or ``pvc`` (a bare annotated PVC)."""
    name: str
    path: Path
    """The image, or with ``archive`` a tar to unpack into the volume."""
    namespace: str = "default"
    archive: bool = False
    size: str | None = None
    """A Kubernetes quantity (``10Gi``); needed unless ``no_create``."""
    storage_class: str | None = None
    access_mode: str | None = None
    volume_mode: str | None = None
    """``Block`` or ``Filesystem`` (any case in; canonical after :func:`validate`)."""
    no_create: bool = False
    force_bind: bool = False
    uploadproxy_url: str | None = None
    insecure: bool = False
    ca: Path | None = None
    """The upload proxy's CA bundle, for proxies whose certificate the system does not trust."""
    wait_secs: float = 300.0
    """How long the volume may take to become ready for upload."""
    retries: int = 5
    checksum: str | bool | None = None
    """``<algorithm>:<hex>`` for the server to verify, or True to hash the file first."""
    datasource: bool = False
    wait: bool = True
    """Wait for the cluster to finish processing after the bytes are in."""
    processing_timeout: float = 24 * 3600.0
    poll_interval: float = 2.0

    @property
    def content_type(self) -> str:
        return "archive" if self.archive else "kubevirt"

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def target(self) -> str:
        """``DataVolume ns/name`` or ``PVC ns/name``, for messages."""
        return f"{'DataVolume' if self.kind == 'dv' else 'PVC'} {self.where}"


def path_from(image_path: str | None, archive_path: str | None) -> tuple[Path, bool]:
    """``(path, archive)`` from virtctl's two mutually exclusive path flags."""
    if image_path and archive_path:
        raise InvalidUploadRequest("give either --image-path or --archive-path, not both")
    if not image_path and not archive_path:
        raise InvalidUploadRequest("nothing to upload: give --image-path FILE or --archive-path FILE")
    return (Path(archive_path), True) if archive_path else (Path(str(image_path)), False)


def validate(request: UploadRequest) -> UploadRequest:
    """The request with canonical modes and checksum, or InvalidUploadRequest saying what to fix."""
    _check_target(request)
    _check_file(request.path)
    _check_size(request)
    _check_limits(request)
    return dataclasses.replace(request, access_mode=_access_mode(request.access_mode),
                               volume_mode=_volume_mode(request), checksum=_checksum(request.checksum))


def _check_target(request: UploadRequest) -> None:
    if request.kind not in KINDS:
        raise InvalidUploadRequest(f"unknown resource kind {request.kind!r}: use dv or pvc")
    for what, value in (("name", request.name), ("namespace", request.namespace)):
        if not value or len(value) > 253 or not _NAME.match(value):
            raise InvalidUploadRequest(
                f"invalid {what} {value!r}: use lower case letters, digits, '-' and '.'")


def _check_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise InvalidUploadRequest(f"cannot read {path}: {error.strerror or error}") from error
    if stat.S_ISDIR(mode):
        raise InvalidUploadRequest(f"{path} is a directory: upload a file (an image, or a tar with "
                                   "--archive-path)")
    if not os.access(path, os.R_OK):
        raise InvalidUploadRequest(f"cannot read {path}: permission denied")


def _check_size(request: UploadRequest) -> None:
    if request.size is None:
        if not request.no_create:
            raise InvalidUploadRequest(
                "--size is required to create the volume (e.g. --size 10Gi); "
                "or pass --no-create to upload into an existing one")
        return
    try:
        size = parse_quantity(request.size)
    except ValueError as error:
        raise InvalidUploadRequest(f"{error}: --size takes a quantity such as 10Gi or 500M") from error
    if size <= 0:
        raise InvalidUploadRequest(f"--size must be more than zero, not {request.size!r}")


def _check_limits(request: UploadRequest) -> None:
    if request.wait_secs < 0 or request.processing_timeout < 0 or request.poll_interval <= 0:
        raise InvalidUploadRequest("wait times must not be negative")
    if request.retries < 0:
        raise InvalidUploadRequest(f"--retry must not be negative, not {request.retries}")
    if request.ca is not None and not Path(request.ca).is_file():
        raise InvalidUploadRequest(f"--ca {request.ca}: no such file")


def _access_mode(mode: str | None) -> str | None:
    if mode is None:
        return None
    canonical = {m.lower(): m for m in ACCESS_MODES}.get(mode.lower())
    if canonical is None:
        raise InvalidUploadRequest(f"unknown access mode {mode!r}: use one of {', '.join(ACCESS_MODES)}")
    if canonical == READ_ONLY:
        raise InvalidUploadRequest("cannot upload to a ReadOnlyMany volume: use ReadWriteOnce or "
                                   "ReadWriteMany (the volume can be mounted read-only later)")
    return canonical


def _volume_mode(request: UploadRequest) -> str | None:
    if request.volume_mode is None:
        return None
    canonical = VOLUME_MODES.get(request.volume_mode.lower())
    if canonical is None:
        raise InvalidUploadRequest(f"unknown volume mode {request.volume_mode!r}: use block or filesystem")
    if request.archive and canonical == "Block":
        raise InvalidUploadRequest("an archive is unpacked into a filesystem: --archive-path needs "
                                   "--volume-mode filesystem, not block")
    return canonical


def _checksum(value: str | bool | None) -> str | bool | None:
    if value is None or value is True or value is False:
        return value or None
    if value.strip().lower() == "auto":
        return True
    try:
        return str(Checksum.parse(value))
    except InvalidSource as error:
        raise InvalidUploadRequest(f"{error} (or 'auto' to hash the file before sending)") from error
