"""``POST .../namespaces/{ns}/uploadtokenrequests``: check the request, issue the token.

Order, as CDI's handler has it: authorize first (an unauthorized user learns nothing about the
body's problems), then decode and validate the body, then sign. Nothing is stored, so there is no
GET, list, update or delete, and ``dryRun=All`` changes nothing (the token is issued either way:
it is what the request would produce, and issuing one persists nothing).

The answer is the request echoed back with ``metadata.namespace`` and ``creationTimestamp`` set,
``status.token`` filled in, and 201. Body checks, with kube-apiserver's status codes and wording:

* not JSON, not an object, or a JSON content type missing -> 400 / 415;
* ``apiVersion``/``kind`` present but not ours, or a ``metadata.namespace`` other than the URL's -> 400;
* unknown fields: a ``Warning`` header under ``fieldValidation=Warn`` (the default), 400 under ``Strict``;
* ``spec.pvcName`` missing or not a valid PVC name -> 422 ``Invalid`` naming the field.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from uploadproxy import tokens

from .authn import UserInfo
from .authz import Authorizer, forbidden_message
from .discovery import GROUP, GROUP_VERSION, KIND, RESOURCE
from .status import StatusError, field_error

log = logging.getLogger("cdi.apiserver.tokenrequests")

FIELD_VALIDATION = ("Ignore", "Warn", "Strict")
KNOWN_FIELDS = {"": {"apiVersion", "kind", "metadata", "spec", "status"}, "spec": {"pvcName"}, "status": {"token"},
                "metadata": {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
                             "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
                             "annotations", "ownerReferences", "finalizers", "managedFields"}}
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SUBDOMAIN_HELP = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                   "and must start and end with an alphanumeric character (e.g. 'example.com')")
_NAME_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's generateName alphabet: no vowels, no look-alikes


@dataclass(frozen=True)
class Options:
    """The query parameters a create accepts; kubectl always sends ``fieldValidation``."""

    field_validation: str = "Warn"
    dry_run: bool = False


def options(query: Mapping[str, str]) -> Options:
    """Parse ``dryRun`` and ``fieldValidation`` (400 for values kube-apiserver would refuse too)."""
    mode = query.get("fieldValidation") or "Warn"
    if mode not in FIELD_VALIDATION:
        raise StatusError(400, f"fieldValidation must be one of {', '.join(FIELD_VALIDATION)}, not {mode!r}")
    dry_run = query.get("dryRun", "")
    if dry_run not in ("", "All"):
        raise StatusError(400, f"dryRun: Unsupported value: {dry_run!r}: supported values: \"All\"")
    return Options(field_validation=mode, dry_run=dry_run == "All")


def decode(body: bytes, content_type: str) -> dict[str, Any]:
    """The request body as a JSON object."""
    if content_type not in ("", "application/json", "*/*"):
        raise StatusError(415, f"the body of the request was in an unknown format - accepted media types include: "
                               f"application/json (got {content_type!r})")
    try:
        obj = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StatusError(400, f"{KIND} in version \"v1beta1\" cannot be handled as a {KIND}: {error}") from error
    if not isinstance(obj, dict):
        raise StatusError(400, f"{KIND} in version \"v1beta1\" cannot be handled as a {KIND}: "
                               f"the body must be a JSON object, not {type(obj).__name__}")
    return obj


def unknown_fields(obj: Mapping[str, Any]) -> list[str]:
    """Dotted paths of fields the UploadTokenRequest schema does not have."""
    unknown = [key for key in obj if key not in KNOWN_FIELDS[""]]
    for section in ("metadata", "spec", "status"):
        value = obj.get(section)
        if isinstance(value, dict):
            unknown += [f"{section}.{key}" for key in value if key not in KNOWN_FIELDS[section]]
    return sorted(unknown)


def check(obj: dict[str, Any], namespace: str) -> tuple[str, str]:
    """``(name, pvcName)`` of a well-formed request; :class:`StatusError` otherwise."""
    if obj.get("apiVersion") not in (None, GROUP_VERSION) or obj.get("kind") not in (None, KIND):
        raise StatusError(400, f"the object is a {obj.get('kind')!r} of {obj.get('apiVersion')!r}, "
                               f"but this endpoint takes a {KIND} of {GROUP_VERSION}")
    metadata, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    if not isinstance(metadata, dict) or not isinstance(spec, dict):
        raise StatusError(400, f"{KIND}: metadata and spec must be objects")
    if metadata.get("namespace") not in (None, "", namespace):
        raise StatusError(400, "the namespace of the provided object does not match the namespace sent on the "
                               f"request ({metadata.get('namespace')!r} is not {namespace!r})")
    name = str(metadata.get("name") or "")
    if not name and metadata.get("generateName"):
        name = str(metadata["generateName"]) + "".join(secrets.choice(_NAME_SUFFIX) for _ in range(5))
    pvc = spec.get("pvcName")
    if pvc is None or pvc == "":
        raise field_error(KIND, GROUP, name, "spec.pvcName", "Required value",
                          "the name of the PersistentVolumeClaim to upload to")
    if not isinstance(pvc, str) or len(pvc) > 253 or not _SUBDOMAIN.match(pvc):
        raise field_error(KIND, GROUP, name, "spec.pvcName", f"Invalid value: {json.dumps(pvc)}", _SUBDOMAIN_HELP)
    return name, pvc


def answer(obj: dict[str, Any], namespace: str, name: str, token: str,
           now: datetime.datetime | None = None) -> dict[str, Any]:
    """The created object: the request as sent, completed, with the token in its status."""
    created = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    metadata = {**(obj.get("metadata") or {}), "name": name, "namespace": namespace, "creationTimestamp": created}
    if not name:
        del metadata["name"]
    return {"apiVersion": GROUP_VERSION, "kind": KIND, "metadata": metadata, "spec": dict(obj.get("spec") or {}),
            "status": {"token": token}}


def warnings_for(unknown: list[str], mode: str) -> list[str]:
    """``Warning`` header values (RFC 7234 code 299) for unknown fields, or a 400 under Strict."""
    if not unknown or mode == "Ignore":
        return []
    if mode == "Strict":
        fields = ", ".join(f'unknown field "{f}"' for f in unknown)
        raise StatusError(400, f"{KIND} in version \"v1beta1\" cannot be handled as a {KIND}: "
                               f"strict decoding error: {fields}")
    return [f'299 - "unknown field \\"{f}\\""' for f in unknown]


class TokenIssuer:
    """Authorizes, validates and signs: everything the POST handler does besides HTTP."""

    def __init__(self, signing_key: rsa.RSAPrivateKey, authorizer: Authorizer) -> None:
        self.signing_key = signing_key
        self.authorizer = authorizer

    async def create(self, user: UserInfo, namespace: str, query: Mapping[str, str], content_type: str,
                     body: bytes) -> tuple[dict[str, Any], list[str]]:
        """``(created object, warnings)``; :class:`StatusError` for every refusal."""
        decision = await self.authorizer.authorize(user, namespace)
        if not decision.allowed:
            raise StatusError(403, forbidden_message(user, namespace, decision.reason),
                              details={"group": GROUP, "kind": RESOURCE})
        opts = options(query)
        obj = decode(body, content_type)
        warnings = warnings_for(unknown_fields(obj), opts.field_validation)
        name, pvc = check(obj, namespace)
        token = tokens.issue(self.signing_key, namespace, pvc)
        log.info("issued an upload token for PVC %s/%s to %s%s", namespace, pvc, user.name,
                 " (dry run)" if opts.dry_run else "")
        return answer(obj, namespace, name, token), warnings
