"""The trust bundle: system CAs plus every certificate CDI would mount, whatever its name."""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from importer.sources import SourceOptions
from importer.sources.tls import TrustBundle, system_ca_file, trust_bundle, verify_setting
from tests.servers import pki
from tests.servers.pki import make_ca


@pytest.fixture
def ca(tmp_path: Path) -> pki.TestCA:
    return make_ca(tmp_path / "ca", name="odd-ca")


def fingerprints(pem_file: Path | str) -> set[bytes]:
    """SHA-256 fingerprints of every certificate in a PEM file.

    Block by block, quietly: the system bundle holds old CAs (negative serials) that newer
    cryptography releases warn about or reject, which is not what these tests check."""
    found = set()
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                        Path(pem_file).read_bytes(), re.DOTALL)
    for block in blocks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                found.add(x509.load_pem_x509_certificate(block).fingerprint(hashes.SHA256()))
            except ValueError:
                continue
    return found


def build(cert_dir: Path) -> TrustBundle:
    """A bundle that must exist (the directory holds at least one certificate)."""
    bundle = TrustBundle.build(cert_dir, None)
    assert bundle is not None
    return bundle


def fingerprint(cert_file: Path) -> bytes:
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).fingerprint(hashes.SHA256())


def test_no_dirs_means_client_default() -> None:
    """Without extra CAs the clients keep their own trust; no file is written."""
    assert trust_bundle(None, None) is None
    assert verify_setting(SourceOptions()) is True


def test_insecure_disables_verification(tmp_path: Path, ca: pki.TestCA) -> None:
    """insecureSkipVerify wins even when a CA directory is given."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(ca.cert.read_bytes())
    assert verify_setting(SourceOptions(insecure=True, cert_dir=certs)) is False


def test_every_file_counts_whatever_its_name(tmp_path: Path) -> None:
    """CDI trusts every non-hidden file: no extension, spaces, .pem, a two-cert bundle."""
    cas = [make_ca(tmp_path / f"ca{i}", name=f"ca-{i}") for i in range(5)]
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "root CA (prod)").write_bytes(cas[0].cert.read_bytes())
    (certs / "ca.pem").write_bytes(cas[1].cert.read_bytes())
    (certs / "tls.crt").write_bytes(cas[2].cert.read_bytes())
    (certs / "chain.txt").write_bytes(b"leading text\n" + cas[3].cert.read_bytes()
                                      + cas[4].cert.read_bytes())
    with build(certs) as bundle:
        found = fingerprints(bundle.path)
        assert {fingerprint(c.cert) for c in cas} <= found


def test_system_cas_are_kept(tmp_path: Path, ca: pki.TestCA) -> None:
    """Extra CAs are added to the system pool (as CDI does), not substituted for it."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "extra").write_bytes(ca.cert.read_bytes())
    system = system_ca_file()
    assert system is not None
    with build(certs) as bundle:
        assert fingerprints(system) <= fingerprints(bundle.path)


def test_non_certificates_are_skipped_with_a_warning(
        tmp_path: Path, ca: pki.TestCA, caplog: pytest.LogCaptureFixture) -> None:
    """A key or a README in the ConfigMap must not break the import, only be reported."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(ca.cert.read_bytes())
    (certs / "tls.key").write_bytes(ca.key.read_bytes())
    (certs / "README").write_text("these are our CAs\n")
    with caplog.at_level(logging.WARNING, logger="importer.sources.tls"):
        with build(certs) as bundle:
                assert fingerprint(ca.cert) in fingerprints(bundle.path)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "tls.key" in warned and "README" in warned
    assert "ca.crt" not in warned


def test_only_junk_means_default(tmp_path: Path) -> None:
    """A directory with no certificate at all adds nothing: keep the client's default."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "notes").write_text("nothing here")
    assert trust_bundle(certs, None) is None


def test_configmap_mount_layout(tmp_path: Path, ca: pki.TestCA) -> None:
    """Kubernetes mounts ``name -> ..data/name``; hidden entries are skipped, symlinks followed."""
    certs = tmp_path / "certs"
    real = certs / "..2024_01_01_00_00_00.000"
    real.mkdir(parents=True)
    (real / "ca bundle").write_bytes(ca.cert.read_bytes())
    os.symlink(real.name, certs / "..data")
    os.symlink("..data/ca bundle", certs / "ca bundle")
    (certs / ".hidden.crt").write_bytes(b"not even a certificate")
    with build(certs) as bundle:
        text = bundle.path.read_bytes()
        pem = x509.load_pem_x509_certificate(ca.cert.read_bytes()).public_bytes(
            serialization.Encoding.PEM)
        assert text.count(pem) == 1


def test_der_and_proxy_dir(tmp_path: Path) -> None:
    """The proxy's CA directory counts too, and a DER file is converted rather than dropped."""
    site, proxy = make_ca(tmp_path / "s", name="site"), make_ca(tmp_path / "p", name="proxy")
    certs, proxycerts = tmp_path / "certs", tmp_path / "proxycerts"
    certs.mkdir()
    proxycerts.mkdir()
    der = x509.load_pem_x509_certificate(site.cert.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    (certs / "site.der").write_bytes(der)
    (proxycerts / "ca.crt").write_bytes(proxy.cert.read_bytes())
    path = trust_bundle(certs, proxycerts)
    assert path is not None
    assert {fingerprint(site.cert), fingerprint(proxy.cert)} <= fingerprints(path)


def test_missing_dir_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unmounted /certs reads as "no extra CA", and says so."""
    with caplog.at_level(logging.WARNING, logger="importer.sources.tls"):
        assert trust_bundle(tmp_path / "absent", None) is None
    assert "does not exist" in caplog.text


def test_shared_bundles_are_reused_and_owned_ones_removed(tmp_path: Path, ca: pki.TestCA) -> None:
    """Same content => same shared file (no temp-file pile-up); close() removes an owned one."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca").write_bytes(ca.cert.read_bytes())
    first = verify_setting(SourceOptions(cert_dir=certs))
    assert isinstance(first, str) and Path(first).is_file()
    assert verify_setting(SourceOptions(cert_dir=certs)) == first
    bundle = TrustBundle.build(certs, None)
    assert bundle is not None
    bundle.close()
    assert not bundle.path.exists()
