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

import base64
import hashlib
import json
import logging
import platform
import re
from dataclasses import dataclass, field
from typing import Any, Generator, Iterator
from urllib.parse import quote

import requests
import urllib3

from ..errors import (
    AuthenticationFailed,
    InvalidImage,
    InvalidSource,
    PermanentError,
    SourceNotFound,
    SourceUnavailable,
    TemporaryError,
    UnsafeImage,
)
from ..checksum import BackgroundHasher
from ..formats import magic
from ..formats.decompress import decompress
from ..stream import CHUNK, ChunkReader
from . import SourceOptions
from .base import Source, SourceInfo, resuming_chunks, retrying
from ..formats.tarstream import TarEntry, TarStream, find_member
from .tls import TrustBundle

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

DISK_DIR = "disk"
"""Where a containerDisk keeps its image (kubevirt's container-register-disks convention)."""
KUBEVIRT_ENV_MARK = "KUBEVIRT_IO_"
KUBEVIRT_LABEL_PREFIX = "kubevirt.io/"
BOOTABLE_LABELS = ("containers.bootc", "ostree.bootable")

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
USER_AGENT = "cdi-py-importer"

HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
             "ppc64le": "ppc64le", "s390x": "s390x", "armv7l": "arm", "i686": "386",
             "i386": "386", "riscv64": "riscv64"}


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


_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
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
    if digest and not _DIGEST.match(digest):
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


# ---------------------------------------------------------------------------------------------
# HTTP: auth, errors, retries


@dataclass
class _Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


_CHALLENGE_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> _Challenge | None:
    """``Bearer realm="https://auth",service="reg",scope="repository:a:pull"`` -> fields."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    for key, quoted, bare in _CHALLENGE_PARAM.findall(rest):
        params[key.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
    return _Challenge(scheme.lower(), params)


def _registry_errors(response: requests.Response) -> str:
    """The registry's error codes and messages (``{"errors": [{"code", "message"}]}``), if any."""
    try:
        body = response.json()
        errors = body.get("errors") or []
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        return ""


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _status_error(response: requests.Response, what: str) -> Exception:
    """The importer error for an unexpected HTTP status while fetching ``what``."""
    status = response.status_code
    detail = _registry_errors(response) or response.reason or ""
    text = f"{what}: HTTP {status} {detail}".rstrip()
    if status in (401, 403):
        return AuthenticationFailed(
            f"{text}: access denied (the credentials are wrong, lack pull access, or the "
            "image does not exist)", reason="ImagePullFailed")
    if status in (404, 410):
        return SourceNotFound(f"{what} not found: HTTP {status} {detail}".rstrip(), reason="ImagePullFailed")
    if status == 429 or status >= 500:
        return SourceUnavailable(text, retry_after=_retry_after(response))
    return PermanentError(text, reason="ImagePullFailed")


class RegistryClient:
    """One registry, one repository: TLS trust, scheme choice, auth and error mapping.

    ``requests`` does the HTTP; this class adds the registry protocol around it: the ``/v2/``
    ping, the Basic or Bearer challenge (a token is fetched for ``repository:<repo>:pull`` and
    fetched again once when a request gets 401, e.g. after it expired), and the translation of
    statuses and network failures into importer errors.
    """

    def __init__(self, ref: ImageReference, options: SourceOptions) -> None:
        self.ref = ref
        self.options = options
        self.policy = options.retry
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self._bundle = None if options.insecure else TrustBundle.build(options.cert_dir, options.proxy_cert_dir)
        self.verify: bool | str = False if options.insecure else (str(self._bundle.path) if self._bundle else True)
        """Passed with every request: a Session's own ``verify`` loses to REQUESTS_CA_BUNDLE."""
        if options.insecure:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.base = f"https://{ref.api_host}"
        self._authorization: str | None = None
        self._challenge: _Challenge | None = None

    @property
    def scope(self) -> str:
        return f"repository:{self.ref.repository}:pull"

    def close(self) -> None:
        self.session.close()
        if self._bundle is not None:
            self._bundle.close()
            self._bundle = None

    # -- connection -----------------------------------------------------------------------

    def ping(self) -> None:
        """``GET /v2/``: pick the scheme (https, or http for an insecure registry) and learn
        the auth challenge; authenticate right away when credentials or a token service exist."""
        response = retrying(self.policy, f"registry {self.ref.registry}", self._ping_any_scheme)
        with response:
            if response.status_code == 401:
                self._challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
                self._authenticate(self._challenge)

    def _ping_any_scheme(self) -> requests.Response:
        """https first; for an insecure registry fall back to http when https fails (TLS or
        connection), as containers/image does."""
        self.base = f"https://{self.ref.api_host}"
        try:
            return self._send("GET", f"{self.base}/v2/", what="registry ping", auth=False)
        except (AuthenticationFailed, SourceUnavailable) as error:
            if not self.options.insecure:
                raise
            log.info("registry %s: https failed (%s); trying plain http", self.ref.registry, error)
            self.base = f"http://{self.ref.api_host}"
            return self._send("GET", f"{self.base}/v2/", what="registry ping", auth=False)

    def _send(self, method: str, url: str, *, what: str, auth: bool = True,
              headers: dict[str, str] | None = None, stream: bool = False) -> requests.Response:
        """One request; network and TLS failures become importer errors."""
        all_headers = dict(headers or {})
        if auth and self._authorization:
            all_headers["Authorization"] = self._authorization
        try:
            return self.session.request(method, url, headers=all_headers, stream=stream, verify=self.verify,
                                        timeout=(self.policy.connect_timeout, self.policy.stall_timeout))
        except requests.exceptions.SSLError as error:
            raise AuthenticationFailed(
                f"{what}: TLS with {self.ref.registry} failed: {error}. Add the registry's CA "
                "to the certificate ConfigMap, or mark the registry insecure (also needed when "
                "it speaks plain http)",
                reason="ImagePullFailed") from error
        except (requests.ConnectionError, requests.Timeout) as error:
            raise SourceUnavailable(f"{what}: cannot reach {self.ref.registry}: {error}") from error
        except requests.RequestException as error:
            raise SourceUnavailable(f"{what}: request to {self.ref.registry} failed: {error}") from error

    # -- authentication -------------------------------------------------------------------

    def _authenticate(self, challenge: _Challenge | None) -> bool:
        """Set the Authorization header for ``challenge``; False when there is nothing to try."""
        if challenge is None:
            return False
        if challenge.scheme == "bearer":
            self._authorization = f"Bearer {self._fetch_token(challenge)}"
            return True
        if challenge.scheme == "basic" and self._has_credentials():
            basic = self._basic_header()
            if self._authorization == basic:
                return False
            self._authorization = basic
            return True
        return False

    def _has_credentials(self) -> bool:
        return bool(self.options.access_key_id and self.options.secret_key)

    def _basic_header(self) -> str:
        raw = f"{self.options.access_key_id}:{self.options.secret_key}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def _fetch_token(self, challenge: _Challenge) -> str:
        """The Bearer token flow: GET the realm with service and scope, with Basic credentials
        when we have them, anonymously otherwise; the answer's ``token`` or ``access_token``."""
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthenticationFailed(f"registry {self.ref.registry} asks for a token but names no realm")
        params = {"scope": challenge.params.get("scope") or self.scope}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        auth = (self.options.access_key_id or "", self.options.secret_key or "") if self._has_credentials() else None
        return retrying(self.policy, "registry token", lambda: self._token_request(realm, params, auth))

    def _token_request(self, realm: str, params: dict[str, str], auth: tuple[str, str] | None) -> str:
        what = f"token from {realm}"
        try:
            response = self.session.get(realm, params=params, auth=auth, verify=self.verify,
                                        timeout=(self.policy.connect_timeout, self.policy.stall_timeout))
        except requests.exceptions.SSLError as error:
            raise AuthenticationFailed(f"{what}: TLS verification failed: {error}", reason="ImagePullFailed") from error
        except requests.RequestException as error:
            raise SourceUnavailable(f"{what}: {error}") from error
        with response:
            if response.status_code in (401, 403):
                raise AuthenticationFailed(f"the registry token service refused the credentials ({what}: "
                                           f"HTTP {response.status_code})", reason="ImagePullFailed")
            if response.status_code != 200:
                raise _status_error(response, what)
            try:
                body = response.json()
                token = body.get("token") or body.get("access_token")
            except (ValueError, AttributeError):
                token = None
        if not token or not isinstance(token, str):
            raise AuthenticationFailed(f"{what}: the answer holds no token", reason="ImagePullFailed")
        return token

    # -- requests with auth ---------------------------------------------------------------

    def get(self, path: str, *, what: str, headers: dict[str, str] | None = None,
            stream: bool = False, ok: tuple[int, ...] = (200,)) -> requests.Response:
        """GET ``/v2/<repo>/<path>``; on 401 authenticate (again) once and retry."""
        url = f"{self.base}/v2/{quote(self.ref.repository)}/{path}"
        response = self._send("GET", url, what=what, headers=headers, stream=stream)
        if response.status_code == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", "")) or self._challenge
            if self._authenticate(challenge):
                response.close()
                response = self._send("GET", url, what=what, headers=headers, stream=stream)
        if response.status_code not in ok:
            with response:
                raise _status_error(response, what)
        return response

    def get_small(self, path: str, *, what: str, limit: int,
                  headers: dict[str, str] | None = None) -> tuple[bytes, requests.Response]:
        """A small document (manifest, config), read whole, at most ``limit`` bytes."""
        def fetch() -> tuple[bytes, requests.Response]:
            response = self.get(path, what=what, headers=headers, stream=True)
            with response:
                body = _read_limited(response, limit, what)
            return body, response
        return retrying(self.policy, what, fetch)

    def open_blob(self, digest: str, offset: int, what: str) -> requests.Response:
        """A streaming GET of a blob from ``offset`` (a Range request when not at 0)."""
        headers = {"Range": f"bytes={offset}-"} if offset else None
        return self.get(f"blobs/{digest}", what=what, headers=headers, stream=True, ok=(200, 206))


def _read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    """The whole body, refusing more than ``limit`` bytes; a broken read is temporary."""
    parts: list[bytes] = []
    total = 0
    for piece in _raw_chunks(response, what, 64 * 1024):
        total += len(piece)
        if total > limit:
            raise InvalidImage(f"{what} is larger than {limit} bytes; refusing it")
        parts.append(piece)
    return b"".join(parts)


def _raw_chunks(response: requests.Response, what: str, size: int = CHUNK) -> Iterator[bytes]:
    """The body as received (no content decoding), in pieces of about ``size`` bytes.

    Reads with ``read1`` into our own buffer so that when the connection breaks, the bytes
    that did arrive are still yielded before SourceUnavailable: a resume then starts exactly
    where the data stopped (``stream(amt)`` would drop a partly filled read).
    """
    buffer = bytearray()
    failure: Exception | None = None
    try:
        while piece := response.raw.read1(size - len(buffer), decode_content=False):
            buffer += piece
            if len(buffer) >= size:
                yield bytes(buffer)
                buffer.clear()
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as error:
        failure = error
    if buffer:
        yield bytes(buffer)
    if failure is not None:
        raise SourceUnavailable(f"{what}: the connection broke: {failure}") from failure


# ---------------------------------------------------------------------------------------------
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
        if not _DIGEST.match(digest):
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


def _platform_name(platform_info: dict[str, Any] | None) -> str:
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
    offered = ", ".join(_platform_name(m.platform) for m in manifests) or "none"
    raise PermanentError(
        f"image {image} has no linux/{wanted} variant; available platforms: {offered}",
        reason="ImagePullFailed",
    )


def _media_type(body: dict[str, Any], header: str) -> str:
    """The manifest's type: its ``mediaType`` field, the Content-Type, else guessed by shape."""
    declared = body.get("mediaType") or header.split(";")[0].strip()
    if declared in INDEX_TYPES or declared in MANIFEST_TYPES:
        return str(declared)
    if "manifests" in body:
        return OCI_INDEX
    if "layers" in body and "config" in body:
        return OCI_MANIFEST
    return str(declared)


# ---------------------------------------------------------------------------------------------
# Decompression of layer blobs


def decompressed(chunks: Iterator[bytes], describe: str) -> Generator[bytes, None, None]:
    """The layer's tar bytes: ``chunks`` decompressed as their magic says (the media type can
    be wrong), through the same bounded decompressors as every other stream."""
    reader = ChunkReader(chunks)
    kind = magic.detect(reader.peek(16))
    log.debug("%s: %s", describe, kind)
    if not magic.is_compression(kind):
        yield from reader
        return
    try:
        yield from decompress(kind, reader)
    except InvalidImage as error:
        raise InvalidImage(f"{describe}: cannot decompress ({kind}): {error}") from error


def is_layer(descriptor: Descriptor) -> bool:
    """Layers we read: tar layers of any compression; foreign (Windows) and artifact blobs not."""
    media = descriptor.media_type
    if "foreign" in media or (descriptor.urls and "nondistributable" in media):
        return False
    return not media or "tar" in media or "rootfs" in media


# ---------------------------------------------------------------------------------------------
# Blobs: resumable and verified


class _BlobIntegrityError(InvalidImage):
    """A blob's bytes do not match its descriptor: never skipped, always fatal."""


class BlobStream:
    """The bytes of one blob: resumed over broken connections, hashed, verified at the end."""

    def __init__(self, client: RegistryClient, descriptor: Descriptor, describe: str) -> None:
        self._client = client
        self._descriptor = descriptor
        self._describe = describe
        self._chunks = self._verified(resuming_chunks(self._open_at, 0, client.policy, describe))

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def __next__(self) -> bytes:
        return next(self._chunks)

    def drain(self) -> None:
        """Read the rest (and so verify the digest) without using it."""
        for _ in self._chunks:
            pass

    def close(self) -> None:
        self._chunks.close()

    def _open_at(self, offset: int) -> Iterator[bytes]:
        """The blob from ``offset``: a Range request; a server that ignores it is skipped ahead."""
        response = self._client.open_blob(self._descriptor.digest, offset, self._describe)
        with response:
            pieces = _raw_chunks(response, f"blob from byte {offset}")
            if offset and response.status_code == 200:
                pieces = _skip_bytes(pieces, offset)
            expected = self._descriptor.size - offset
            received = 0
            for piece in pieces:
                received += len(piece)
                yield piece
            if received < expected:
                raise SourceUnavailable(f"{self._describe}: the connection ended after {offset + received} "
                                        f"of {self._descriptor.size} bytes")

    def _verified(self, chunks: Iterator[bytes]) -> Generator[bytes, None, None]:
        """Pass the bytes through, then insist on the descriptor's size and digest."""
        algorithm, _, expected = self._descriptor.digest.partition(":")
        hasher = BackgroundHasher(algorithm)  # off this thread: sha256 would cap the transfer
        total = 0
        try:
            for piece in chunks:
                total += len(piece)
                if total > self._descriptor.size:
                    raise _BlobIntegrityError(
                        f"{self._describe} is larger than its descriptor's {self._descriptor.size} bytes")
                hasher.update(piece)
                yield piece
        finally:
            hasher.close()  # also when the reader stops early: no thread left waiting
        actual = hasher.hexdigest()
        if total != self._descriptor.size or actual != expected:
            raise _BlobIntegrityError(
                f"{self._describe}: digest mismatch: expected {self._descriptor.digest}, got "
                f"{algorithm}:{actual} ({total} bytes)")


def raise_integrity_first(blob: BlobStream, error: InvalidImage) -> None:
    """When a layer fails to decompress or parse, read the rest of the blob: if its digest is
    wrong, that is the real problem (corrupted in transit or in the registry) and is raised
    instead; otherwise the layer really is unreadable and the caller handles ``error``."""
    try:
        blob.drain()
    except _BlobIntegrityError as integrity:
        raise integrity from error


def _skip_bytes(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """``chunks`` without their first ``count`` bytes."""
    for piece in chunks:
        if count >= len(piece):
            count -= len(piece)
            continue
        yield piece[count:]
        count = 0


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
        except _BlobIntegrityError:
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
        return _skip_bytes(contents, start) if start else contents

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
        return document, _media_type(document, response.headers.get("Content-Type", ""))

    def _platform_manifest(self, client: RegistryClient) -> dict[str, Any]:
        """The image manifest for our platform, through an index when there is one."""
        document, media = self._manifest(client, self.ref.reference, verify=self.ref.digest is not None)
        if self.ref.digest:
            self.manifest_digest = self.ref.digest
        if media in INDEX_TYPES:
            entries = [Descriptor.from_json(m, f"image {self.name} index") for m in document.get("manifests") or []]
            wanted = self.options.architecture or host_architecture()
            chosen = choose_platform(entries, wanted, self.name)
            log.info("%s: using %s manifest %s", self.name, _platform_name(chosen.platform), chosen.digest)
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
        except (UnsafeImage, _BlobIntegrityError, TemporaryError):
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
