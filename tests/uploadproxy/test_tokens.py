"""Upload tokens (PS256 JWTs with CDI's claims).

Behaviours under test:
- a token carries CDI's claims: iss cdi-apiserver, iat = nbf, exp 5 minutes later, operation
  Upload, the PVC's name and namespace, resource persistentvolumeclaims in core/v1;
- it is signed PS256 and verifies with the public key only;
- expired tokens fail, except within the 10 s leeway; tokens not yet valid fail;
- another key, a changed payload, another issuer, or another algorithm (HS256, none) fail;
- a valid token for another operation or resource is not an upload target;
- validate_for refuses a token for another volume.
"""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from uploadproxy import tokens


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return tokens.generate_key()


def decode(part: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return data


def claims_of(token: str) -> tuple[dict[str, object], dict[str, object]]:
    header, payload, _ = token.split(".")
    return decode(header), decode(payload)


def test_claims_match_cdi(key: rsa.RSAPrivateKey) -> None:
    token = tokens.issue(key, "ns1", "disk")
    header, claims = claims_of(token)
    assert header["alg"] == "PS256"
    assert claims["iss"] == "cdi-apiserver" and claims["iat"] == claims["nbf"]
    assert claims["exp"] == claims["iat"] + 300  # type: ignore[operator]
    assert claims["operation"] == "Upload" and claims["name"] == "disk" and claims["namespace"] == "ns1"
    assert claims["resource"] == {"group": "", "version": "v1", "resource": "persistentvolumeclaims"}
    payload = tokens.validate(token, tokens.load_public_key(tokens.public_key_pem(key)))
    assert tokens.upload_target(payload) == ("ns1", "disk")


def test_expiry_and_leeway(key: rsa.RSAPrivateKey) -> None:
    public = key.public_key()
    expired = tokens.issue(key, "ns", "pvc", now=time.time() - 400)  # exp 100 s ago
    with pytest.raises(tokens.InvalidToken, match="expired"):
        tokens.validate(expired, public)
    just_expired = tokens.issue(key, "ns", "pvc", now=time.time() - 305)  # exp 5 s ago
    assert tokens.validate(just_expired, public).name == "pvc"
    future = tokens.issue(key, "ns", "pvc", now=time.time() + 120)
    with pytest.raises(tokens.InvalidToken):
        tokens.validate(future, public)


def test_wrong_key_tampering_issuer_and_algorithm(key: rsa.RSAPrivateKey) -> None:
    public = key.public_key()
    with pytest.raises(tokens.InvalidToken):
        tokens.validate(tokens.issue(tokens.generate_key(), "ns", "pvc"), public)
    header, payload, signature = tokens.issue(key, "ns", "pvc").split(".")
    claims = claims_of(tokens.issue(key, "ns", "pvc"))[1]
    forged = base64.urlsafe_b64encode(json.dumps(dict(claims, name="other")).encode()).rstrip(b"=").decode()
    with pytest.raises(tokens.InvalidToken):
        tokens.validate(f"{header}.{forged}.{signature}", public)
    now = int(time.time())
    other_issuer = jwt.encode({"iss": "someone", "iat": now, "nbf": now, "exp": now + 60}, key, algorithm="PS256")
    with pytest.raises(tokens.InvalidToken):
        tokens.validate(other_issuer, public)
    hs256 = jwt.encode({"iss": "cdi-apiserver", "nbf": now, "exp": now + 60}, "s" * 32, algorithm="HS256")
    with pytest.raises(tokens.InvalidToken):
        tokens.validate(hs256, public)
    unsigned = jwt.encode({"iss": "cdi-apiserver", "nbf": now, "exp": now + 60}, None,  # type: ignore[arg-type]
                          algorithm="none")
    with pytest.raises(tokens.InvalidToken):
        tokens.validate(unsigned, public)
    with pytest.raises(tokens.InvalidToken):
        tokens.validate("not-a-jwt", public)


def test_not_an_upload_token(key: rsa.RSAPrivateKey) -> None:
    public = key.public_key()
    clone = tokens.validate(tokens.issue(key, "ns", "pvc", operation="Clone"), public)
    with pytest.raises(tokens.NotAnUploadToken):
        tokens.upload_target(clone)
    other = tokens.validate(tokens.issue(key, "ns", "pvc", resource={"group": "", "version": "v1",
                                                                      "resource": "secrets"}), public)
    with pytest.raises(tokens.NotAnUploadToken):
        tokens.upload_target(other)


def test_validate_for_refuses_another_volume(key: rsa.RSAPrivateKey) -> None:
    token = tokens.issue(key, "ns", "disk-a")
    assert tokens.validate_for(token, key.public_key(), "ns", "disk-a").name == "disk-a"
    with pytest.raises(tokens.InvalidToken, match="not ns/disk-b"):
        tokens.validate_for(token, key.public_key(), "ns", "disk-b")
    with pytest.raises(tokens.InvalidToken):
        tokens.validate_for(token, key.public_key(), "other-ns", "disk-a")
