"""The DataVolume webhooks and the clone token without a cluster: tables of inputs and verdicts.

Behaviours under test (the same webhooks against the real kube-apiserver: test_webhooks.py):

* clone tokens: minted and validated with CDI's claims; refused when expired, signed by another key,
  issued by someone else, not a JWT, or naming another source kind, source, target or uid;
* AdmissionReview parsing refuses what kube-apiserver would never send (not JSON, another kind or
  version, no request, no uid, unknown operation, non-object ``object``) with a reason; answers
  echo the uid, carry a base64 JSON patch, or a status with code and causes;
* spec immutability: any spec change is refused, except checkpoints of a multi-stage (vddk or
  imageio) import; metadata changes are not the validator's business;
* the lookup-free spec checks, one row per CDI message;
* clone authorization: same namespace asks nothing; a PVC source needs ``datavolumes/source`` or
  ``create pods``; a snapshot needs ``datavolumes/source`` or pods *and* PVCs (``persistentvolumeclaims``
  or CDI's ``pvcs``); the reviews carry user, groups, uid and extras;
* the validator follows a DataSource to one other DataSource, refuses longer chains and loops;
* the installer fills both webhooks' ``caBundle``;
* the mutator stamps a token only for clones, as a JSON patch that creates the annotations map
  when there is none and escapes the key otherwise; prePopulated DataVolumes pass without one.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from cdi import clonetoken
from cdi.apiserver.authn import UserInfo
from cdi.apiserver.webhooks import review, speccheck
from cdi.apiserver.webhooks.authorize import Decision, authorize
from cdi.apiserver.webhooks.clonecheck import pvc_problem, snapshot_problem
from cdi.apiserver.webhooks.mutate import Mutator, annotation_patch
from cdi.apiserver.webhooks.sources import CloneSource
from cdi.apiserver.webhooks.validate import Validator, may_take_over, spec_change_allowed
from cdi.apiserver import manifests as apiserver_manifests
from cdi.install.customize import Options, customize
from uploadproxy import tokens

KEY = tokens.generate_key()
PUBLIC = tokens.public_key_pem(KEY)
SOURCE = ("pvc", "golden", "fedora")
TARGET = ("vms", "vm1-disk")


# -- clone tokens ------------------------------------------------------------------------------------


def test_token_round_trip_with_cdis_claims() -> None:
    token = clonetoken.mint(KEY, source=SOURCE, target=TARGET)
    clonetoken.validate(token, PUBLIC, source=SOURCE, target=TARGET)
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["iss"] == "cdi-apiserver" and claims["operation"] == "Clone"
    assert (claims["namespace"], claims["name"]) == ("golden", "fedora")
    assert claims["resource"] == {"group": "", "version": "v1", "resource": "persistentvolumeclaims"}
    assert claims["params"] == {"targetNamespace": "vms", "targetName": "vm1-disk"}
    assert claims["exp"] - claims["iat"] == 300
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"] == "PS256"


@pytest.mark.parametrize("token,source,target,uid,why", [
    (clonetoken.mint(KEY, source=SOURCE, target=TARGET, now=0), SOURCE, TARGET, None, "error verifying token: "),
    (clonetoken.mint(tokens.generate_key(), source=SOURCE, target=TARGET), SOURCE, TARGET, None, "error verifying"),
    (clonetoken.mint(KEY, source=SOURCE, target=TARGET, issuer="someone"), SOURCE, TARGET, None, "error verifying"),
    ("not.a.jwt", SOURCE, TARGET, None, "error verifying token"),
    (clonetoken.mint(KEY, source=SOURCE, target=TARGET), ("snapshot", "golden", "fedora"), TARGET, None,
     "resource is 'persistentvolumeclaims', not 'volumesnapshots'"),
    (clonetoken.mint(KEY, source=SOURCE, target=TARGET), ("pvc", "golden", "other"), TARGET, None, "name is"),
    (clonetoken.mint(KEY, source=SOURCE, target=TARGET), ("pvc", "elsewhere", "fedora"), TARGET, None, "namespace"),
    (clonetoken.mint(KEY, source=SOURCE, target=TARGET), SOURCE, ("vms", "vm2-disk"), None, "targetName is"),
    (clonetoken.mint(KEY, source=SOURCE, target=TARGET), SOURCE, ("other", "vm1-disk"), None, "targetNamespace"),
    (clonetoken.mint(KEY, source=SOURCE, target=TARGET, target_uid="u1"), SOURCE, TARGET, "u2", "uid is 'u1'"),
    (tokens.issue(KEY, "golden", "fedora"), SOURCE, TARGET, None, "operation is 'Upload', not 'Clone'"),
])
def test_token_refused(token: str, source: tuple[str, str, str], target: tuple[str, str], uid: str | None,
                       why: str) -> None:
    with pytest.raises(clonetoken.InvalidCloneToken, match=None) as caught:
        clonetoken.validate(token, PUBLIC, source=source, target=target, target_uid=uid)
    assert why in str(caught.value)


def test_token_for_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="'pvc' or a 'snapshot'"):
        clonetoken.mint(KEY, source=("dv", "a", "b"), target=TARGET)


# -- AdmissionReview ---------------------------------------------------------------------------------


def review_body(operation: str = "CREATE", obj: Any = None, **request: Any) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "operation": operation, "namespace": "vms", "name": "dv",
                        "resource": {"group": "cdi.kubevirt.io", "version": "v1beta1", "resource": "datavolumes"},
                        "userInfo": {"username": "alice", "uid": "42", "groups": ["g1", "system:authenticated"],
                                     "extra": {"scopes": ["a", "b"]}},
                        "object": {} if obj is None else obj, **request}}


@pytest.mark.parametrize("body,why", [
    (b"\xff\xfe", "not JSON"), (b"[]", "not an admission.k8s.io/v1"), (b'{"kind": "AdmissionReview"}', "not an"),
    (json.dumps({**review_body(), "apiVersion": "admission.k8s.io/v1beta1"}).encode(), "not an"),
    (json.dumps({**review_body(), "request": None}).encode(), "has no request"),
    (json.dumps({**review_body(), "request": {**review_body()["request"], "uid": ""}}).encode(), "no uid"),
    (json.dumps(review_body("PATCH")).encode(), "'PATCH' is not one of"),
    (json.dumps(review_body(obj=[1])).encode(), "must be JSON objects"),
])
def test_bad_reviews_are_refused_with_a_reason(body: bytes, why: str) -> None:
    with pytest.raises(review.BadReview, match=why):
        review.parse(body)


def test_review_parses_the_requester() -> None:
    request = review.parse(json.dumps(review_body()).encode())
    assert request.user == UserInfo("alice", ("g1", "system:authenticated"), {"scopes": ["a", "b"]}, uid="42")
    assert (request.uid, request.operation, request.namespace, request.name) == ("u-1", "CREATE", "vms", "dv")


def test_answers() -> None:
    allowed = review.allow("u", [{"op": "add", "path": "/x", "value": 1}])
    assert allowed["response"]["uid"] == "u" and allowed["response"]["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(allowed["response"]["patch"])) == [{"op": "add", "path": "/x", "value": 1}]
    rejected = review.reject("u", 422, [review.Cause("Cannot update DataVolume Spec", "DataVolume.Spec")])["response"]
    assert rejected["allowed"] is False and rejected["status"]["code"] == 422
    assert rejected["status"]["message"] == "Cannot update DataVolume Spec"
    assert rejected["status"]["details"]["causes"][0]["field"] == "DataVolume.Spec"
    assert review.error("u", "boom")["response"]["status"] == {"code": 400, "reason": "BadRequest", "message": "boom"}


# -- validation without lookups ----------------------------------------------------------------------

HTTP = {"source": {"http": {"url": "https://example.org/disk.img"}}, "storage": {"resources": {"requests":
                                                                                              {"storage": "1Gi"}}}}
VDDK = {"source": {"vddk": {"url": "https://vc", "uuid": "u", "backingFile": "f", "thumbprint": "t",
                            "secretRef": "s"}}, "pvc": {"accessModes": ["ReadWriteOnce"]},
        "checkpoints": [{"previous": "", "current": "c1"}]}


@pytest.mark.parametrize("old,new,allowed", [
    (HTTP, HTTP, True),
    (HTTP, {**HTTP, "preallocation": True}, False),
    (HTTP, {**HTTP, "source": {"http": {"url": "https://example.org/other.img"}}}, False),
    (VDDK, {**VDDK, "checkpoints": [{"previous": "", "current": "c1"}, {"previous": "c1", "current": "c2"}],
            "finalCheckpoint": True}, True),
    (VDDK, {**VDDK, "finalCheckpoint": True, "preallocation": True}, False),
    ({**HTTP, "checkpoints": [{"previous": "", "current": "c1"}]}, {**HTTP, "checkpoints": []}, False),
])
def test_spec_is_immutable_but_for_multi_stage_checkpoints(old: dict[str, Any], new: dict[str, Any],
                                                           allowed: bool) -> None:
    assert spec_change_allowed(old, new) is allowed


def storage(size: str | None = "1Gi") -> dict[str, Any]:
    return {"storage": {"resources": {"requests": {"storage": size}}} if size else {}}


@pytest.mark.parametrize("spec,message", [
    ({"source": {"blank": {}}, **storage(None)}, "Storage size is missing"),
    ({"source": {"blank": {}}, "pvc": {"accessModes": ["ReadWriteOnce"]}}, "PVC size is missing"),
    ({"source": {"blank": {}}, **storage("0")}, "Storage size can't be equal or less than zero"),
    ({"source": {"pvc": {"namespace": "a", "name": "b"}}, **storage(None)}, None),
    ({"sourceRef": {"kind": "DataSource", "name": "b"}, **storage(None)}, None),
    ({"source": {"pvc": {"namespace": "a", "name": "b"}}, "pvc": {}}, "PVC size is missing"),
])
def test_size_rules(spec: dict[str, Any], message: str | None) -> None:
    cause = speccheck.size_cause(spec)
    assert (cause.message if cause else None) == message


@pytest.mark.parametrize("source,content_type,message", [
    ({"http": {"url": "ftp://x/y"}}, "", "spec.source Invalid source URL scheme: ftp://x/y"),
    ({"http": {"url": ""}}, "", "spec.source source URL is empty"),
    ({"http": {"url": "no scheme"}}, "", "spec.source Invalid source URL: no scheme"),
    ({"s3": {"url": "s3://bucket/key"}}, "", None),
    ({"gcs": {"url": "gs://bucket/obj"}}, "", None),
    ({"registry": {"url": "docker://quay.io/x"}}, "archive", "ContentType must be kubevirt when Source is Registry"),
    ({"registry": {}}, "", "Source registry should have either URL or ImageStream"),
    ({"registry": {"url": "http://quay.io/x"}}, "", "Illegal registry source URL scheme http://quay.io/x"),
    ({"registry": {"url": "docker://q/x", "pullMethod": "pigeon"}}, "", 'ImportMethod pigeon is neither pod, node or ""'),
    ({"registry": {"imageStream": "is"}}, "", "Source registry ImageStream is supported only with node pull import method"),
    ({"registry": {"imageStream": "is", "pullMethod": "node"}}, "", None),
    ({"imageio": {"url": "https://engine", "secretRef": "s", "diskId": "d"}}, "",
     "spec.source.Imageio source Imageio is not valid"),
    ({"vddk": {"url": "https://vc", "uuid": "u"}}, "", "spec.source.VDDK source VDDK is not valid"),
    ({"pvc": {"namespace": "", "name": "x"}}, "", "spec.source.PVC source PVC is not valid"),
    ({"snapshot": {"namespace": "a", "name": ""}}, "", "spec.source.Snapshot source snapshot is not valid"),
    ({"upload": {}}, "archive", None),
])
def test_source_rules(source: dict[str, Any], content_type: str, message: str | None) -> None:
    cause = speccheck.source_cause(source, content_type)
    assert (cause.message if cause else None) == message


@pytest.mark.parametrize("ref,message", [
    ({"name": "x"}, "Missing sourceRef kind"),
    ({"kind": "PersistentVolumeClaim", "name": "x"}, "Unsupported sourceRef kind PersistentVolumeClaim, currently "
                                                     "only DataSource is supported"),
    ({"kind": "DataSource"}, "Missing sourceRef name"),
    ({"kind": "DataSource", "name": "x"}, None),
])
def test_source_ref_rules(ref: dict[str, Any], message: str | None) -> None:
    cause = speccheck.source_ref_cause(ref)
    assert (cause.message if cause else None) == message


def pvc(size: str, mode: str = "Filesystem", content: str | None = None) -> dict[str, Any]:
    annotations = {"cdi.kubevirt.io/storage.contentType": content} if content else {}
    return {"metadata": {"annotations": annotations},
            "spec": {"volumeMode": mode, "resources": {"requests": {"storage": size}}}}


@pytest.mark.parametrize("source,spec,problem", [
    (pvc("2Mi", content="archive"), {"storage": {}}, "Source contentType (archive) and target contentType "
                                                    "(kubevirt) do not match"),
    (pvc("2Mi", content="archive"), {"storage": {}, "contentType": "archive"}, None),
    (pvc("2Mi", content="bogus"), {"storage": {}}, None),  # unknown means kubevirt, as in CDI
    (pvc("2Mi"), {"pvc": {"resources": {"requests": {"storage": "1Mi"}}}},
     "target resources requests storage size is smaller than the source 1048576 < 2097152"),
    (pvc("2Mi"), {"pvc": {"resources": {"requests": {"storage": "2Mi"}}}}, None),
    (pvc("2Mi"), {"pvc": {}}, "source/target missing storage resource requests"),
    (pvc("2Mi"), {"storage": {"resources": {"requests": {"storage": "1Mi"}}}}, None),  # Filesystem: the controller
    (pvc("2Mi", "Block"), {"storage": {"resources": {"requests": {"storage": "1Mi"}}}},
     "target resources requests storage size is smaller than the source 1048576 < 2097152"),
    (pvc("2Mi", "Block"), {"storage": {}}, None),
])
def test_pvc_clone_rules(source: dict[str, Any], spec: dict[str, Any], problem: str | None) -> None:
    assert pvc_problem(source, spec) == problem


SNAP = {"metadata": {"name": "s", "namespace": "n"}, "spec": {"volumeSnapshotClassName": "c"},
        "status": {"restoreSize": "2Mi"}}


@pytest.mark.parametrize("snapshot,spec,problem", [
    ({**SNAP, "status": None}, {"storage": {}}, "no status on source snapshot yet"),
    ({**SNAP, "status": {"error": {"message": "boom"}}}, {"storage": {}}, "snapshot in error state with msg: boom"),
    ({**SNAP, "spec": {}}, {"storage": {}}, "snapshot s/n does not have volume snap class populated, can't clone"),
    (SNAP, {"storage": {"resources": {"requests": {"storage": "1Mi"}}}},
     "target resources requests storage size is smaller than the source"),
    (SNAP, {"storage": {"resources": {"requests": {"storage": "3Mi"}}}}, None),
    (SNAP, {"storage": {}}, None),
])
def test_snapshot_clone_rules(snapshot: dict[str, Any], spec: dict[str, Any], problem: str | None) -> None:
    assert snapshot_problem(snapshot, spec) == problem


@pytest.mark.parametrize("pvc_meta,dv_annotations,ok", [
    ({}, {}, False),
    ({"annotations": {"cdi.kubevirt.io/storage.populatedFor": "dv"}}, {}, True),
    ({"annotations": {"cdi.kubevirt.io/storage.populatedFor": "other"}}, {}, False),
    ({}, {"cdi.kubevirt.io/allowClaimAdoption": "true"}, True),
    ({}, {"cdi.kubevirt.io/allowClaimAdoption": "no"}, False),
    ({"ownerReferences": [{"kind": "DataVolume", "controller": True}]}, {}, True),
    ({"ownerReferences": [{"kind": "Pod", "controller": True}]}, {}, False),
])
def test_existing_claim_rules(pvc_meta: dict[str, Any], dv_annotations: dict[str, str], ok: bool) -> None:
    assert may_take_over({"metadata": pvc_meta}, {"metadata": {"name": "dv", "annotations": dv_annotations}}) is ok


# -- authorization and the mutator with a table for a cluster ------------------------------------------

USER = UserInfo("alice", ("team",), {"scopes": ["x"]}, uid="42")


class Table:
    """A Cluster that allows what its grants list, records every review, and holds a few objects."""

    def __init__(self, grants: set[tuple[str, str]], objects: dict[tuple[str, str, str], dict[str, Any]] | None = None):
        self.grants, self.objects, self.reviews = grants, objects or {}, []  # type: ignore[var-annotated]

    async def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((resource, namespace, name))

    async def namespace_exists(self, name: str) -> bool:
        return name != "missing"

    async def allowed(self, spec: dict[str, Any]) -> bool:
        self.reviews.append(spec)
        attrs = spec["resourceAttributes"]
        resource = attrs["resource"] + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
        return (attrs["namespace"], resource) in self.grants


@pytest.mark.parametrize("kind,grants,allowed", [
    ("pvc", set(), False),
    ("pvc", {("golden", "datavolumes/source")}, True),
    ("pvc", {("golden", "pods")}, True),
    ("pvc", {("vms", "datavolumes/source"), ("vms", "pods")}, False),  # the target namespace does not count
    ("snapshot", {("golden", "pods")}, False),
    ("snapshot", {("golden", "persistentvolumeclaims")}, False),
    ("snapshot", {("golden", "pods"), ("golden", "persistentvolumeclaims")}, True),
    ("snapshot", {("golden", "pods"), ("golden", "pvcs")}, True),
    ("snapshot", {("golden", "datavolumes/source")}, True),
])
def test_clone_authorization(kind: str, grants: set[tuple[str, str]], allowed: bool) -> None:
    cluster = Table(grants)
    source = CloneSource(kind, "golden", "fedora")  # type: ignore[arg-type]
    decision = asyncio.run(authorize(cluster, USER, source, "vms"))
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason == "User alice has insufficient permissions in clone source namespace golden"
    first = cluster.reviews[0]
    assert first == {"user": "alice", "groups": ["team"], "uid": "42", "extra": {"scopes": ["x"]},
                     "resourceAttributes": {"namespace": "golden", "verb": "create", "group": "cdi.kubevirt.io",
                                            "resource": "datavolumes", "subresource": "source", "name": "fedora"}}


def test_same_namespace_asks_nothing() -> None:
    cluster = Table(set())
    assert asyncio.run(authorize(cluster, USER, CloneSource("pvc", "vms", "x"), "vms")) == Decision(True)
    assert cluster.reviews == []


def dv(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "dv", "namespace": "vms"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": meta, "spec": spec}


def mutate(obj: dict[str, Any], cluster: Table) -> dict[str, Any]:
    request = review.parse(json.dumps(review_body(obj=obj)).encode())
    return asyncio.run(Mutator(cluster, KEY).admit(request))["response"]


def test_mutator_stamps_clones_only() -> None:
    assert "patch" not in mutate(dv(HTTP), Table(set()))
    answer = mutate(dv({"source": {"pvc": {"namespace": "vms", "name": "src"}}}), Table(set()))
    (patch,) = json.loads(base64.b64decode(answer["patch"]))
    assert patch["path"] == "/metadata/annotations"
    token = patch["value"][clonetoken.ANNOTATION]
    clonetoken.validate(token, PUBLIC, source=("pvc", "vms", "src"), target=("vms", "dv"))


def test_mutator_resolves_data_sources() -> None:
    ds = {"metadata": {"namespace": "golden", "name": "fedora"},
          "spec": {"source": {"snapshot": {"namespace": "golden", "name": "fedora-snap"}}}}
    cluster = Table({("golden", "datavolumes/source")}, {("datasources", "golden", "fedora"): ds})
    answer = mutate(dv({"sourceRef": {"kind": "DataSource", "namespace": "golden", "name": "fedora"}}, {"a": "b"}),
                    cluster)
    (patch,) = json.loads(base64.b64decode(answer["patch"]))
    assert patch["path"] == "/metadata/annotations/cdi.kubevirt.io~1storage.clone.token"
    clonetoken.validate(patch["value"], PUBLIC, source=("snapshot", "golden", "fedora-snap"), target=("vms", "dv"))
    missing = mutate(dv({"sourceRef": {"kind": "DataSource", "name": "nope"}}), cluster)
    assert missing["status"] == {"code": 400, "reason": "BadRequest",
                                 "message": 'datasources.cdi.kubevirt.io "nope" not found'}


def test_mutator_denies_with_cdis_message_unless_prepopulated() -> None:
    spec = {"source": {"pvc": {"namespace": "golden", "name": "fedora"}}}
    denied = mutate(dv(spec), Table(set()))
    assert denied["allowed"] is False and denied["status"]["code"] == 403
    assert denied["status"]["message"] == "User alice has insufficient permissions in clone source namespace golden"
    passed = mutate(dv(spec, {"cdi.kubevirt.io/storage.prePopulated": "dv"}), Table(set()))
    assert passed["allowed"] is True and "patch" not in passed
    gone = mutate(dv({"source": {"pvc": {"namespace": "missing", "name": "x"}}}), Table(set()))
    assert gone["status"]["message"] == 'namespaces "missing" not found'


def test_annotation_patch_escapes_the_key() -> None:
    assert annotation_patch({"x": "y"}, "a/b~c", "v") == [{"op": "add", "path": "/metadata/annotations/a~1b~0c",
                                                          "value": "v"}]


def validate(obj: dict[str, Any], cluster: Table) -> dict[str, Any]:
    request = review.parse(json.dumps(review_body(obj=obj)).encode())
    return asyncio.run(Validator(cluster).admit(request))["response"]


def test_validator_follows_one_data_source_hop_and_no_more() -> None:
    def ds(name: str, source: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"namespace": "golden", "name": name}, "spec": {"source": source}}
    small = {"pvc": {"resources": {"requests": {"storage": "1Mi"}}}}
    cluster = Table(set(), {
        ("datasources", "golden", "latest"): ds("latest", {"dataSource": {"name": "fedora"}}),
        ("datasources", "golden", "fedora"): ds("fedora", {"pvc": {"namespace": "golden", "name": "f40"}}),
        ("datasources", "golden", "loop"): ds("loop", {"dataSource": {"name": "loop"}}),
        ("datasources", "golden", "deep"): ds("deep", {"dataSource": {"name": "latest"}}),
        ("persistentvolumeclaims", "golden", "f40"): pvc("2Mi"),
    })
    def message(ref: str) -> str | None:
        answer = validate(dv({"sourceRef": {"kind": "DataSource", "namespace": "golden", "name": ref}, **small}),
                          cluster)
        return None if answer["allowed"] else str(answer["status"]["message"])
    assert message("latest") == "target resources requests storage size is smaller than the source 1048576 < 2097152"
    assert message("loop") == "DataSource cannot self-reference"
    assert message("deep") == "DataSource reference chain exceeds maximum depth of 1"
    assert message("gone") == "SourceRef DataSource/golden/gone not found"


def test_installer_fills_the_webhooks_ca_bundle() -> None:
    for manifest in (apiserver_manifests.validating_webhook(), apiserver_manifests.mutating_webhook()):
        done = customize(manifest, Options({"controller": "c", "importer": "i", "uploadserver": "u"}, api_ca=b"CA"))
        assert [h["clientConfig"]["caBundle"] for h in done["webhooks"]] == [base64.b64encode(b"CA").decode()]
