"""``docker://host[:port]/repo[:tag|@digest]`` references, parsed and checked."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ...errors import (
    InvalidSource,
)

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

# ---------------------------------------------------------------------------------------------
# References


@dataclass(frozen=True)
class ImageReference:
    """A parsed ``docker://`` reference, normalized the way containers/image does."""

    registry: str
    """``host[:port]`` as the user names it (``docker.io`` for Docker Hub)."""
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """Where the ``/v2/`` API answers (Docker Hub's is not docker.io)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when given, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}"
        return f"docker://{self.registry}/{self.repository}{suffix}"


DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


def parse_reference(url: str) -> ImageReference:
    """Parse ``docker://[host[:port]/]repo[:tag][@digest]`` (``oci://`` is taken as an alias).

    Like docker and containers/image, a first component without ``.`` or ``:`` (and not
    ``localhost``) is a Docker Hub repository, and a one-component Hub name is under ``library/``.
    Credentials in the URL are refused: they belong in the Secret, not in logs.
    """
    match = re.match(r"^(docker|oci)://(.+)$", url, re.IGNORECASE)
    if not match:
        raise InvalidSource(f"invalid registry URL {url!r}: expected docker://host/repository[:tag]")
    rest = match.group(2)
    if "@" in rest.split("/", 1)[0]:
        raise InvalidSource(f"invalid registry URL {_redact(url)!r}: put credentials in the secret, not the URL")
    rest, _, digest = rest.partition("@")
    registry, repository = _split_registry(rest)
    repository, tag = _split_tag(repository)
    if digest and not DIGEST.match(digest):
        raise InvalidSource(f"invalid digest {digest!r} in {url!r}: expected sha256:<64 hex>")
    if tag is not None and not _TAG.match(tag):
        raise InvalidSource(f"invalid tag {tag!r} in {url!r}")
    if not _REPO.match(repository):
        raise InvalidSource(f"invalid repository name {repository!r} in {url!r}: use lowercase letters, digits and separators")
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if tag is None and not digest:
        tag = "latest"
    return ImageReference(registry, repository, tag, digest or None)


def _split_registry(rest: str) -> tuple[str, str]:
    """Separate the registry host from the repository path."""
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, remainder
    return DOCKER_HUB, rest


def _split_tag(repository: str) -> tuple[str, str | None]:
    """``repo:tag`` -> (repo, tag); the tag is after the last ``:`` of the last path segment."""
    head, _, last = repository.rpartition("/")
    name, colon, tag = last.partition(":")
    prefix = f"{head}/" if head else ""
    return prefix + name, tag if colon else None


def _redact(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)
