"""Container registry source: the disk file of a containerDisk image, streamed out of its layers.

``docker://host[:port]/repo[:tag|@digest]`` names an image in any registry that speaks the
distribution API (``/v2/``). KubeVirt's containerDisk convention puts the VM disk at
``/disk/<any name>``; CDI copies that one file to scratch space and converts it. We stream it
instead: nothing of a layer is kept in memory beyond one chunk, and nothing touches the disk.

Transitions, in the order :meth:`RegistrySource.open` takes them:

1. **ping** ``GET /v2/``: learn how the registry authenticates (anonymous, ``Basic``, or a
   ``Bearer`` token service) and, for an insecure registry, whether it speaks https or only http.
2. **manifest** by tag or digest; for an index (OCI index, docker manifest list) choose the
   ``linux/<architecture>`` entry and fetch that manifest by digest.
3. **config**: the image config blob; ``*KUBEVIRT_IO_*`` env vars become labels; bootc/ostree
   images are refused; an explicit architecture must match a single-arch image.
4. **layers**, in order: each blob is decompressed (gzip, zstd, xz, bzip2 or none, told by its
   magic bytes) and read as tar until the first regular file under ``disk/``. The stream stops
   on that member's header, so ``open`` knows the disk file's size; :meth:`chunks` continues it.

Integrity: manifests fetched by digest and every blob read are hashed as received and compared
with their digest when they end (InvalidImage on mismatch); the disk layer is read to its end
after the disk file for that reason. A layer whose connection breaks resumes with a Range
request at the compressed byte where it broke (:func:`~importer.sources.base.resuming_chunks`);
the decompressor never notices.

Errors: manifest 404 is SourceNotFound with CDI's reason ``ImagePullFailed``; 401/403 after
authenticating is AuthenticationFailed; 5xx, 429 and broken connections are SourceUnavailable
(retried within the RetryPolicy); bad TLS is AuthenticationFailed (permanent).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Generator, Iterator

from ...errors import InvalidImage, PermanentError, TemporaryError, UnsafeImage
from ...formats.tarstream import TarEntry, TarStream, find_member
from ...stream import ChunkReader
from .. import SourceOptions
from ..base import Source, SourceInfo
from .blobs import (
    BlobIntegrityError,
    BlobStream,
    decompressed,
    is_layer,
    raise_integrity_first,
    skip_bytes,
)
from .client import RegistryClient
from .labels import env_labels, refuse_bootable
from .manifest import (
    ACCEPT,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_CONFIG,
    MAX_MANIFEST,
    Descriptor,
    choose_platform,
    host_architecture,
    media_type,
    platform_name,
    verify_digest,
)
from .reference import parse_reference

log = logging.getLogger(__name__)

DISK_DIR = "disk"
"""The containerDisk directory whose first regular file is the disk (CDI's layout)."""

# ---------------------------------------------------------------------------------------------
# The source


@dataclass
class _Found:
    """The disk member, found: its header, the tar positioned on its content, the blob below."""

    entry: TarEntry
    tar: TarStream
    blob: BlobStream
    unpack: Generator[bytes, None, None]

    def contents(self) -> Iterator[bytes]:
        """The member's bytes, then the rest of the layer so its digest gets checked."""
        try:
            yield from self.tar.data()
            self.blob.drain()
        except BlobIntegrityError:
            raise
        except InvalidImage as error:
            raise_integrity_first(self.blob, error)
            raise
        finally:
            self.close()

    def close(self) -> None:
        self.unpack.close()
        self.blob.close()


class RegistrySource(Source):
    """A containerDisk image in a registry; yields the bytes of its ``disk/`` file."""

    kind = "registry"

    def __init__(self, url: str, options: SourceOptions | None = None) -> None:
        self.options = options or SourceOptions()
        self.ref = parse_reference(url)
        self.name = str(self.ref)
        self._client: RegistryClient | None = None
        self._layers: list[Descriptor] = []
        self._found: _Found | None = None
        self.labels: dict[str, str] = {}
        self.manifest_digest: str | None = None
        """Digest of the platform manifest that was read (known when pulled by digest or
        resolved from an index; else the registry's Docker-Content-Digest when it sends one)."""

    # -- Source interface -----------------------------------------------------------------

    def open(self) -> SourceInfo:
        if self._found is not None:  # opened before: drop the unread stream
            self._found.close()
            self._found = None
        client = self._connect()
        manifest = self._platform_manifest(client)
        self._config(client, manifest)
        self._layers = self._layer_list(manifest)
        self._found = self._find_disk(client)
        log.info("%s: disk file %s, %d bytes", self.name, self._found.entry.name, self._found.entry.size)
        return SourceInfo(size=self._found.entry.size, random_access=False, name=self.name,
                          labels=dict(self.labels))

    def chunks(self, start: int = 0) -> Iterator[bytes]:
        """The disk file's bytes from ``start``. The stream found by :meth:`open` is used once;
        later calls (or ``start > 0``) scan the layers again and skip ahead, since layer
        streams resume by themselves and a restart is only needed after a fatal error."""
        if self._client is None:
            self.open()
        found, self._found = self._found, None
        if found is None:
            assert self._client is not None
            found = self._find_disk(self._client)
        contents = found.contents()
        return skip_bytes(contents, start) if start else contents

    def close(self) -> None:
        if self._found is not None:
            self._found.close()
            self._found = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- steps ------------------------------------------------------------------------------

    def _connect(self) -> RegistryClient:
        if self._client is None:
            self._client = RegistryClient(self.ref, self.options)
        self._client.ping()
        return self._client

    def _manifest(self, client: RegistryClient, reference: str, verify: bool) -> tuple[dict[str, Any], str]:
        """One manifest document and its media type; verified when fetched by digest."""
        what = f"image {self.name} manifest {reference}"
        body, response = client.get_small(f"manifests/{reference}", what=what, limit=MAX_MANIFEST,
                                          headers={"Accept": ACCEPT})
        if verify:
            verify_digest(body, reference, what)
        elif response.headers.get("Docker-Content-Digest"):
            self.manifest_digest = response.headers["Docker-Content-Digest"]
        try:
            document = json.loads(body)
        except ValueError:
            raise InvalidImage(f"{what} is not JSON") from None
        if not isinstance(document, dict):
            raise InvalidImage(f"{what} is not a JSON object")
        return document, media_type(document, response.headers.get("Content-Type", ""))

    def _platform_manifest(self, client: RegistryClient) -> dict[str, Any]:
        """The image manifest for our platform, through an index when there is one."""
        document, media = self._manifest(client, self.ref.reference, verify=self.ref.digest is not None)
        if self.ref.digest:
            self.manifest_digest = self.ref.digest
        if media in INDEX_TYPES:
            entries = [Descriptor.from_json(m, f"image {self.name} index") for m in document.get("manifests") or []]
            wanted = self.options.architecture or host_architecture()
            chosen = choose_platform(entries, wanted, self.name)
            log.info("%s: using %s manifest %s", self.name, platform_name(chosen.platform), chosen.digest)
            document, media = self._manifest(client, chosen.digest, verify=True)
            self.manifest_digest = chosen.digest
        if media not in MANIFEST_TYPES:
            raise InvalidImage(f"image {self.name}: unsupported manifest type {media or 'unknown'!r} "
                               "(expected an OCI or docker schema 2 image manifest)")
        return document

    def _config(self, client: RegistryClient, manifest: dict[str, Any]) -> None:
        """Read the config blob; set labels; refuse bootable and wrong-architecture images."""
        descriptor = Descriptor.from_json(manifest.get("config"), f"image {self.name} manifest")
        what = f"image {self.name} config {descriptor.digest}"
        body, _ = client.get_small(f"blobs/{descriptor.digest}", what=what, limit=MAX_CONFIG)
        verify_digest(body, descriptor.digest, what)
        try:
            config = json.loads(body)
            inner = config.get("config") or {}
            env = [str(e) for e in inner.get("Env") or []]
            config_labels = {str(k): str(v) for k, v in (inner.get("Labels") or {}).items()}
        except (ValueError, AttributeError, TypeError):
            raise InvalidImage(f"{what} is not an image config") from None
        self.labels = env_labels(env)
        refuse_bootable(config_labels, self.name)
        self._check_architecture(config)

    def _check_architecture(self, config: dict[str, Any]) -> None:
        """An explicitly requested architecture must match a single-arch image (CDI does too)."""
        wanted = self.options.architecture
        actual = config.get("architecture")
        if wanted and actual and wanted.partition("/")[0] != actual:
            raise PermanentError(
                f"image {self.name} is for {config.get('os', 'linux')}/{actual}, not the requested "
                f"architecture {wanted}; available platforms: {config.get('os', 'linux')}/{actual}",
                reason="ImagePullFailed")

    def _layer_list(self, manifest: dict[str, Any]) -> list[Descriptor]:
        layers = manifest.get("layers")
        if not isinstance(layers, list):
            raise InvalidImage(f"image {self.name}: the manifest lists no layers")
        return [Descriptor.from_json(layer, f"image {self.name} manifest") for layer in layers]

    def _find_disk(self, client: RegistryClient) -> _Found:
        """Walk the layers in order to the first regular file under ``disk/``."""
        problems: list[str] = []
        for number, layer in enumerate(self._layers, 1):
            describe = f"image {self.name} layer {number} ({layer.digest[:19]})"
            if not is_layer(layer):
                log.info("%s: skipping %s blob", describe, layer.media_type)
                continue
            found = self._scan_layer(client, layer, describe, problems)
            if found is not None:
                return found
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise InvalidImage(
            f"no disk image found under {DISK_DIR}/ in the container image layers of {self.name}: "
            f"a containerDisk keeps its image as a single file in /{DISK_DIR}/{detail}")

    def _scan_layer(self, client: RegistryClient, layer: Descriptor, describe: str,
                    problems: list[str]) -> _Found | None:
        """The disk member of one layer, or None. A layer that is not a readable tar is
        skipped, as CDI skips unreadable layers; a bad digest or an unsafe path is fatal."""
        blob = BlobStream(client, layer, describe)
        unpack = decompressed(iter(blob), describe)
        try:
            tar = TarStream(ChunkReader(unpack), describe)
            entry = find_member(tar, DISK_DIR, on_skip=lambda e, why: _log_skip(describe, e, why))
            if entry is None:
                blob.drain()
                unpack.close()
                return None
            return _Found(entry, tar, blob, unpack)
        except (UnsafeImage, BlobIntegrityError, TemporaryError):
            blob.close()
            raise
        except InvalidImage as error:
            try:
                raise_integrity_first(blob, error)
            finally:
                blob.close()
            log.warning("%s: skipping unreadable layer: %s", describe, error)
            problems.append(str(error))
            return None


def _log_skip(describe: str, entry: TarEntry, why: str) -> None:
    if why != "outside":
        log.info("%s: skipping %s (%s)", describe, entry.name, why)
