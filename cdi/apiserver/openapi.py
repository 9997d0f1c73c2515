"""The OpenAPI v2 document for ``UploadTokenRequest``: one self-contained swagger, served at ``/openapi/v2``.

Who reads it: kube-apiserver's OpenAPI aggregator downloads ``/openapi/v2`` from every
APIService and merges it into its own, where ``kubectl create -f`` finds the kind by
``x-kubernetes-group-version-kind`` and validates the file client-side (required ``pvcName``,
unknown fields), then still sends ``fieldValidation=Strict``, which :mod:`.tokenrequests` honours.

Why ``/openapi/v3`` answers an empty listing instead of 404: on 404 the aggregator would publish a
v3 document converted from this one, and kubectl (1.34, ``cli-runtime`` query-param verifier)
decides whether the server validates fields by looking for a PATCH operation of the kind in the
group-version's v3 document. A create-only kind has none; kubectl then falls back to v2, does not
find a PATCH there either, assumes a CRD and *lists CustomResourceDefinitions*, which an ordinary
user may not: ``kubectl create -f`` fails with "failed to check CRD ... forbidden" for exactly the
users this API is for. With no v3 document for the group, kubectl takes the "unsupported, validate
client-side" branch instead (it ignores errors of that CRD lookup there). The price: ``kubectl
explain`` needs ``--output=plaintext-openapiv2`` for this kind. Advertising a PATCH we do not serve
would avoid both, at the cost of an OpenAPI document that lies.

``metadata`` is a free-form object rather than a ``$ref`` to ObjectMeta: the document must stand
alone (the v3 conversion is per group-version and would leave a dangling reference), and the
server echoes metadata rather than interpreting it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .discovery import COLLECTION_PATH, GROUP, KIND, VERSION, VERSION_PATH

PREFIX = "io.kubevirt.cdi.upload.v1beta1."
GVK = {"group": GROUP, "version": VERSION, "kind": KIND}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{PREFIX}{name}"}


def _query(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "type": "string", "uniqueItems": True, "description": description}


def definitions() -> dict[str, Any]:
    return {
        PREFIX + KIND: {
            "description": "UploadTokenRequest is the CR used to initiate a CDI upload",
            "type": "object",
            "required": ["spec"],
            "properties": {
                "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of "
                                                                "this representation of an object."},
                "kind": {"type": "string", "description": "Kind is a string value representing the REST "
                                                          "resource this object represents."},
                "metadata": {"type": "object", "description": "Standard object's metadata (ObjectMeta)."},
                "spec": {**_ref(KIND + "Spec"), "description": "Spec contains the parameters of the request"},
                "status": {**_ref(KIND + "Status"), "description": "Status contains the status of the request"},
            },
            "x-kubernetes-group-version-kind": [GVK],
        },
        PREFIX + KIND + "Spec": {
            "description": "UploadTokenRequestSpec defines the parameters of the token request",
            "type": "object",
            "required": ["pvcName"],
            "properties": {"pvcName": {"type": "string", "description": "PvcName is the name of the PVC to upload to"}},
        },
        PREFIX + KIND + "Status": {
            "description": "UploadTokenRequestStatus stores the status of a token request",
            "type": "object",
            "properties": {"token": {"type": "string", "description": "Token is a JWT token to be inserted in "
                                                                      "upload requests"}},
        },
    }


def _create_operation() -> dict[str, Any]:
    body = {"name": "body", "in": "body", "required": True, "schema": _ref(KIND)}
    return {
        "description": f"create an {KIND}: the answer carries a token for uploading to spec.pvcName",
        "consumes": ["application/json"], "produces": ["application/json"], "schemes": ["https"],
        "tags": ["uploadCdiKubevirtIo_v1beta1"],
        "operationId": f"createUploadCdiKubevirtIoV1beta1Namespaced{KIND}",
        "parameters": [
            body,
            _query("dryRun", "When present, indicates that modifications should not be persisted. "
                             "The only valid value is All (nothing is persisted anyway)."),
            _query("fieldManager", "A name for the actor making the change (accepted and ignored)."),
            _query("fieldValidation", "Ignore, Warn (default) or Strict: what to do with unknown fields."),
        ],
        "responses": {"201": {"description": "Created", "schema": _ref(KIND)},
                      "401": {"description": "Unauthorized"}, "403": {"description": "Forbidden"}},
        "x-kubernetes-action": "post",
        "x-kubernetes-group-version-kind": GVK,
    }


def document() -> dict[str, Any]:
    namespace = {"name": "namespace", "in": "path", "required": True, "type": "string", "uniqueItems": True,
                 "description": "object name and auth scope, such as for teams and projects"}
    resources = {"description": "get available resources", "produces": ["application/json"], "schemes": ["https"],
                 "tags": ["uploadCdiKubevirtIo_v1beta1"], "operationId": "getUploadCdiKubevirtIoV1beta1APIResources",
                 "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}}}
    return {
        "swagger": "2.0",
        "info": {"title": "CDI Upload API", "version": VERSION},
        "paths": {
            VERSION_PATH + "/": {"get": resources},
            COLLECTION_PATH: {"post": _create_operation(), "parameters": [namespace]},
        },
        "definitions": definitions(),
    }


def v3_listing() -> dict[str, Any]:
    """``GET /openapi/v3``: no group-version documents, on purpose (see the module docstring)."""
    return {"paths": {}}


def serialized() -> tuple[bytes, str]:
    """The document as JSON bytes and its strong ETag (the aggregator re-downloads with If-None-Match)."""
    data = json.dumps(document(), sort_keys=True, separators=(",", ":")).encode()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
