"""Real container registries for tests: CNCF distribution (``docker-registry`` 2.8) processes.

Session fixtures, all on 127.0.0.1 free ports and sharing one storage directory:

``registry_images``   a TLS registry (certificate from the test CA), anonymous; the test images
                      are pushed to it once through the distribution API (:class:`Pusher`).
``basic_registry``    the same storage behind htpasswd (bcrypt) basic auth, over TLS.
``token_registry``    the same storage behind token auth: :class:`TokenServer` issues ES256 JWTs
                      whose ``x5c`` header carries a certificate signed by the test CA, which the
                      registry trusts through ``auth.token.rootcertbundle`` (the rules of
                      distribution's ``registry/auth/token``: issuer, audience = service, exp/nbf,
                      an x5c chain to a root in the bundle, and an ``access`` claim per scope).
``http_registry``     the same storage over plain http (the insecure path).

Images (:data:`IMAGES` names them) are containerDisks built here in Python: tar layers with
``disk/<file>`` (mode 0o440, uid 107, as kubevirt's containerDisks), compressed with gzip, zstd
or not at all, single-arch (docker or OCI manifests) and multi-arch (OCI index, docker manifest
list) with distinct disks per architecture, and malicious ones (escaping paths, no disk).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urljoin, urlparse

import bcrypt
import jwt
import pytest
import requests
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .pki import CertPair, TestCA, make_ca
from .ports import free_port, wait_listening

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("docker", "none"): "application/vnd.oci.image.layer.v1.tar",
}

LABEL_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.small",
    "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora",
]
BASIC_USER, BASIC_PASSWORD = "cdi-user", "cdi-password"
TOKEN_USER, TOKEN_PASSWORD = "token-user", "token-password"
TOKEN_SERVICE, TOKEN_ISSUER = "cdi-test-registry", "cdi-test-token-issuer"


# ---------------------------------------------------------------------------------------------
# Building images


@dataclass
class Member:
    """One tar member of a layer; defaults are those of a containerDisk's disk file."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    mode: int = 0o440
    uid: int = 107
    linkname: str = ""


def tar_bytes(members: list[Member]) -> bytes:
    """A tar archive (PAX format, as Go's archive/tar and buildah write) of ``members``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type, info.mode, info.uid, info.gid = member.type, member.mode, member.uid, member.uid
            info.linkname, info.mtime = member.linkname, 1700000000
            info.size = len(member.data) if member.type == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(member.data) if info.size else None)
    return out.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def disk_bytes(seed: str, random_kib: int, zero_kib: int = 0) -> bytes:
    """A reproducible fake disk: pseudo-random data (from ``seed``) then zeros."""
    blocks: list[bytes] = []
    counter = 0
    while len(blocks) * 32 < random_kib * 1024:
        blocks.append(hashlib.sha256(f"{seed}-{counter}".encode()).digest())
        counter += 1
    return b"".join(blocks)[: random_kib * 1024] + bytes(zero_kib * 1024)


@dataclass
class Layer:
    blob: bytes
    media_type: str

    @property
    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": sha256_digest(self.blob), "size": len(self.blob)}


def layer(members: list[Member], how: str = "gzip", flavour: str = "oci") -> Layer:
    return Layer(compress(tar_bytes(members), how), LAYER_TYPES[(flavour, how)])


def config_blob(architecture: str = "amd64", env: list[str] | None = None,
                labels: dict[str, str] | None = None, diff_ids: list[str] | None = None) -> bytes:
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Env": env if env is not None else LABEL_ENV, "Labels": labels or {}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or []},
    }
    return json.dumps(config, sort_keys=True).encode()


# ---------------------------------------------------------------------------------------------
# Pushing through the distribution API


class Pusher:
    """Pushes blobs and manifests: POST an upload, PUT it with ``?digest=``, PUT the manifest."""

    def __init__(self, base_url: str, verify: str | bool) -> None:
        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        self.verify = verify  # per request: a Session's verify loses to REQUESTS_CA_BUNDLE

    def blob(self, repository: str, data: bytes) -> str:
        digest = sha256_digest(data)
        if self.session.head(f"{self.base}/v2/{repository}/blobs/{digest}", verify=self.verify).status_code == 200:
            return digest
        started = self.session.post(f"{self.base}/v2/{repository}/blobs/uploads/", verify=self.verify)
        assert started.status_code == 202, started.text
        location = urljoin(self.base + "/", started.headers["Location"])
        joiner = "&" if "?" in location else "?"
        done = self.session.put(f"{location}{joiner}digest={digest}", data=data, verify=self.verify,
                                headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return digest

    def manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        response = self.session.put(f"{self.base}/v2/{repository}/manifests/{reference}", data=body,
                                    verify=self.verify, headers={"Content-Type": media_type})
        assert response.status_code == 201, response.text
        return sha256_digest(body)

    def image(self, repository: str, tag: str | None, layers: list[Layer], config: bytes,
              flavour: str = "oci") -> tuple[str, bytes]:
        """Push an image; returns its manifest digest and bytes (tag None: by digest only)."""
        for item in layers:
            self.blob(repository, item.blob)
        self.blob(repository, config)
        media = OCI_MANIFEST if flavour == "oci" else DOCKER_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": media,
            "config": {"mediaType": OCI_CONFIG if flavour == "oci" else DOCKER_CONFIG,
                       "digest": sha256_digest(config), "size": len(config)},
            "layers": [item.descriptor for item in layers],
        }
        body = json.dumps(manifest, indent=2).encode()
        return self.manifest(repository, tag or sha256_digest(body), body, media), body

    def index(self, repository: str, tag: str, entries: list[tuple[str, bytes, str]],
              flavour: str = "oci") -> str:
        """Push an index over already pushed manifests: entries are (architecture, body, type)."""
        media = OCI_INDEX if flavour == "oci" else DOCKER_LIST
        manifests = [{"mediaType": kind, "digest": sha256_digest(body), "size": len(body),
                      "platform": {"architecture": arch, "os": "linux"}} for arch, body, kind in entries]
        body = json.dumps({"schemaVersion": 2, "mediaType": media, "manifests": manifests}).encode()
        return self.manifest(repository, tag, body, media)


# ---------------------------------------------------------------------------------------------
# The test images


@dataclass
class PushedImage:
    """What a test needs to know about a pushed image."""

    repository: str
    tag: str
    digest: str
    disks: dict[str, bytes] = field(default_factory=dict)
    """Disk content by architecture ("" for a single-arch image)."""

    def url(self, host: str, by_digest: bool = False) -> str:
        reference = f"@{self.digest}" if by_digest else f":{self.tag}"
        return f"docker://{host}/{self.repository}{reference}"

    @property
    def disk(self) -> bytes:
        return self.disks[""]

    def sha256(self, architecture: str = "") -> str:
        return hashlib.sha256(self.disks[architecture]).hexdigest()


def _single(pusher: Pusher, name: str, disk: bytes, members: list[Member], how: str = "gzip",
            flavour: str = "oci", **config: Any) -> PushedImage:
    digest, _ = pusher.image(f"disks/{name}", "v1", [layer(members, how, flavour)], config_blob(**config), flavour)
    return PushedImage(f"disks/{name}", "v1", digest, {"": disk})


def _multilayer(pusher: Pusher) -> PushedImage:
    """Disk in the 2nd layer; the 1st has unrelated files, whiteouts (one under disk/) and dirs."""
    disk = disk_bytes("multilayer", 300, 200)
    first = layer([Member("etc/", type=tarfile.DIRTYPE, mode=0o755), Member("etc/hostname", b"vm\n"),
                   Member("etc/.wh.motd"), Member("disk/", type=tarfile.DIRTYPE, mode=0o755),
                   Member("disk/.wh.old.img"), Member("disk/link.img", type=tarfile.SYMTYPE, linkname="x")])
    second = layer([Member("./disk/", type=tarfile.DIRTYPE, mode=0o555), Member("./disk/fedora.qcow2", disk)])
    digest, _ = pusher.image("disks/multilayer", "v1", [first, second], config_blob())
    return PushedImage("disks/multilayer", "v1", digest, {"": disk})


def _junk_first(pusher: Pusher) -> PushedImage:
    """An artifact blob (not a layer: never fetched) and a layer that is not a tar (skipped, as
    CDI skips unreadable layers) before the disk layer."""
    disk = disk_bytes("junk", 64)
    artifact = Layer(b"{}", "application/vnd.oci.empty.v1+json")
    junk = Layer(disk_bytes("not-a-tar", 3), "application/vnd.oci.image.layer.v1.tar")
    digest, _ = pusher.image("disks/junk", "v1", [artifact, junk, layer([Member("disk/d.img", disk)])],
                             config_blob())
    return PushedImage("disks/junk", "v1", digest, {"": disk})


def _multiarch(pusher: Pusher, name: str, flavour: str) -> PushedImage:
    """An index over amd64, arm64 and s390x images, each with its own disk."""
    disks = {arch: disk_bytes(f"{name}-{arch}", 128, 64) for arch in ("amd64", "arm64", "s390x")}
    entries = []
    for arch, disk in disks.items():
        _, body = pusher.image(f"disks/{name}", None, [layer([Member("disk/disk.img", disk)], "gzip", flavour)],
                               config_blob(arch), flavour)
        entries.append((arch, body, OCI_MANIFEST if flavour == "oci" else DOCKER_MANIFEST))
    digest = pusher.index(f"disks/{name}", "v1", entries, flavour)
    return PushedImage(f"disks/{name}", "v1", digest, disks)


def push_test_images(pusher: Pusher) -> dict[str, PushedImage]:
    """Every image the registry tests use, by a short name."""
    simple = disk_bytes("simple", 256, 768)
    plain = disk_bytes("plain", 2048)
    zstd = disk_bytes("zstd", 200, 300)
    big = disk_bytes("big", 6144)
    bootc = disk_bytes("bootc", 8)
    return {
        "simple": _single(pusher, "simple", simple, [Member("disk/disk.img", simple)], "gzip", "docker"),
        "plain": _single(pusher, "plain", plain, [Member("disk/disk.raw", plain)], "none"),
        "zstd": _single(pusher, "zstd", zstd, [Member("disk/disk.img", zstd)], "zstd"),
        "big": _single(pusher, "big", big, [Member("disk/big.img", big)], "gzip"),
        "multilayer": _multilayer(pusher),
        "junk": _junk_first(pusher),
        "multiarch": _multiarch(pusher, "multiarch", "oci"),
        "multiarch-docker": _multiarch(pusher, "multiarch-docker", "docker"),
        "evil-dotdot": _single(pusher, "evil-dotdot", b"", [Member("disk/../../etc/evil", b"owned")]),
        "evil-abs": _single(pusher, "evil-abs", b"", [Member("/abs/disk/x", b"owned")]),
        "nodisk": _single(pusher, "nodisk", b"", [Member("etc/os-release", b"ID=none\n"),
                                                   Member("disk/", type=tarfile.DIRTYPE, mode=0o755)]),
        "bootc": _single(pusher, "bootc", bootc, [Member("disk/disk.img", bootc)],
                         labels={"containers.bootc": "1", "ostree.bootable": "1"}),
    }


# ---------------------------------------------------------------------------------------------
# Registry processes


@dataclass
class Registry:
    """A running registry: where it answers and how to reach it."""

    host: str
    scheme: str
    process: subprocess.Popen[bytes]
    images: dict[str, PushedImage]
    ca_dir: Path | None = None
    """A cert dir for the source: the test CA as ``ca.pem``."""
    username: str | None = None
    password: str | None = None
    token_server: "TokenServer | None" = None

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def url(self, name: str, by_digest: bool = False) -> str:
        return self.images[name].url(self.host, by_digest)


def start_registry(workdir: Path, storage: Path, tls: CertPair | None = None,
                   auth: dict[str, Any] | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``docker-registry serve`` with a config written to ``workdir``; wait until it listens."""
    if shutil.which("docker-registry") is None:
        raise RuntimeError("docker-registry is not installed: apt-get install docker-registry")
    port = free_port()
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": "cdi-test-secret"}
    if tls is not None:
        http["tls"] = {"certificate": str(tls.cert), "key": str(tls.key)}
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": http,
    }
    if auth is not None:
        config["auth"] = auth
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log = open(workdir / "registry.log", "wb")
    process = subprocess.Popen(["docker-registry", "serve", str(config_path)], stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    try:
        wait_listening(port, timeout=20)
    except TimeoutError:
        stop(process)
        raise RuntimeError(f"docker-registry did not start: {(workdir / 'registry.log').read_text()[-2000:]}")
    return f"127.0.0.1:{port}", process


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop one registry process we started."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# ---------------------------------------------------------------------------------------------
# Token server


class TokenServer:
    """A minimal registry token service (the Docker token auth protocol).

    ``GET /token?service=...&scope=repository:NAME:pull``: valid Basic credentials get the
    requested pull access; no credentials get a token with no access (as Docker Hub's
    anonymous tokens for private repos); wrong credentials get 401. Tokens are ES256 JWTs with
    the signing certificate in ``x5c``.
    """

    def __init__(self, directory: Path, ca: TestCA, tls: CertPair) -> None:
        signer = ca.issue(directory, "token-signer")
        self._key = signer.key.read_bytes()
        certificate = x509.load_pem_x509_certificate(signer.cert.read_bytes())
        self._x5c = [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert, tls.key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-server", daemon=True)

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def start(self) -> "TokenServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def issue(self, subject: str, scopes: list[str], granted: bool) -> str:
        """A signed token for ``scopes`` (pull only), or with no access when not ``granted``."""
        now = int(time.time())
        access = []
        for scope in scopes if granted else []:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a == "pull"]})
        claims = {"iss": TOKEN_ISSUER, "sub": subject, "aud": TOKEN_SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": self._x5c})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                query = parse_qs(urlparse(self.path).query)
                user = self._user()
                server.requests.append({"user": user, "query": query})
                if user is False:
                    self._answer(401, {"details": "bad credentials"})
                    return
                subject = user if isinstance(user, str) else ""
                token = server.issue(subject, query.get("scope", []), granted=user is not None)
                self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def _user(self) -> str | None | bool:
                """The authenticated user, None for anonymous, False for wrong credentials."""
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return None
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                return user if (user, password) == (TOKEN_USER, TOKEN_PASSWORD) else False

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# ---------------------------------------------------------------------------------------------
# Fixtures


@dataclass
class RegistryPKI:
    ca: TestCA
    server: CertPair
    ca_dir: Path
    """The CA alone, named ``ca.pem`` (CDI's odd-name case)."""


@pytest.fixture(scope="session")
def registry_pki(tmp_path_factory: pytest.TempPathFactory) -> RegistryPKI:
    directory = tmp_path_factory.mktemp("registry-pki")
    ca = make_ca(directory / "ca", "registry-test-ca")
    server = ca.issue(directory / "server", "registry")
    ca_dir = directory / "certs"
    ca_dir.mkdir()
    (ca_dir / "ca.pem").write_bytes(ca.cert.read_bytes())
    return RegistryPKI(ca, server, ca_dir)


@pytest.fixture(scope="session")
def registry_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry-storage")


@pytest.fixture(scope="session")
def registry_images(tmp_path_factory: pytest.TempPathFactory, registry_pki: RegistryPKI,
                    registry_storage: Path) -> Iterator[Registry]:
    """The anonymous TLS registry, with every test image pushed to it."""
    host, process = start_registry(tmp_path_factory.mktemp("registry-tls"), registry_storage, registry_pki.server)
    try:
        images = push_test_images(Pusher(f"https://{host}", str(registry_pki.ca.cert)))
        yield Registry(host, "https", process, images, registry_pki.ca_dir)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory, registry_pki: RegistryPKI,
                   registry_storage: Path, registry_images: Registry) -> Iterator[Registry]:
    """The same images behind htpasswd basic auth over TLS."""
    workdir = tmp_path_factory.mktemp("registry-basic")
    hashed = bcrypt.hashpw(BASIC_PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    (workdir / "htpasswd").write_text(f"{BASIC_USER}:{hashed}\n")
    auth = {"htpasswd": {"realm": "cdi-test", "path": str(workdir / "htpasswd")}}
    host, process = start_registry(workdir, registry_storage, registry_pki.server, auth)
    try:
        yield Registry(host, "https", process, registry_images.images, registry_pki.ca_dir,
                       BASIC_USER, BASIC_PASSWORD)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, registry_pki: RegistryPKI,
                   registry_storage: Path, registry_images: Registry) -> Iterator[Registry]:
    """The same images behind token auth, with our token server as the realm."""
    workdir = tmp_path_factory.mktemp("registry-token")
    tokens = TokenServer(workdir, registry_pki.ca, registry_pki.server).start()
    auth = {"token": {"realm": tokens.realm, "service": TOKEN_SERVICE, "issuer": TOKEN_ISSUER,
                      "rootcertbundle": str(registry_pki.ca.cert)}}
    try:
        host, process = start_registry(workdir, registry_storage, registry_pki.server, auth)
        try:
            yield Registry(host, "https", process, registry_images.images, registry_pki.ca_dir,
                           TOKEN_USER, TOKEN_PASSWORD, tokens)
        finally:
            stop(process)
    finally:
        tokens.stop()


@pytest.fixture(scope="session")
def http_registry(tmp_path_factory: pytest.TempPathFactory, registry_storage: Path,
                  registry_images: Registry) -> Iterator[Registry]:
    """The same images over plain http."""
    host, process = start_registry(tmp_path_factory.mktemp("registry-http"), registry_storage)
    try:
        yield Registry(host, "http", process, registry_images.images)
    finally:
        stop(process)
