"""What an image without an explicit ``command`` runs: one table from image name to local command.

Nothing is pulled. A container whose spec has a ``command`` runs it from the host's filesystem
whatever its image says; one without looks up the last path component of its image, tag and
digest stripped (``quay.io/x/cdi-py-importer:v1`` -> ``cdi-py-importer``), here. Add an entry to
run another of the project's images in pods.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LocalImage:
    """An image's ENTRYPOINT and ENV, as the local equivalent of its Dockerfile."""

    entrypoint: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"


IMAGES: dict[str, LocalImage] = {
    "cdi-py-importer": LocalImage([sys.executable, "-m", "importer"], {"PYTHONUNBUFFERED": "1"}),
    "cdi-py-uploadserver": LocalImage([sys.executable, "-m", "uploadproxy.server"], {"PYTHONUNBUFFERED": "1"}),
}

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class UnknownImage(LookupError):
    """Reported on the container as ErrImagePull, naming the table to extend."""


def image_name(image: str) -> str:
    """``registry:5000/org/name:tag@sha256:...`` -> ``name``."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def lookup(image: str) -> LocalImage | None:
    return IMAGES.get(image_name(image))


def argv_for(container: dict[str, object]) -> tuple[list[str], LocalImage | None]:
    """The command line as a runtime builds it: ``command`` replaces ENTRYPOINT, ``args`` follow it."""
    command = list(container.get("command") or [])  # type: ignore[call-overload]
    args = list(container.get("args") or [])  # type: ignore[call-overload]
    local = lookup(str(container.get("image", "")))
    if command:
        return command + args, local
    if local is None:
        raise UnknownImage(f"image {container.get('image')!r} has no local command and the container sets "
                           f"none; add it to kubeenv.nodeagent.images.IMAGES")
    return local.entrypoint + args, local
