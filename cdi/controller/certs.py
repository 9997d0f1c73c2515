"""Serving certificates for upload server pods, signed in memory by the upload-server CA.

Each upload pod is reached by the upload proxy as ``cdi-upload-<pvc>.<namespace>.svc`` over
mutual TLS. The proxy trusts one CA (CDI's ``cdi-uploadserver-signer``); the controller holds
that CA's key and signs a short-lived certificate per pod, so a pod's key never leaves its
namespace's Secret and no pod can pose as another volume's server.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIFETIME = datetime.timedelta(days=30)
"""A pod's certificate is made once per PVC (its Secret outlives container restarts), so it must
outlast any upload that waits for its client; CDI instead rotates daily and recreates pods."""
SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertificatePem:
    cert: bytes
    key: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             lifetime: datetime.timedelta) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW).not_valid_after(now + lifetime))


def make_ca(common_name: str, lifetime: datetime.timedelta = datetime.timedelta(days=365)) -> CertificatePem:
    """A self-signed CA (for installers and tests; the cluster keeps its CA in a Secret)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (_builder(name, name, key.public_key(), lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return CertificatePem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(name: str) -> x509.GeneralName:
    """A DNS name, or an IP address SAN when ``name`` is one (a NodePort reached by address)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class Signer:
    """A CA that issues leaf certificates."""

    def __init__(self, ca: CertificatePem) -> None:
        self.ca_pem = ca.cert
        self.cert = x509.load_pem_x509_certificate(ca.cert)
        key = serialization.load_pem_private_key(ca.key, password=None)
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise ValueError("the upload-server CA key must be an EC or RSA private key")
        self.key = key

    def issue(self, common_name: str, *, dns_names: tuple[str, ...] = (), client: bool = False,
              lifetime: datetime.timedelta = LIFETIME) -> CertificatePem:
        """A serving certificate for ``dns_names`` (DNS names or IP addresses), or (``client=True``) a client identity."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (_builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), self.cert.subject,
                            key.public_key(), lifetime)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if dns_names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(d) for d in dns_names]),
                                            critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return CertificatePem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))
