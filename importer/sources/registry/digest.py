"""What a registry tag points to now: the digest of its manifest, for DataImportCron polling.

The digest is computed from the manifest's bytes as served (sha256, as registries compute
``Docker-Content-Digest``), so a registry that lies in that header cannot make a poller import
something other than what it names. A reference that already carries a digest needs no request.
"""

from __future__ import annotations

import hashlib

from .. import SourceOptions
from .manifest import ACCEPT, MAX_MANIFEST
from .client import RegistryClient
from .reference import parse_reference


def manifest_digest(url: str, options: SourceOptions | None = None) -> str:
    """``sha256:<hex>`` of the manifest (or index) ``url``'s tag names."""
    ref = parse_reference(url)
    if ref.digest:
        return ref.digest
    client = RegistryClient(ref, options or SourceOptions())
    try:
        client.ping()
        body, _ = client.get_small(f"manifests/{ref.reference}", what=f"image {ref} manifest", limit=MAX_MANIFEST,
                                   headers={"Accept": ACCEPT})
    finally:
        client.close()
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


def pinned(url: str, digest: str) -> str:
    """``url`` with its tag replaced by ``digest``: what an import of exactly that version reads."""
    ref = parse_reference(url)
    scheme = url.split("://", 1)[0]
    return f"{scheme}://{ref.registry}/{ref.repository}@{digest}"
