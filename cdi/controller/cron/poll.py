"""What a DataImportCron's source holds now, as a digest: a new digest means a new import.

* ``registry`` (``docker://`` with a tag): the manifest digest the tag points to
  (:func:`importer.sources.registry.digest.manifest_digest`), and the import then reads exactly
  that version by digest. A reference that is already pinned by digest is its own digest, so a
  digest-pinned cron imports once and is up to date (CDI#2689).
* ``http``/``https`` (beyond CDI): the file's validator from a HEAD request, ``ETag`` or else
  ``Last-Modified``, hashed into ``sha256:<hex>``; a server that sends neither cannot be polled,
  and the cron says so.

The controller polls itself, without credentials: a template with a ``secretRef`` is refused
with a reason rather than polled anonymously.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import requests

from cdi.controller.errors import Explained
from importer.sources import SourceOptions
from importer.sources.registry.digest import manifest_digest, pinned

Body = dict[str, Any]
TIMEOUT = 30.0


POLL_FAILURES = frozenset({"SourceNotFound", "SourceUnreachable", "SourceInvalid", "NoValidator", "UnsupportedSource"})
"""The reasons a poll fails with; ``UpToDate`` keeps one until a poll succeeds."""


class PollFailed(Explained):
    """A poll that could not say what the source holds; the reason is one of ``POLL_FAILURES``."""


@dataclass(frozen=True)
class Version:
    digest: str
    source: Body
    """The DataVolume source that imports exactly this version."""


def _source(template: Body) -> tuple[str, Body]:
    source = ((template.get("spec") or {}).get("source")) or {}
    for kind in ("registry", "http"):
        if isinstance(source.get(kind), dict):
            return kind, dict(source[kind])
    raise PollFailed("UnsupportedSource", "a DataImportCron polls registry and http(s) sources only")


def current_version(template: Body, insecure_registries: list[str]) -> Version:
    kind, source = _source(template)
    if source.get("secretRef"):
        raise PollFailed("UnsupportedSource", "polling a source that needs credentials (secretRef) is not supported yet")
    url = str(source.get("url") or "")
    if kind == "registry":
        return _registry_version(url, source, insecure_registries)
    return _http_version(url, source)


def _registry_version(url: str, source: Body, insecure_registries: list[str]) -> Version:
    host = url.split("://", 1)[-1].split("/", 1)[0]
    options = SourceOptions(insecure=host in insecure_registries,
                            architecture=(source.get("platform") or {}).get("architecture"))
    try:
        digest = manifest_digest(url, options)
    except Exception as error:  # noqa: BLE001 - every failure is shown on the cron, classified by the importer
        raise PollFailed(_reason(error), f"cannot read the digest of {url}: {error}") from None
    return Version(digest, {"registry": {**source, "url": pinned(url, digest)}})


def _http_version(url: str, source: Body) -> Version:
    try:
        response = requests.head(url, allow_redirects=True, timeout=TIMEOUT,
                                 verify=not source.get("insecureSkipVerify"))
    except requests.RequestException as error:
        raise PollFailed("SourceUnreachable", f"cannot reach {url}: {error}") from None
    if response.status_code >= 400:
        raise PollFailed("SourceNotFound" if response.status_code == 404 else "SourceUnreachable",
                         f"HEAD {url} answered {response.status_code}")
    validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
    if not validator:
        raise PollFailed("NoValidator", f"{url} sends neither ETag nor Last-Modified, so changes cannot be seen")
    return Version(f"sha256:{hashlib.sha256(validator.encode()).hexdigest()}", {"http": source})


def _reason(error: Exception) -> str:
    """The importer's classification, in the cron's words."""
    name = type(error).__name__
    if "NotFound" in name or "404" in str(error) or "not found" in str(error).lower():
        return "SourceNotFound"
    if "Unavailable" in name or "Temporary" in name or isinstance(error, OSError):
        return "SourceUnreachable"
    return "SourceInvalid"
