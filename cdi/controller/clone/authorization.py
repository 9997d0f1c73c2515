"""Whether a DataVolume may clone from another namespace.

Same namespace: always. Another namespace: the mutating webhook checked the user's rights in the
source namespace when the DataVolume was created (a SubjectAccessReview) and stamped a short-lived
clone token; the controller validates that token once, then records its own long-lived
*extended* token (CDI's two-token scheme): a clone that waits an hour for its source still knows
it was authorized, and nobody can authorize a clone by writing an annotation, since both tokens
are signed (the webhook's by the apiserver's key, the extended one by the controller's own).

The extended token is an ES256/RS256 JWT signed with the upload-server CA key the controller
already holds; it names the source and the target, and is checked against both on every use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ... import clonetoken
from .. import annotations as ann
from ..certs import CertificatePem
from ..phases import Reason
from .source import CloneSource, SourceKind

Body = dict[str, Any]
EXTENDED_ISSUER = "cdi-deployment"
OPERATION = "Clone"


class NotAuthorized(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reason = Reason.CLONE_TOKEN_INVALID
        self.message = message


@dataclass(frozen=True)
class Keys:
    webhook_public_key: bytes
    """PEM of the apiserver's token key (validates the webhook's token); empty if not configured."""
    controller: CertificatePem | None
    """The upload-server CA: its key signs extended tokens, its certificate verifies them."""


def _claims(source: CloneSource, dv: Body) -> dict[str, Any]:
    meta = dv["metadata"]
    return {"operation": OPERATION, "kind": source.kind.value, "namespace": source.namespace, "name": source.name,
            "targetNamespace": meta["namespace"], "targetName": meta["name"]}


def _algorithm(key: Any) -> str:
    return "ES256" if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) else "RS256"


def mint_extended(keys: Keys, source: CloneSource, dv: Body) -> str:
    assert keys.controller is not None
    key = serialization.load_pem_private_key(keys.controller.key, password=None)
    claims = {**_claims(source, dv), "iss": EXTENDED_ISSUER, "iat": int(time.time())}
    return jwt.encode(claims, key, algorithm=_algorithm(key))  # type: ignore[arg-type]


def _valid_extended(keys: Keys, token: str, source: CloneSource, dv: Body) -> bool:
    if keys.controller is None or not token:
        return False
    public = x509.load_pem_x509_certificate(keys.controller.cert).public_key()
    try:
        claims = jwt.decode(token, public, algorithms=[_algorithm(public)], issuer=EXTENDED_ISSUER,  # type: ignore[arg-type]
                            options={"require": ["iss", "iat"]})
    except jwt.PyJWTError:
        return False
    return all(claims.get(k) == v for k, v in _claims(source, dv).items())


def _valid_webhook_token(keys: Keys, token: str, source: CloneSource, dv: Body) -> str:
    """'' if the webhook's token authorizes this clone, else why not."""
    if not token:
        return "clone token missing (was the DataVolume admitted through cdi-apiserver's webhook?)"
    if not keys.webhook_public_key:
        return "this controller has no clone token public key (CLONE_TOKEN_PUBLIC_KEY_FILE) to validate the token"
    try:
        clonetoken.validate(token, keys.webhook_public_key,
                            source=("pvc" if source.kind is SourceKind.PVC else "snapshot", source.namespace, source.name),
                            target=(dv["metadata"]["namespace"], dv["metadata"]["name"]))
    except clonetoken.InvalidCloneToken as error:
        return f"the clone token is not valid: {error}"
    return ""


def authorize(keys: Keys, source: CloneSource, dv: Body) -> str | None:
    """None if the clone needs no (new) token; else the extended token to record on the
    DataVolume. :class:`NotAuthorized` when the DataVolume may not clone from ``source``."""
    if source.namespace == dv["metadata"]["namespace"]:
        return None
    annotations = dv["metadata"].get("annotations") or {}
    if _valid_extended(keys, annotations.get(ann.EXTENDED_CLONE_TOKEN, ""), source, dv):
        return None
    problem = _valid_webhook_token(keys, annotations.get(ann.CLONE_TOKEN, ""), source, dv)
    if problem:
        raise NotAuthorized(f"cannot clone from {source}: {problem}")
    if keys.controller is None:
        raise NotAuthorized("cannot record the clone's authorization: this controller has no upload-server CA key")
    return mint_extended(keys, source, dv)


def valid_for_claim(keys: Keys, pvc: Body, source: CloneSource) -> bool:
    """Whether a target PVC carries the extended token for cloning ``source`` (the DataVolume
    controller copies it from the DataVolume, whose namespace and name the PVC shares)."""
    token = (pvc["metadata"].get("annotations") or {}).get(ann.EXTENDED_CLONE_TOKEN, "")
    return _valid_extended(keys, token, source, pvc)
