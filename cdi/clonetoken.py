"""Clone tokens: proof, carried on a DataVolume, that its creator may read the clone source.

cdi-apiserver's mutating webhook authorizes the user who creates a clone DataVolume (a
SubjectAccessReview in the source namespace) and stamps the result on the DataVolume as the
annotation :data:`ANNOTATION` (``cdi.kubevirt.io/storage.clone.token``). The controller, which
runs with far more privilege than the user, clones only what such a token names: it checks it
with :func:`validate` before it reads a source in another namespace.

The token is CDI's: a JWS signed **PS256** with the apiserver's RSA key (the same key that signs
upload tokens, :mod:`uploadproxy.tokens`), claims ``iss`` = ``cdi-apiserver``, ``iat``/``nbf`` = now,
``exp`` = now + 5 minutes, ``operation`` = ``Clone``, ``name``/``namespace`` of the source,
``resource`` = the source's group/version/resource (``persistentvolumeclaims`` or
``volumesnapshots``), ``params`` = ``{"targetNamespace", "targetName"}`` (and ``uid`` of the
target when known). Validation allows 10 s of clock skew, as CDI's does.

Both sides import this one module (the apiserver mints, the controller validates), so the claims
cannot drift apart. Long-lived "extended" tokens (CDI's controller re-mints one with issuer
``cdi-deployment`` and its own key, so a clone that waits longer than five minutes for its source
still proves its right) are not minted here: our controller holds only the public key.
:func:`validate` accepts ``issuer=EXTENDED_ISSUER`` for when it does.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from uploadproxy.tokens import load_private_key, load_public_key

__all__ = ["ANNOTATION", "EXTENDED_ANNOTATION", "ISSUER", "EXTENDED_ISSUER", "OPERATION", "LIFETIME", "LEEWAY",
           "RESOURCES", "SourceKind", "InvalidCloneToken", "mint", "validate", "load_private_key", "load_public_key"]

ANNOTATION = "cdi.kubevirt.io/storage.clone.token"
EXTENDED_ANNOTATION = "cdi.kubevirt.io/storage.extended.clone.token"
ISSUER = "cdi-apiserver"
EXTENDED_ISSUER = "cdi-deployment"
OPERATION = "Clone"
LIFETIME = 300
LEEWAY = 10.0
ALGORITHM = "PS256"

SourceKind = Literal["pvc", "snapshot"]
"""The DataVolume ``spec.source`` key of a clone: ``pvc`` or ``snapshot``."""

RESOURCES: dict[str, dict[str, str]] = {
    "pvc": {"group": "", "version": "v1", "resource": "persistentvolumeclaims"},
    "snapshot": {"group": "snapshot.storage.k8s.io", "version": "v1", "resource": "volumesnapshots"},
}
"""The ``resource`` claim for each source kind, as CDI writes it."""


class InvalidCloneToken(Exception):
    """The token does not verify (signature, expiry, issuer, not a JWT) or names another clone."""


def mint(key: rsa.RSAPrivateKey, *, source: tuple[str, str, str], target: tuple[str, str],
         target_uid: str | None = None, lifetime: float = LIFETIME, now: float | None = None,
         issuer: str = ISSUER) -> str:
    """A token allowing ``target`` ``(namespace, name)`` to be cloned from ``source`` ``(kind, namespace, name)``."""
    kind, namespace, name = source
    issued = int(time.time() if now is None else now)
    params = {"targetNamespace": target[0], "targetName": target[1]}
    if target_uid:
        params["uid"] = target_uid
    claims: dict[str, Any] = {"iss": issuer, "iat": issued, "nbf": issued, "exp": issued + int(lifetime),
                              "operation": OPERATION, "name": name, "namespace": namespace,
                              "resource": dict(_resource(kind)), "params": params}
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def validate(token: str, public_key_pem: bytes | rsa.RSAPublicKey, *, source: tuple[str, str, str],
             target: tuple[str, str], target_uid: str | None = None, issuer: str = ISSUER,
             leeway: float = LEEWAY) -> None:
    """Return if ``token`` allows cloning ``source`` ``(kind, namespace, name)`` into ``target``
    ``(namespace, name)``; raise :class:`InvalidCloneToken` saying why otherwise.

    A ``uid`` in the token must equal ``target_uid`` when both are known (CDI's rule).
    """
    claims = _verified_claims(token, public_key_pem, issuer, leeway)
    kind, namespace, name = source
    want = {"operation": OPERATION, "namespace": namespace, "name": name,
            "resource": _resource(kind)["resource"], "targetNamespace": target[0], "targetName": target[1]}
    params, resource = _object(claims.get("params")), _object(claims.get("resource"))
    got = {"operation": claims.get("operation"), "namespace": claims.get("namespace"), "name": claims.get("name"),
           "resource": resource.get("resource"), "targetNamespace": params.get("targetNamespace"),
           "targetName": params.get("targetName")}
    wrong = [f"{key} is {got[key]!r}, not {want[key]!r}" for key in want if got[key] != want[key]]
    uid = params.get("uid")
    if uid and target_uid is not None and uid != target_uid:
        wrong.append(f"uid is {uid!r}, not {target_uid!r}")
    if wrong:
        raise InvalidCloneToken("invalid token: " + "; ".join(wrong))


def _verified_claims(token: str, public_key: bytes | rsa.RSAPublicKey, issuer: str, leeway: float) -> dict[str, Any]:
    key = load_public_key(public_key) if isinstance(public_key, bytes) else public_key
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=issuer, leeway=leeway,
                            options={"require": ["exp", "iss", "nbf"]})
    except jwt.PyJWTError as error:
        raise InvalidCloneToken(f"error verifying token: {error}") from error
    return dict(claims)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _resource(kind: str) -> dict[str, str]:
    try:
        return RESOURCES[kind]
    except KeyError:
        raise ValueError(f"a clone source is a 'pvc' or a 'snapshot', not {kind!r}") from None
