"""Upload tokens: short-lived JWTs that name one volume, as CDI's apiserver issues them.

CDI's ``UploadTokenRequest`` answers with a JWS signed **PS256** by the apiserver's RSA key;
the proxy holds only the public key. Claims, as CDI puts them:

* public: ``iss`` = ``cdi-apiserver``, ``iat`` and ``nbf`` = now, ``exp`` = now + 5 minutes;
* private: ``operation`` = ``Upload``, ``name`` and ``namespace`` of the PVC, ``resource`` =
  ``{"group": "", "version": "v1", "resource": "persistentvolumeclaims"}``, optional ``params``.

The proxy validates with 10 s of leeway and only when a request starts (a long upload outlives
its token). A token that does not verify is :class:`InvalidToken` (the proxy answers 401); one
that verifies but is not an upload token for a PVC is :class:`NotAnUploadToken` (400).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "cdi-apiserver"
LIFETIME = 300.0
LEEWAY = 10.0
ALGORITHM = "PS256"
OPERATION_UPLOAD = "Upload"
PVC_RESOURCE = {"group": "", "version": "v1", "resource": "persistentvolumeclaims"}


class InvalidToken(Exception):
    """Bad signature, expired, not yet valid, wrong issuer, or not a JWT at all."""


class NotAnUploadToken(Exception):
    """A valid token for something else (another operation or resource, no name)."""


@dataclass(frozen=True)
class TokenPayload:
    operation: str
    name: str
    namespace: str
    resource: dict[str, str] = field(default_factory=lambda: dict(PVC_RESOURCE))
    params: dict[str, str] = field(default_factory=dict)


def generate_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the token verification key must be an RSA public key")
    return key


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the token signing key must be an RSA private key")
    return key


def issue(key: rsa.RSAPrivateKey, namespace: str, name: str, *, operation: str = OPERATION_UPLOAD,
          lifetime: float = LIFETIME, now: float | None = None,
          resource: dict[str, str] | None = None, params: dict[str, str] | None = None) -> str:
    """A signed token for uploading to PVC ``namespace/name`` (``now`` is for tests)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": ISSUER, "iat": issued, "nbf": issued, "exp": issued + int(lifetime),
        "operation": operation, "name": name, "namespace": namespace,
        "resource": dict(PVC_RESOURCE if resource is None else resource),
    }
    if params:
        claims["params"] = dict(params)
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def validate(token: str, public_key: rsa.RSAPublicKey, *, leeway: float = LEEWAY) -> TokenPayload:
    """The payload of a token that verifies now; InvalidToken otherwise."""
    try:
        claims = jwt.decode(token, public_key, algorithms=[ALGORITHM], issuer=ISSUER, leeway=leeway,
                            options={"require": ["exp", "iss", "nbf"]})
    except jwt.PyJWTError as error:
        raise InvalidToken(str(error)) from error
    resource = claims.get("resource") or {}
    params = claims.get("params") or {}
    return TokenPayload(operation=str(claims.get("operation", "")), name=str(claims.get("name", "")),
                        namespace=str(claims.get("namespace", "")),
                        resource={str(k): str(v) for k, v in dict(resource).items()},
                        params={str(k): str(v) for k, v in dict(params).items()})


def upload_target(payload: TokenPayload) -> tuple[str, str]:
    """``(namespace, pvc)`` the token allows uploading to; NotAnUploadToken if none."""
    if payload.operation != OPERATION_UPLOAD or not payload.name or not payload.namespace \
            or payload.resource.get("resource") != PVC_RESOURCE["resource"]:
        raise NotAnUploadToken(
            f"the token is not an upload token for a PVC (operation {payload.operation!r}, "
            f"resource {payload.resource.get('resource')!r})")
    return payload.namespace, payload.name


def validate_for(token: str, public_key: rsa.RSAPublicKey, namespace: str, name: str,
                 *, leeway: float = LEEWAY) -> TokenPayload:
    """Validate a token that must be for exactly ``namespace/name`` (InvalidToken otherwise):
    for callers that know which volume they serve."""
    payload = validate(token, public_key, leeway=leeway)
    try:
        target = upload_target(payload)
    except NotAnUploadToken as error:
        raise InvalidToken(str(error)) from error
    if target != (namespace, name):
        raise InvalidToken(f"the token is for {target[0]}/{target[1]}, not {namespace}/{name}")
    return payload
