"""The certificates and keys a throwaway Kubernetes control plane needs.

A real cluster authenticates every component with a client certificate and serves the API over
TLS; the tests run the real binaries, so they get the same material, generated fresh for every
control plane (ECDSA P-256: it takes milliseconds, where RSA would take seconds):

- ``ca``: signs the apiserver's serving cert and every client cert; kube-controller-manager also
  signs CertificateSigningRequests with it and publishes it as ``kube-root-ca.crt``.
- ``apiserver``: the serving cert, valid for loopback, the in-cluster service IP and names.
- ``front-proxy-ca`` / ``front-proxy-client``: the aggregation layer's request-header
  authentication, so an aggregated API server can be registered later.
- ``sa.key`` / ``sa.pub``: signs and verifies service-account tokens.
- ``admin`` (O=system:masters), ``controller-manager`` and ``scheduler``: client identities.
- ``apiserver-kubelet-client``: the apiserver's identity towards kubelet (``kubectl logs/exec``),
  authorized by kubelet's webhook through a binding to ``system:kubelet-api-admin``.
- ``kube-proxy`` (``system:kube-proxy``, bound to ``system:node-proxier`` by default RBAC);
  a node's ``kubelet`` client (``system:node:<name>``) and serving certs come from
  :func:`issue_node_certs`.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=30)
SERVICE_IP = "10.0.0.1"
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
API_DNS_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local")


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PKCS#8 key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A CA that can issue certificates; kept in memory so issuing needs no re-parsing."""

    pair: CertPair
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def issue(self, directory: Path, name: str, common_name: str, *, organizations: tuple[str, ...] = (),
              server: bool = False, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> CertPair:
        """Sign a leaf certificate: a client identity, or (``server=True``) a serving cert."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (_builder(x509.Name(subject), self.cert.subject, key)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(_key_usage(ca=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(directory, name, builder.sign(self.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class ClusterPKI:
    """Every file the control plane's flags point at."""

    ca: CertPair
    apiserver: CertPair
    front_proxy_ca: CertPair
    front_proxy_client: CertPair
    service_account_key: Path
    service_account_pub: Path
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    apiserver_kubelet_client: CertPair
    kube_proxy: CertPair


def make_authority(directory: Path, name: str) -> Authority:
    """A self-signed CA, written as ``<name>.crt`` / ``<name>.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(subject, subject, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Authority(_write(directory, name, cert, key), cert, key)


def make_cluster_pki(directory: Path, extra_ips: tuple[str, ...] = (),
                     extra_dns: tuple[str, ...] = ()) -> ClusterPKI:
    """Generate the whole set into ``directory`` (created if missing).

    ``extra_ips`` / ``extra_dns`` add SANs to the apiserver's serving cert, for clients that
    reach it on an address other than loopback (e.g. pods in their own network namespace).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_authority(directory, "ca")
    front_proxy_ca = make_authority(directory, "front-proxy-ca")
    sa_key, sa_pub = _service_account_keys(directory)
    return ClusterPKI(
        ca=ca.pair,
        apiserver=ca.issue(directory, "apiserver", "kube-apiserver", server=True,
                           dns=API_DNS_NAMES + extra_dns, ips=("127.0.0.1", "::1", SERVICE_IP) + extra_ips),
        front_proxy_ca=front_proxy_ca.pair,
        front_proxy_client=front_proxy_ca.issue(directory, "front-proxy-client", "front-proxy-client"),
        service_account_key=sa_key,
        service_account_pub=sa_pub,
        admin=ca.issue(directory, "admin", "kubernetes-admin", organizations=("system:masters",)),
        controller_manager=ca.issue(directory, "controller-manager", "system:kube-controller-manager"),
        scheduler=ca.issue(directory, "scheduler", "system:kube-scheduler"),
        apiserver_kubelet_client=ca.issue(directory, "apiserver-kubelet-client", KUBELET_CLIENT_USER),
        kube_proxy=ca.issue(directory, "kube-proxy", "system:kube-proxy"),
    )


@dataclass(frozen=True)
class NodeCerts:
    """A kubelet's client identity (Node authorizer: ``system:node:<name>``) and serving cert."""

    client: CertPair
    serving: CertPair


def issue_node_certs(directory: Path, ca_pair: CertPair, node: str, ips: tuple[str, ...]) -> NodeCerts:
    """Sign a kubelet's certificates with the cluster CA read back from ``ca_pair``."""
    authority = load_authority(ca_pair)
    directory.mkdir(parents=True, exist_ok=True)
    return NodeCerts(
        client=authority.issue(directory, "kubelet-client", f"system:node:{node}", organizations=("system:nodes",)),
        serving=authority.issue(directory, "kubelet-serving", node, server=True, dns=(node, "localhost"),
                                ips=("127.0.0.1",) + ips))


def load_authority(pair: CertPair) -> Authority:
    """An :class:`Authority` from its files, to issue more certificates later (a node's)."""
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pair.key} is not an EC key")
    return Authority(pair, cert, key)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    # backdated an hour so small clock differences between processes never matter
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALIDITY))


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         encipher_only=False, decipher_only=False)


def _service_account_keys(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "sa.key", directory / "sa.pub"
    private.write_bytes(_key_pem(key))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertPair:
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(_key_pem(key))
    pair.key.chmod(0o600)
    return pair


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
