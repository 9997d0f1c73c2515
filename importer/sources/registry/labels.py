"""Labels from the image config (CDI's ``*_KUBEVIRT_IO_*`` env rule) and the bootable-image
refusal."""

from __future__ import annotations

import logging

from ...errors import (
    PermanentError,
)

log = logging.getLogger(__name__)

"""Where a containerDisk keeps its image (kubevirt's container-register-disks convention)."""
KUBEVIRT_ENV_MARK = "KUBEVIRT_IO_"
KUBEVIRT_LABEL_PREFIX = "kubevirt.io/"
BOOTABLE_LABELS = ("containers.bootc", "ostree.bootable")

# ---------------------------------------------------------------------------------------------
# Labels from the image config


def env_to_label(name: str) -> str:
    """CDI's mapping of an env var name to a label key.

    The part before ``KUBEVIRT_IO_`` becomes dot-separated domain labels, the part after
    becomes the dash-separated name, all lowercase: ``INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE``
    -> ``instancetype.kubevirt.io/default-preference``; ``KUBEVIRT_IO_OS`` -> ``kubevirt.io/os``.
    """
    before, _, after = name.partition(KUBEVIRT_ENV_MARK)
    before = before[:-1] if before.endswith("_") else before
    parts = before.split("_")
    domain = ".".join(parts) + "." if parts[0] else ""
    return (domain + KUBEVIRT_LABEL_PREFIX + after.replace("_", "-")).lower()


def env_labels(env: list[str]) -> dict[str, str]:
    """Labels from ``NAME=value`` entries whose name contains ``KUBEVIRT_IO_`` (case matters)."""
    labels: dict[str, str] = {}
    for item in env:
        name, equals, value = item.partition("=")
        if equals and KUBEVIRT_ENV_MARK in name:
            labels[env_to_label(name)] = value
    return labels


def refuse_bootable(config_labels: dict[str, str], image: str) -> None:
    """bootc/ostree images are whole operating systems to deploy, not disks: CDI refuses them."""
    for key in BOOTABLE_LABELS:
        if str(config_labels.get(key, "")).strip().lower() in ("1", "true"):
            raise PermanentError(
                f"image {image} is a bootable container (label {key}={config_labels[key]}), not a "
                "containerDisk: build a disk image from it (e.g. with bootc-image-builder) and "
                "import that instead",
                reason="ImagePullFailed",
            )
