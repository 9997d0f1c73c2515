"""The pieces of cdi-apiserver without a cluster: tables of inputs and what each must answer.

Behaviours under test:

* the front-proxy ConfigMap parses as kube-apiserver writes it (JSON lists; missing keys take the
  kubeadm defaults; an empty allowed-names list admits any CN; no CA is an error that says why);
* the front proxy's CN is checked against the allowed names; a missing certificate is refused;
* identity headers: the first non-empty user header wins; every group header line is one group
  (no comma splitting); extras are lower-cased and percent-decoded keys with one value per line;
  names compare case-insensitively; no user is refused;
* the SubjectAccessReview asks exactly ``create upload.cdi.kubevirt.io/v1beta1 uploadtokenrequests``
  in the namespace, for the user, groups and extras, and omits what is empty;
* body checks: JSON object only, our kind only, namespace must match, pvcName required and a valid
  PVC name, unknown fields reported per ``fieldValidation``, ``dryRun`` only ``All``;
* the answer echoes the request, completes metadata and carries a token for that PVC;
* the OpenAPI document names the kind for kubectl and declares no PATCH (see cdi.apiserver.openapi);
* settings: flags override the environment; the three files are required.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from cdi.apiserver import discovery, openapi
from cdi.apiserver.authn import Unauthenticated, UserInfo, check_front_proxy, user_from_headers
from cdi.apiserver.authz import Decision, access_review, forbidden_message
from cdi.apiserver.frontproxy import FrontProxyConfig, FrontProxyNotConfigured
from cdi.apiserver.settings import Settings
from cdi.apiserver.status import StatusError
from cdi.apiserver.tokenrequests import TokenIssuer, answer, check, decode, options, unknown_fields, warnings_for
from uploadproxy import tokens

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
CONFIGMAP = {
    "client-ca-file": "ignored",
    "requestheader-client-ca-file": CA,
    "requestheader-allowed-names": '["front-proxy-client"]',
    "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
    "requestheader-group-headers": '["X-Remote-Group"]',
    "requestheader-username-headers": '["X-Remote-User"]',
}
CONFIG = FrontProxyConfig.from_configmap_data(CONFIGMAP)


def peercert(cn: str) -> dict[str, Any]:
    return {"subject": ((("organizationName", "x"),), (("commonName", cn),))}


# -- front-proxy configuration and authentication ---------------------------------------------------


def test_configmap_as_kube_apiserver_writes_it() -> None:
    assert CONFIG == FrontProxyConfig(CA + "\n", ("front-proxy-client",), ("X-Remote-User",), ("X-Remote-Group",),
                                      ("X-Remote-Extra-",))


def test_configmap_defaults_and_empty_allowed_names() -> None:
    config = FrontProxyConfig.from_configmap_data({"requestheader-client-ca-file": CA,
                                                   "requestheader-allowed-names": "[]"})
    assert config.allowed_names == () and config.user_headers == ("X-Remote-User",)
    assert config.name_allowed("anyone") and config.name_allowed(None)


def test_configmap_without_ca_says_why() -> None:
    with pytest.raises(FrontProxyNotConfigured, match="no aggregation layer"):
        FrontProxyConfig.from_configmap_data({"client-ca-file": CA})


@pytest.mark.parametrize("cert,ok", [(peercert("front-proxy-client"), True), (peercert("someone"), False),
                                     ({}, False), (None, False)], ids=["allowed", "other-cn", "empty", "none"])
def test_front_proxy_certificate(cert: dict[str, Any] | None, ok: bool) -> None:
    if ok:
        assert check_front_proxy(cert, CONFIG) == "front-proxy-client"
    else:
        with pytest.raises(Unauthenticated):
            check_front_proxy(cert, CONFIG)


def test_identity_headers() -> None:
    headers = [("x-remote-user", "  "), ("X-Remote-User", "alice"), ("X-REMOTE-USER", "mallory"),
               ("X-Remote-Group", "system:authenticated"), ("X-Remote-Group", "a,b"), ("X-Remote-Group", ""),
               ("X-Remote-Extra-Authentication.kubernetes.io%2fcredential-id", "JTI=1"),
               ("x-remote-extra-Scopes", "one"), ("X-Remote-Extra-scopes", "two"), ("X-Remote-Extra-", "no key"),
               ("Content-Type", "application/json")]
    user = user_from_headers(headers, CONFIG)
    assert user == UserInfo("alice", ("system:authenticated", "a,b"),
                            {"authentication.kubernetes.io/credential-id": ["JTI=1"], "scopes": ["one", "two"]})


def test_configured_header_names_are_used() -> None:
    config = FrontProxyConfig(CA, (), ("X-Who", "X-Remote-User"), ("X-Teams",), ("X-Attr-",))
    user = user_from_headers([("X-Remote-User", "second"), ("X-Who", "first"), ("X-Remote-Group", "ignored"),
                              ("X-Teams", "t"), ("X-Attr-K", "v")], config)
    assert user == UserInfo("first", ("t",), {"k": ["v"]})


def test_no_user_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated, match="no user"):
        user_from_headers([("X-Remote-Group", "system:masters")], CONFIG)


# -- authorization ------------------------------------------------------------------------------------


def test_access_review() -> None:
    user = UserInfo("alice", ("g1", "g2"), {"scopes": ["s"]})
    assert access_review(user, "ns1") == {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "alice", "groups": ["g1", "g2"], "extra": {"scopes": ["s"]},
                 "resourceAttributes": {"namespace": "ns1", "verb": "create", "group": "upload.cdi.kubevirt.io",
                                        "version": "v1beta1", "resource": "uploadtokenrequests"}}}
    assert set(access_review(UserInfo("bob"), "ns1")["spec"]) == {"user", "resourceAttributes"}


def test_forbidden_message_is_kube_apiservers() -> None:
    assert forbidden_message(UserInfo("bob"), "ns1") == (
        'uploadtokenrequests.upload.cdi.kubevirt.io is forbidden: User "bob" cannot create resource '
        '"uploadtokenrequests" in API group "upload.cdi.kubevirt.io" in the namespace "ns1"')


# -- the request body ---------------------------------------------------------------------------------


def body(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
            "metadata": {"name": "t"}, "spec": spec}


@pytest.mark.parametrize("raw,content_type,code", [
    (b"{not json", "application/json", 400), (b"[1]", "application/json", 400), (b"", "", 400),
    (b"\xff", "application/json", 400), (b"{}", "application/yaml", 415),
])
def test_decode_refuses(raw: bytes, content_type: str, code: int) -> None:
    with pytest.raises(StatusError) as raised:
        decode(raw, content_type)
    assert raised.value.code == code


@pytest.mark.parametrize("obj,code,text", [
    ({**body(pvcName="d"), "kind": "DataVolume"}, 400, "takes a UploadTokenRequest"),
    ({**body(pvcName="d"), "apiVersion": "upload.cdi.kubevirt.io/v1alpha1"}, 400, "takes a UploadTokenRequest"),
    ({**body(pvcName="d"), "metadata": {"name": "t", "namespace": "other"}}, 400, "does not match the namespace"),
    ({**body(pvcName="d"), "spec": "d"}, 400, "must be objects"),
    (body(), 422, "spec.pvcName: Required value"),
    (body(pvcName=""), 422, "spec.pvcName: Required value"),
    (body(pvcName="Disk_1"), 422, 'spec.pvcName: Invalid value: "Disk_1": a lowercase RFC 1123 subdomain'),
    (body(pvcName=7), 422, "spec.pvcName: Invalid value: 7"),
    (body(pvcName="a" * 254), 422, "spec.pvcName: Invalid value"),
], ids=["kind", "version", "namespace", "spec-not-object", "no-pvc", "empty-pvc", "bad-pvc", "number", "long"])
def test_check_refuses(obj: dict[str, Any], code: int, text: str) -> None:
    with pytest.raises(StatusError) as raised:
        check(obj, "ns1")
    assert raised.value.code == code and text in raised.value.message
    if code == 422:
        details = raised.value.body()["details"]
        assert details["causes"][0]["field"] == "spec.pvcName" and details["kind"] == "UploadTokenRequest"


def test_check_accepts() -> None:
    assert check(body(pvcName="disk-1.a"), "ns1") == ("t", "disk-1.a")
    assert check({"spec": {"pvcName": "d"}, "metadata": {"namespace": "ns1"}}, "ns1") == ("", "d")
    name, _ = check({"metadata": {"generateName": "up-"}, "spec": {"pvcName": "d"}}, "ns1")
    assert name.startswith("up-") and len(name) == 8


def test_unknown_fields_and_validation_modes() -> None:
    obj = {**body(pvcName="d", size="1Gi"), "extra": 1, "metadata": {"name": "t", "labels": {}, "colour": "red"}}
    unknown = unknown_fields(obj)
    assert unknown == ["extra", "metadata.colour", "spec.size"]
    assert warnings_for(unknown, "Ignore") == []
    assert warnings_for(unknown, "Warn")[2] == '299 - "unknown field \\"spec.size\\""'
    with pytest.raises(StatusError, match='strict decoding error: unknown field "extra", unknown field'):
        warnings_for(unknown, "Strict")
    assert warnings_for([], "Strict") == []


@pytest.mark.parametrize("query,ok", [({}, True), ({"dryRun": "All", "fieldValidation": "Strict"}, True),
                                      ({"fieldValidation": "Loose"}, False), ({"dryRun": "true"}, False)])
def test_options(query: dict[str, str], ok: bool) -> None:
    if ok:
        assert options(query).field_validation in ("Warn", "Strict")
    else:
        with pytest.raises(StatusError):
            options(query)


def test_answer_echoes_and_completes() -> None:
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    obj = {**body(pvcName="d"), "metadata": {"name": "t", "labels": {"a": "b"}}, "status": {"token": "forged"}}
    assert answer(obj, "ns1", "t", "tok", now) == {
        "apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "t", "labels": {"a": "b"}, "namespace": "ns1",
                     "creationTimestamp": "2026-01-02T03:04:05Z"},
        "spec": {"pvcName": "d"}, "status": {"token": "tok"}}


class Table:
    """An authorizer from a set of (user, namespace) pairs."""

    def __init__(self, allowed: set[tuple[str, str]]) -> None:
        self.allowed = allowed

    async def authorize(self, user: UserInfo, namespace: str) -> Decision:
        return Decision((user.name, namespace) in self.allowed, "table says no")


def test_issuer_authorizes_before_reading_the_body() -> None:
    key = tokens.generate_key()
    issuer = TokenIssuer(key, Table({("alice", "ns1")}))
    with pytest.raises(StatusError) as raised:
        asyncio.run(issuer.create(UserInfo("bob"), "ns1", {}, "application/json", b"{not json"))
    assert raised.value.code == 403 and raised.value.message.endswith(": table says no")
    created, warnings = asyncio.run(issuer.create(UserInfo("alice"), "ns1", {}, "application/json",
                                                  json.dumps(body(pvcName="d")).encode()))
    assert warnings == []
    tokens.validate_for(created["status"]["token"], key.public_key(), "ns1", "d")


# -- what the server publishes ------------------------------------------------------------------------


def test_discovery_documents() -> None:
    (resource,) = discovery.api_resource_list()["resources"]
    assert (resource["name"], resource["kind"], resource["namespaced"], resource["verbs"]) == \
           ("uploadtokenrequests", "UploadTokenRequest", True, ["create"])
    group = discovery.api_group_list()["groups"][0]
    assert group["preferredVersion"]["groupVersion"] == "upload.cdi.kubevirt.io/v1beta1"


def test_openapi_document() -> None:
    doc = openapi.document()
    definition = doc["definitions"]["io.kubevirt.cdi.upload.v1beta1.UploadTokenRequest"]
    assert definition["x-kubernetes-group-version-kind"] == [
        {"group": "upload.cdi.kubevirt.io", "version": "v1beta1", "kind": "UploadTokenRequest"}]
    operations = {method for path in doc["paths"].values() for method in path if method != "parameters"}
    assert operations == {"get", "post"}  # no patch: see the module docstring for what kubectl makes of it
    refs = {v for v in json.dumps(doc).split('"') if v.startswith("#/definitions/")}
    assert {r.removeprefix("#/definitions/") for r in refs} <= set(doc["definitions"])  # self-contained
    data, etag = openapi.serialized()
    assert json.loads(data) == doc and openapi.serialized()[1] == etag
    assert openapi.v3_listing() == {"paths": {}}


# -- settings -----------------------------------------------------------------------------------------


def test_settings_from_env_and_flags(tmp_path: Path) -> None:
    env = {"APISERVER_TLS_CERT_FILE": "/c", "APISERVER_TLS_KEY_FILE": "/k", "APISERVER_PRIVATE_KEY_FILE": "/s",
           "APISERVER_PORT": "9443"}
    assert Settings.parse([], env) == Settings(Path("/c"), Path("/k"), Path("/s"), None, "0.0.0.0", 9443)
    flagged = Settings.parse(["--secure-port=1", "--bind-address=10.0.0.1", "--kubeconfig=/kc"], env)
    assert (flagged.port, flagged.address, flagged.kubeconfig) == (1, "10.0.0.1", Path("/kc"))


def test_settings_require_the_files() -> None:
    with pytest.raises(SystemExit):
        Settings.parse([], {"APISERVER_TLS_CERT_FILE": "/c"})
