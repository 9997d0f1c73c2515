"""One trust model for every source: the system CAs plus every certificate CDI mounts.

CDI mounts a source's ``certConfigMap`` at ``/certs`` and the proxy's CA at ``/proxycerts``,
and its Go importer adds *every* non-hidden file of those directories to the system pool,
whatever the file is called (``tls.crt``, ``ca.pem``, ``my-ca``). Python clients
(``requests``, ``botocore``) take one CA file instead of a pool, so this module writes one PEM
bundle: the system CAs followed by each certificate found in those directories.

* Files are read through symlinks (a mounted ConfigMap is ``name -> ..data/name``); entries
  whose name starts with a dot (``..data``, ``..2024_01_01...``) are skipped, as CDI does.
* A file that holds no certificate (a key, a README) is skipped with a warning instead of
  breaking the import; a DER certificate is accepted and converted.
* No extra certificate at all => ``None``: the client keeps its default trust.

:class:`TrustBundle` owns one bundle file and removes it on :meth:`TrustBundle.close`.
:func:`trust_bundle` and :func:`verify_setting` share bundles for the life of the process
(identical content => one file), removed at exit, for callers that hold no cleanup hook.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

SYSTEM_CA_FILE = Path("/etc/ssl/certs/ca-certificates.crt")
"""Debian's bundle, used when ``certifi`` is not installed."""

_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s+.*?-----END CERTIFICATE-----", re.DOTALL)


class TlsOptions(Protocol):
    """The part of :class:`~importer.sources.SourceOptions` this module reads."""

    cert_dir: Path | None
    proxy_cert_dir: Path | None
    insecure: bool


def system_ca_file() -> Path | None:
    """The CA file clients trust by default: certifi's if installed, else the system's."""
    try:
        import certifi
    except ImportError:
        return SYSTEM_CA_FILE if SYSTEM_CA_FILE.is_file() else None
    return Path(certifi.where())


def certificate_files(directory: Path) -> list[Path]:
    """Every regular, non-hidden file in ``directory`` (symlinks followed), sorted by name.

    A missing directory is an empty one, with a warning: CDI mounts ``/certs`` only when a
    ConfigMap is named, and a typo there should read as "CA not trusted", not as a crash."""
    if not directory.is_dir():
        log.warning("certificate directory %s does not exist; no extra CAs from it", directory)
        return []
    return sorted(p for p in directory.iterdir() if not p.name.startswith(".") and p.is_file())


def certificates_in(path: Path) -> list[x509.Certificate]:
    """The certificates a file holds (PEM blocks, or one DER certificate); [] if none.

    Unparsable PEM blocks are dropped one by one so one broken entry in a concatenated
    bundle does not hide the others."""
    data = path.read_bytes()
    certs: list[x509.Certificate] = []
    for block in _PEM_BLOCK.findall(data):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as error:
            log.warning("%s: skipping an unreadable PEM certificate block: %s", path, error)
    if certs or b"-----BEGIN" in data:
        return certs
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        return []


def extra_certificates(*directories: Path | None) -> list[bytes]:
    """PEM encodings of every certificate in the given directories, warning on other files."""
    pems: list[bytes] = []
    for directory in directories:
        if directory is None:
            continue
        for path in certificate_files(directory):
            certs = certificates_in(path)
            if not certs:
                log.warning("%s is not a PEM certificate; ignoring it", path)
                continue
            log.debug("trusting %d certificate(s) from %s", len(certs), path)
            pems += [c.public_bytes(serialization.Encoding.PEM) for c in certs]
    return pems


def bundle_content(cert_dir: Path | None, proxy_cert_dir: Path | None) -> bytes | None:
    """System CAs followed by the extra certificates; None when there is nothing extra."""
    extra = extra_certificates(cert_dir, proxy_cert_dir)
    if not extra:
        return None
    system = system_ca_file()
    base = system.read_bytes() if system else b""
    if base and not base.endswith(b"\n"):
        base += b"\n"
    return base + b"".join(extra)


class TrustBundle:
    """A PEM bundle file in a private temporary directory, removed by :meth:`close`."""

    def __init__(self, content: bytes) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="cdi-trust-"))
        self.path = self._directory / "ca-bundle.pem"
        self.path.write_bytes(content)

    @classmethod
    def build(cls, cert_dir: Path | None, proxy_cert_dir: Path | None) -> "TrustBundle | None":
        """A bundle for these directories, or None when they add no certificate."""
        content = bundle_content(cert_dir, proxy_cert_dir)
        return cls(content) if content is not None else None

    def close(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> "TrustBundle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: dict[str, TrustBundle] = {}
_shared_lock = threading.Lock()


def _close_shared() -> None:
    with _shared_lock:
        for bundle in _shared.values():
            bundle.close()
        _shared.clear()


atexit.register(_close_shared)


def trust_bundle(cert_dir: Path | None, proxy_cert_dir: Path | None) -> str | None:
    """Path of a bundle with the system CAs and every certificate in the two directories.

    None when the directories add nothing (use the client's default). The file lives until
    the process exits and is shared by callers asking for the same content; use
    :class:`TrustBundle` directly to own (and remove) a file."""
    content = bundle_content(cert_dir, proxy_cert_dir)
    if content is None:
        return None
    key = hashlib.sha256(content).hexdigest()
    with _shared_lock:
        bundle = _shared.get(key)
        if bundle is None or not bundle.path.is_file():
            bundle = _shared[key] = TrustBundle(content)
        return str(bundle.path)


def verify_setting(options: TlsOptions) -> bool | str:
    """The ``verify=`` value for requests and botocore: False (insecure), a bundle, or True."""
    if options.insecure:
        return False
    return trust_bundle(options.cert_dir, options.proxy_cert_dir) or True
