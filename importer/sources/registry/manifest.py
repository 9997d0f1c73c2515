"""Manifests, descriptors and platform choice: which image of an index to pull, and the
digest checks on what the registry sends."""

from __future__ import annotations

import hashlib
import logging
import platform
from dataclasses import dataclass
from typing import Any

from ...errors import (
    InvalidImage,
    PermanentError,
)
from .reference import DIGEST

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

MAX_MANIFEST = 4 * 1024 * 1024
"""Manifests and configs are small JSON; a larger answer is refused rather than buffered."""
MAX_CONFIG = 8 * 1024 * 1024


HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
             "ppc64le": "ppc64le", "s390x": "s390x", "armv7l": "arm", "i686": "386",
             "i386": "386", "riscv64": "riscv64"}


# Manifests and platforms


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob or a child manifest."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any, what: str) -> "Descriptor":
        try:
            digest, size = str(data["digest"]), int(data["size"])
        except (KeyError, TypeError, ValueError):
            raise InvalidImage(f"{what}: a descriptor lacks digest or size") from None
        if not DIGEST.match(digest):
            raise InvalidImage(f"{what}: unsupported digest {digest!r}")
        return cls(str(data.get("mediaType", "")), digest, size,
                   data.get("platform") if isinstance(data.get("platform"), dict) else None,
                   tuple(data.get("urls") or ()))


def verify_digest(data: bytes, digest: str, what: str) -> None:
    """InvalidImage unless ``data`` hashes to ``digest``."""
    algorithm, _, expected = digest.partition(":")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise InvalidImage(f"{what}: digest mismatch: expected {digest}, got {algorithm}:{actual}")


def host_architecture() -> str:
    """This machine's architecture in OCI terms (x86_64 -> amd64, aarch64 -> arm64)."""
    machine = platform.machine().lower()
    return HOST_ARCH.get(machine, machine)


def platform_name(platform_info: dict[str, Any] | None) -> str:
    if not platform_info:
        return "unknown"
    name = f"{platform_info.get('os', '?')}/{platform_info.get('architecture', '?')}"
    return f"{name}/{platform_info['variant']}" if platform_info.get("variant") else name


def choose_platform(manifests: list[Descriptor], wanted: str, image: str) -> Descriptor:
    """The index entry for ``linux/<wanted>`` (``wanted`` may carry a variant: ``arm/v7``).

    No match is permanent: the message lists what the image offers so the user can fix the
    DataVolume's architecture.
    """
    architecture, _, variant = wanted.partition("/")
    for entry in manifests:
        info = entry.platform or {}
        if info.get("os") != "linux" or info.get("architecture") != architecture:
            continue
        if variant and info.get("variant", "") != variant:
            continue
        return entry
    offered = ", ".join(platform_name(m.platform) for m in manifests) or "none"
    raise PermanentError(
        f"image {image} has no linux/{wanted} variant; available platforms: {offered}",
        reason="ImagePullFailed",
    )


def media_type(body: dict[str, Any], header: str) -> str:
    """The manifest's type: its ``mediaType`` field, the Content-Type, else guessed by shape."""
    declared = body.get("mediaType") or header.split(";")[0].strip()
    if declared in INDEX_TYPES or declared in MANIFEST_TYPES:
        return str(declared)
    if "manifests" in body:
        return OCI_INDEX
    if "layers" in body and "config" in body:
        return OCI_MANIFEST
    return str(declared)
