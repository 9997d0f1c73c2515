"""The Secrets CDI's components read, generated the way an installer (CDI's operator) would.

| Secret | what | used by |
|---|---|---|
| ``cdi-apiserver-signer`` | CA of cdi-apiserver's serving cert; the APIService's ``caBundle`` | installer |
| ``cdi-apiserver-server-cert`` | ``cdi-api.cdi.svc`` | cdi-apiserver |
| ``cdi-api-signing-key`` | RSA key pair for upload tokens (``id_rsa``, ``id_rsa.pub``) | cdi-apiserver, upload proxy |
| ``cdi-uploadproxy-signer`` | CA of the proxy's serving cert: what clients trust | users, installer |
| ``cdi-uploadproxy-server-cert`` | ``cdi-uploadproxy.cdi.svc`` and the extra names given | upload proxy |
| ``cdi-uploadserver-signer`` | signs each upload pod's serving cert | controller, upload proxy |
| ``cdi-uploadserver-client-signer`` | CA of the proxy's client cert | controller (into upload pods) |
| ``cdi-uploadserver-client-cert`` | the proxy's client identity | upload proxy |

Existing Secrets are kept (a re-install must not invalidate tokens or pods' certificates);
the proxy's serving cert is re-issued when the names asked for change.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cdi.controller.certs import CertificatePem, Signer, make_ca
from uploadproxy.settings import PROXY_CLIENT_NAME

NAMESPACE = "cdi"
APISERVER_SIGNER = "cdi-apiserver-signer"
APISERVER_CERT = "cdi-apiserver-server-cert"
SIGNING_KEY = "cdi-api-signing-key"
PROXY_SIGNER = "cdi-uploadproxy-signer"
PROXY_CERT = "cdi-uploadproxy-server-cert"
SERVER_SIGNER = "cdi-uploadserver-signer"
CLIENT_SIGNER = "cdi-uploadserver-client-signer"
CLIENT_CERT = "cdi-uploadserver-client-cert"
PROXY_NAMES_ANNOTATION = "cdi-py.kubevirt.io/names"


@dataclass(frozen=True)
class Secret:
    name: str
    data: dict[str, bytes]
    annotations: dict[str, str]

    def manifest(self) -> dict[str, object]:
        kind = "kubernetes.io/tls" if "tls.crt" in self.data else "Opaque"
        return {"apiVersion": "v1", "kind": "Secret", "type": kind,
                "metadata": {"name": self.name, "namespace": NAMESPACE, "annotations": self.annotations,
                             "labels": {"app.kubernetes.io/part-of": "cdi-py"}},
                "data": {k: base64.b64encode(v).decode() for k, v in self.data.items()}}


def tls(name: str, pem: CertificatePem, annotations: dict[str, str] | None = None) -> Secret:
    return Secret(name, {"tls.crt": pem.cert, "tls.key": pem.key}, annotations or {})


def signer(existing: dict[str, dict[str, bytes]], name: str) -> tuple[Signer, Secret | None]:
    """The CA in Secret ``name``, made (and returned for creation) when missing."""
    if name in existing:
        data = existing[name]
        return Signer(CertificatePem(data["tls.crt"], data["tls.key"])), None
    pem = make_ca(name)
    return Signer(pem), tls(name, pem)


def token_keys() -> Secret:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Secret(SIGNING_KEY, {"id_rsa": private, "id_rsa.pub": public}, {})


def service_names(service: str) -> tuple[str, ...]:
    return (service, f"{service}.{NAMESPACE}", f"{service}.{NAMESPACE}.svc",
            f"{service}.{NAMESPACE}.svc.cluster.local")


def plan(existing: dict[str, dict[str, bytes]], existing_names: str | None,
         proxy_names: tuple[str, ...]) -> tuple[list[Secret], bytes, bytes]:
    """The Secrets to create or replace, the APIService's CA bundle, and the proxy's CA."""
    out: list[Secret] = []
    api_signer, made = signer(existing, APISERVER_SIGNER)
    out += [made] if made else []
    if APISERVER_CERT not in existing or made:
        out.append(tls(APISERVER_CERT, api_signer.issue("cdi-api", dns_names=service_names("cdi-api"))))
    if SIGNING_KEY not in existing:
        out.append(token_keys())
    proxy_signer, made = signer(existing, PROXY_SIGNER)
    out += [made] if made else []
    names = service_names("cdi-uploadproxy") + proxy_names
    wanted = ",".join(names)
    if PROXY_CERT not in existing or made or existing_names != wanted:
        out.append(tls(PROXY_CERT, proxy_signer.issue("cdi-uploadproxy", dns_names=names),
                       {PROXY_NAMES_ANNOTATION: wanted}))
    _, made = signer(existing, SERVER_SIGNER)
    out += [made] if made else []
    client_signer, made = signer(existing, CLIENT_SIGNER)
    out += [made] if made else []
    if CLIENT_CERT not in existing or made:
        out.append(tls(CLIENT_CERT, client_signer.issue(PROXY_CLIENT_NAME, client=True)))
    return out, api_signer.ca_pem, proxy_signer.ca_pem
