"""DataImportCron and DataSource end to end: the deployed controller polls the real registry and
nginx, imports each new version, repoints the DataSource and collects old imports.

No test waits for the schedule: the crons here are weekly, and a poll is asked for the way CDI's
source poller does it, by writing ``cdi.kubevirt.io/storage.import.lastCronTime`` on the cron.

Behaviours under test (issue 12):
- a cron on a registry tag imports, its DataSource becomes Ready; a new image pushed to the tag
  makes a second import named after its digest, the DataSource follows it, and with
  ``importsToKeep: 1`` the old import goes;
- a digest-pinned cron imports once and stays up to date (CDI#2689);
- an http cron follows a file that changes (ETag), beyond CDI;
- a source that fails shows on ``UpToDate`` with a reason, and the DataSource keeps the last good
  import;
- a DataSource whose PVC is missing says so on its Ready condition.
"""

from __future__ import annotations

import datetime
import hashlib
import shutil
import uuid
from typing import Any

from kubernetes import client

from tests.controller.conftest import GROUP, VERSION, Controller, wait_for
from tests.controller.dvs import get_dv, sha256_prefix, volume_path
from tests.servers.images import Image
from tests.servers.nginx import Nginx
from tests.servers.registry import Member, Pusher, Registry, config_blob, disk_bytes, layer

WEEKLY = "0 3 * * 1"


def allow_insecure(custom: client.CustomObjectsApi, address: str) -> None:
    config = custom.get_cluster_custom_object(GROUP, VERSION, "cdiconfigs", "config")
    registries = sorted(set((config.get("spec") or {}).get("insecureRegistries") or []) | {address})
    custom.patch_cluster_custom_object(GROUP, VERSION, "cdiconfigs", "config", {"spec": {"insecureRegistries": registries}})


def push(registry: Registry, repository: str, disk: bytes) -> str:
    pusher = Pusher(f"http://{registry.host}", verify=False)
    digest, _ = pusher.image(repository, "latest", [layer([Member("disk/disk.img", disk)])], config_blob())
    return digest


def make_cron(custom: client.CustomObjectsApi, ns: str, name: str, source: dict[str, Any], keep: int = 3) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "dataimportcrons", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataImportCron", "metadata": {"name": name},
        "spec": {"schedule": WEEKLY, "managedDataSource": name, "importsToKeep": keep,
                 "template": {"spec": {"source": source, "storage": {"resources": {"requests": {"storage": "64Mi"}}}}}}})


def poll_now(custom: client.CustomObjectsApi, ns: str, name: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "dataimportcrons", name, {"metadata": {"annotations": {
        "cdi.kubevirt.io/storage.import.lastCronTime": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")}}})


def cron_status(custom: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    cron: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "dataimportcrons", name)
    return cron.get("status") or {}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def ready_source(custom: client.CustomObjectsApi, ns: str, name: str, controller: Controller,
                 claim: str | None = None, timeout: float = 180) -> str:
    """Wait until DataSource ``name`` is Ready (on ``claim`` if given); the claim it names."""
    def check() -> str | None:
        try:
            source = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "datasources", name)
        except client.ApiException:
            return None
        status = source.get("status") or {}
        pvc = ((status.get("source") or {}).get("pvc") or {}).get("name")
        ok = condition(status, "Ready").get("status") == "True" and (claim is None or pvc == claim)
        return str(pvc) if ok else None
    found: str = wait_for(f"DataSource {name} Ready{' on ' + claim if claim else ''}", check, timeout, controller)
    return found


def disk_sha(core: client.CoreV1Api, ns: str, claim: str, size: int) -> str:
    return sha256_prefix(volume_path(core, ns, claim), size)


def test_registry_cron_follows_its_tag(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                       http_registry: Registry, relay_to: Any, controller: Controller) -> None:
    address = relay_to(f"http://{http_registry.host}")
    allow_insecure(custom, address)
    repository = f"golden/fedora-{uuid.uuid4().hex[:6]}"
    first, second = disk_bytes("cron-v1", 512), disk_bytes("cron-v2", 512)
    digest = push(http_registry, repository, first)
    make_cron(custom, ns, "fedora", {"registry": {"url": f"docker://{address}/{repository}:latest"}}, keep=1)
    claim = ready_source(custom, ns, "fedora", controller, f"fedora-{digest[7:19]}")
    assert disk_sha(core, ns, claim, len(first)) == hashlib.sha256(first).hexdigest()
    status = cron_status(custom, ns, "fedora")
    assert condition(status, "UpToDate")["status"] == "True"
    assert status["lastImportedPVC"] == {"namespace": ns, "name": claim}
    assert status["currentImports"][0]["Digest"] == digest
    dv = get_dv(custom, ns, claim) or {}
    assert dv["spec"]["source"]["registry"]["url"] == f"docker://{address}/{repository}@{digest}"

    newer = push(http_registry, repository, second)
    poll_now(custom, ns, "fedora")
    claim2 = ready_source(custom, ns, "fedora", controller, f"fedora-{newer[7:19]}")
    assert disk_sha(core, ns, claim2, len(second)) == hashlib.sha256(second).hexdigest()
    wait_for("the outdated import collected", lambda: get_dv(custom, ns, claim) is None, 60, controller)


def test_digest_pinned_cron_imports_once(custom: client.CustomObjectsApi, ns: str, http_registry: Registry,
                                         relay_to: Any, controller: Controller) -> None:
    address = relay_to(f"http://{http_registry.host}")
    allow_insecure(custom, address)
    repository = f"golden/pinned-{uuid.uuid4().hex[:6]}"
    digest = push(http_registry, repository, disk_bytes("pinned", 256))
    make_cron(custom, ns, "pinned", {"registry": {"url": f"docker://{address}/{repository}@{digest}"}})
    claim = ready_source(custom, ns, "pinned", controller, f"pinned-{digest[7:19]}")
    first_poll = cron_status(custom, ns, "pinned")["lastExecutionTimestamp"]
    poll_now(custom, ns, "pinned")
    wait_for("a second poll", lambda: cron_status(custom, ns, "pinned")["lastExecutionTimestamp"] != first_poll,
             60, controller)
    status = cron_status(custom, ns, "pinned")
    assert condition(status, "UpToDate")["status"] == "True"
    listing = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "datavolumes")["items"]
    assert [d["metadata"]["name"] for d in listing] == [claim]


def test_http_cron_follows_a_changing_file(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str,
                                           pod_nginx: Nginx, images: dict[str, Image], controller: Controller) -> None:
    name = f"golden-{uuid.uuid4().hex[:6]}.img"
    published = pod_nginx.root / name
    shutil.copyfile(images["disk.qcow2"].path, published)
    make_cron(custom, ns, "web", {"http": {"url": f"{pod_nginx.http}/{name}"}})
    claim = ready_source(custom, ns, "web", controller)
    image = images["disk.qcow2"]
    assert disk_sha(core, ns, claim, image.raw_size) == image.raw_sha256
    replacement = images["tiny.iso"]  # other bytes than the first version
    shutil.copyfile(replacement.path, published.with_suffix(".new"))
    published.with_suffix(".new").replace(published)  # a new file: new ETag (mtime and size)
    poll_now(custom, ns, "web")
    claim2 = wait_for("a second import", lambda: (c := ready_source(custom, ns, "web", controller)) != claim and c,
                      180, controller)
    assert disk_sha(core, ns, claim2, replacement.raw_size) == replacement.raw_sha256


def test_failing_source_keeps_the_last_good_import(custom: client.CustomObjectsApi, ns: str,
                                                   http_registry: Registry, relay_to: Any,
                                                   controller: Controller) -> None:
    address = relay_to(f"http://{http_registry.host}")
    allow_insecure(custom, address)
    repository = f"golden/flaky-{uuid.uuid4().hex[:6]}"
    push(http_registry, repository, disk_bytes("flaky", 256))
    make_cron(custom, ns, "flaky", {"registry": {"url": f"docker://{address}/{repository}:latest"}})
    claim = ready_source(custom, ns, "flaky", controller)
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "dataimportcrons", "flaky", {"spec": {"template": {
        "spec": {"source": {"registry": {"url": f"docker://{address}/{repository}:no-such-tag"}}}}}})
    poll_now(custom, ns, "flaky")
    status = wait_for("UpToDate False", lambda: (s := cron_status(custom, ns, "flaky")) and
                      condition(s, "UpToDate").get("status") == "False" and s, 60, controller)
    up_to_date = condition(status, "UpToDate")
    assert up_to_date["reason"] == "SourceNotFound" and "no-such-tag" in up_to_date["message"]
    assert ready_source(custom, ns, "flaky", controller, claim) == claim


def test_datasource_says_what_is_missing(custom: client.CustomObjectsApi, ns: str, controller: Controller) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "datasources", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataSource", "metadata": {"name": "nothing"},
        "spec": {"source": {"pvc": {"namespace": ns, "name": "absent"}}}})
    ready = wait_for("Ready False", lambda: condition((custom.get_namespaced_custom_object(
        GROUP, VERSION, ns, "datasources", "nothing").get("status") or {}), "Ready") or None, 60, controller)
    assert ready["status"] == "False" and ready["reason"] == "NotFound" and "absent" in ready["message"]


def test_snapshot_source_format_keeps_the_golden_image_as_a_snapshot(
        custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str, http_registry: Registry, relay_to: Any,
        controller: Controller) -> None:
    """``dataImportCronSourceFormat: snapshot`` on the StorageProfile: the import is snapshotted,
    the DataSource points at the snapshot, the import's PVC goes, and clones restore from it."""
    address = relay_to(f"http://{http_registry.host}")
    allow_insecure(custom, address)
    profile = "csi-hostpath"
    custom.patch_cluster_custom_object(GROUP, VERSION, "storageprofiles", profile,
                                       {"spec": {"dataImportCronSourceFormat": "snapshot"}})
    try:
        wait_for("the profile's source format", lambda: custom.get_cluster_custom_object(
            GROUP, VERSION, "storageprofiles", profile)["status"].get("dataImportCronSourceFormat") == "snapshot", 30)
        repository = f"golden/snap-{uuid.uuid4().hex[:6]}"
        disk = disk_bytes("snapshot-format", 384)
        digest = push(http_registry, repository, disk)
        make_cron(custom, ns, "snap", {"registry": {"url": f"docker://{address}/{repository}:latest"}})
        name = f"snap-{digest[7:19]}"

        def on_snapshot() -> dict[str, Any] | None:
            try:
                source = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "datasources", "snap")
            except client.ApiException:
                return None
            status = source.get("status") or {}
            ready = condition(status, "Ready").get("status") == "True"
            return status if ready and (status.get("source") or {}).get("snapshot") else None
        status = wait_for("DataSource on the snapshot", on_snapshot, 180, controller)
        assert status["source"]["snapshot"] == {"namespace": ns, "name": name}
        # the cron repoints the DataSource, then writes its own status: wait for the second write
        wait_for("the cron's source format", lambda: cron_status(custom, ns, "snap").get("sourceFormat") == "snapshot",
                 30, controller)
        wait_for("the import's DataVolume gone", lambda: get_dv(custom, ns, name) is None, 60, controller)
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "datavolumes", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DataVolume", "metadata": {"name": "from-golden"},
            "spec": {"sourceRef": {"kind": "DataSource", "name": "snap"}, "storage": {}}})  # sized from the snapshot
        wait_for("the clone Succeeded", lambda: ((get_dv(custom, ns, "from-golden") or {}).get("status") or {})
                 .get("phase") == "Succeeded", 180, controller)
        assert disk_sha(core, ns, "from-golden", len(disk)) == hashlib.sha256(disk).hexdigest()
    finally:
        custom.patch_cluster_custom_object(GROUP, VERSION, "storageprofiles", profile,
                                           {"spec": {"dataImportCronSourceFormat": None}})
