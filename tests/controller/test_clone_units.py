"""The clone controller's pure parts: the planner's rules, the work queue's back-off and error
vocabulary, the extended clone token, and which keys a watch event queues. The flows themselves
run against the real cluster in test_clone.py."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes.client.rest import ApiException

from cdi.controller import annotations as ann
from cdi.controller import resources as res
from cdi.controller.cache import ObjectCache
from cdi.controller.certs import make_ca
from cdi.controller.clone import planner, size_detection
from cdi.controller.clone.authorization import Keys, NotAuthorized, authorize, valid_for_claim
from cdi.controller.clone.planner import Fallback, Strategy, Volume
from cdi.controller.clone.source import CloneSource, SourceKind, Unresolved, clone_source
from cdi.controller.errors import PermanentError, TemporaryError, classify
from cdi.controller.keys import Key, Reconciler
from cdi.controller.routing import keys_for
from cdi.controller.workqueue import Backoff, WorkQueue

GIB = 1 << 30
CSI = "hostpath.csi.k8s.io"


def snapshot_class(name: str, driver: str = CSI, default: bool = False) -> dict[str, object]:
    annotations = {"snapshot.storage.kubernetes.io/is-default-class": "true"} if default else {}
    return {"metadata": {"name": name, "annotations": annotations}, "driver": driver}


# -- the planner ----------------------------------------------------------------------------------

def test_strategy_comes_from_the_cdi_override_then_the_profile_then_snapshot() -> None:
    profile = {"status": {"cloneStrategy": "csi-clone"}}
    assert planner.wanted_strategy({"spec": {"cloneStrategyOverride": "copy"}}, profile) is Strategy.COPY
    assert planner.wanted_strategy({"spec": {}}, profile) is Strategy.CSI_CLONE
    assert planner.wanted_strategy(None, None) is Strategy.SNAPSHOT


@pytest.mark.parametrize("source, target, classes, expected", [
    (Volume(CSI, "Filesystem", GIB), Volume(CSI, "Filesystem", GIB), [snapshot_class("s")], (Strategy.SNAPSHOT, None)),
    (Volume("other", "Filesystem", GIB), Volume(CSI, "Filesystem", GIB), [snapshot_class("s")],
     (Strategy.COPY, Fallback.INCOMPATIBLE_PROVISIONERS)),
    (Volume(CSI, "Block", GIB), Volume(CSI, "Filesystem", GIB), [snapshot_class("s")],
     (Strategy.COPY, Fallback.INCOMPATIBLE_VOLUME_MODES)),
    (Volume(CSI, "Filesystem", GIB), Volume(CSI, "Filesystem", 2 * GIB), [snapshot_class("s")],
     (Strategy.COPY, Fallback.NO_VOLUME_EXPANSION)),
    (Volume(CSI, "Filesystem", GIB), Volume(CSI, "Filesystem", 2 * GIB, allow_expansion=True), [snapshot_class("s")],
     (Strategy.SNAPSHOT, None)),
    (Volume(CSI, "Filesystem", GIB), Volume(CSI, "Filesystem", GIB), [snapshot_class("s", driver="other")],
     (Strategy.COPY, Fallback.NO_VOLUME_SNAPSHOT_CLASS)),
    (Volume(CSI, "Filesystem", GIB), Volume("", "Filesystem", GIB), [], (Strategy.COPY, Fallback.NO_STORAGE_CLASS)),
])
def test_snapshot_strategy_falls_back_to_copy_with_cdis_reasons(
        source: Volume, target: Volume, classes: list[dict[str, object]],
        expected: tuple[Strategy, Fallback | None]) -> None:
    plan = planner.plan_pvc_clone(Strategy.SNAPSHOT, source, target, classes)  # type: ignore[arg-type]
    assert (plan.strategy, plan.fallback) == expected
    assert (plan.message != "") == (plan.fallback is not None)


def test_snapshot_class_choice_prefers_the_profiles_then_the_default() -> None:
    classes = [snapshot_class("a"), snapshot_class("b", default=True), snapshot_class("c")]
    assert planner.snapshot_class_for(CSI, classes, preferred="c") == "c"  # type: ignore[arg-type]
    assert planner.snapshot_class_for(CSI, classes) == "b"  # type: ignore[arg-type]
    assert planner.snapshot_class_for(CSI, classes[:1] + classes[2:]) == "a"  # type: ignore[arg-type]
    assert planner.snapshot_class_for("other", classes) == ""  # type: ignore[arg-type]


def test_csi_clone_needs_the_same_driver_but_no_snapshot_class() -> None:
    same = Volume(CSI, "Block", GIB)
    assert planner.plan_pvc_clone(Strategy.CSI_CLONE, same, same, []).strategy is Strategy.CSI_CLONE
    other = Volume("other", "Block", GIB)
    assert planner.plan_pvc_clone(Strategy.CSI_CLONE, other, same, []).fallback is Fallback.INCOMPATIBLE_PROVISIONERS


def test_snapshot_source_restores_directly_only_on_its_own_driver() -> None:
    target = Volume(CSI, "Filesystem", GIB)
    assert planner.plan_snapshot_clone(CSI, GIB, target).strategy is Strategy.SNAPSHOT
    assert planner.plan_snapshot_clone("other", GIB, target).fallback is Fallback.NO_PROVISIONER_MATCH


# -- sources through DataSources ------------------------------------------------------------------

def dv(namespace: str = "team", name: str = "vm-root", **spec: object) -> dict[str, object]:
    return {"metadata": {"namespace": namespace, "name": name, "uid": "u-1", "annotations": {}}, "spec": spec}


def test_sourceref_resolves_through_at_most_one_more_datasource() -> None:
    cache = ObjectCache()
    cache.store(res.DATASOURCE, {"metadata": {"namespace": "golden", "name": "fedora", "resourceVersion": "1"},
                                 "spec": {"source": {"dataSource": {"name": "fedora-43"}}}})
    cache.store(res.DATASOURCE, {"metadata": {"namespace": "golden", "name": "fedora-43", "resourceVersion": "1"},
                                 "spec": {"source": {"snapshot": {"namespace": "golden", "name": "f43"}}}})
    ref = dv(sourceRef={"kind": "DataSource", "namespace": "golden", "name": "fedora"})
    assert clone_source(ref, cache) == CloneSource(SourceKind.SNAPSHOT, "golden", "f43")  # type: ignore[arg-type]
    cache.store(res.DATASOURCE, {"metadata": {"namespace": "golden", "name": "fedora-43", "resourceVersion": "2"},
                                 "spec": {"source": {"dataSource": {"name": "fedora"}}}})
    with pytest.raises(Unresolved, match="more than one level"):
        clone_source(ref, cache)  # type: ignore[arg-type]
    with pytest.raises(Unresolved, match="not found"):
        clone_source(dv(sourceRef={"kind": "DataSource", "name": "nope"}), cache)  # type: ignore[arg-type]


# -- authorization --------------------------------------------------------------------------------

def test_same_namespace_needs_no_token_and_another_needs_one() -> None:
    keys = Keys(b"", make_ca("upload-server-ca"))
    assert authorize(keys, CloneSource(SourceKind.PVC, "team", "golden-disk"), dv()) is None  # type: ignore[arg-type]
    with pytest.raises(NotAuthorized, match="clone token missing"):
        authorize(keys, CloneSource(SourceKind.PVC, "golden", "disk"), dv())  # type: ignore[arg-type]


def test_extended_token_names_source_and_target_and_is_signed() -> None:
    keys = Keys(b"", make_ca("upload-server-ca"))
    source = CloneSource(SourceKind.PVC, "golden", "disk")
    from cdi.controller.clone.authorization import mint_extended
    token = mint_extended(keys, source, dv())  # type: ignore[arg-type]
    claim = {"metadata": {"namespace": "team", "name": "vm-root", "annotations": {ann.EXTENDED_CLONE_TOKEN: token}}}
    assert valid_for_claim(keys, claim, source)
    assert not valid_for_claim(keys, claim, CloneSource(SourceKind.PVC, "golden", "other-disk"))
    moved = {"metadata": {**claim["metadata"], "name": "someone-elses"}}  # type: ignore[dict-item]
    assert not valid_for_claim(keys, moved, source)
    assert not valid_for_claim(Keys(b"", make_ca("another-ca")), claim, source)
    signed = dv()
    signed["metadata"]["annotations"][ann.EXTENDED_CLONE_TOKEN] = token  # type: ignore[index]
    assert authorize(keys, source, signed) is None  # type: ignore[arg-type]


# -- errors and the work queue --------------------------------------------------------------------

def test_api_errors_are_classified() -> None:
    assert isinstance(classify(ApiException(status=422, reason="Unprocessable")), PermanentError)
    assert isinstance(classify(ApiException(status=409, reason="Conflict")), TemporaryError)
    assert isinstance(classify(ApiException(status=503, reason="Unavailable")), TemporaryError)
    assert isinstance(classify(ValueError("a bug")), TemporaryError)


def test_backoff_doubles_up_to_the_cap_with_jitter_below() -> None:
    backoff = Backoff(base=1.0, cap=8.0, jitter=0.2)
    for failures, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)):
        delay = backoff.delay(failures)
        assert ceiling * 0.8 <= delay <= ceiling


def test_failing_key_backs_off_permanent_error_is_reported_once() -> None:
    async def scenario() -> tuple[list[Key], list[tuple[Key, str]], int]:
        queue = WorkQueue(Backoff(base=0.01, cap=0.02, jitter=0.0))
        flaky, hopeless = Key(Reconciler.DATAVOLUME, "ns", "flaky"), Key(Reconciler.DATAVOLUME, "ns", "hopeless")
        calls: list[Key] = []
        failed: list[tuple[Key, str]] = []
        done = asyncio.Event()

        async def handle(key: Key) -> float | None:
            calls.append(key)
            if key == hopeless:
                raise PermanentError("CloneValidationFailed", "too small")
            if calls.count(flaky) < 4:
                raise TemporaryError("APIError", "try again")
            done.set()
            return None

        async def fail(key: Key, error: PermanentError) -> None:
            failed.append((key, error.reason))

        worker = asyncio.create_task(queue.run_worker(handle, fail))
        queue.add(flaky)
        queue.add(hopeless)
        await asyncio.wait_for(done.wait(), 5)
        failures_after_success = queue.failures(flaky)
        worker.cancel()
        return calls, failed, failures_after_success

    calls, failed, failures = asyncio.run(scenario())
    assert calls.count(Key(Reconciler.DATAVOLUME, "ns", "flaky")) == 4
    assert calls.count(Key(Reconciler.DATAVOLUME, "ns", "hopeless")) == 1
    assert failed == [(Key(Reconciler.DATAVOLUME, "ns", "hopeless"), "CloneValidationFailed")]
    assert failures == 0


# -- routing --------------------------------------------------------------------------------------

def test_a_source_pvc_event_wakes_its_clones() -> None:
    cache = ObjectCache()
    target = {"metadata": {"namespace": "team", "name": "vm-root", "resourceVersion": "1",
                           "annotations": {ann.CLONE_REQUEST: "golden/disk"}}}
    cache.store(res.PVC, target)
    waiting = {"metadata": {"namespace": "team", "name": "vm2", "resourceVersion": "1"},
               "spec": {"source": {"pvc": {"namespace": "golden", "name": "disk"}}}}
    cache.store(res.DATAVOLUME, waiting)
    source = {"metadata": {"namespace": "golden", "name": "disk", "resourceVersion": "2"}}
    keys = set(keys_for(cache, res.PVC, source))
    assert keys == {Key(Reconciler.CLONE, "team", "vm-root"), Key(Reconciler.DATAVOLUME, "team", "vm2")}
    assert Key(Reconciler.UPLOAD, "team", "vm-root") in set(keys_for(cache, res.PVC, target))


def test_a_cloner_pod_event_wakes_its_target() -> None:
    pod = {"metadata": {"namespace": "golden", "name": "x-source-pod",
                        "labels": {ann.COMPONENT_LABEL: ann.CLONER_COMPONENT},
                        "annotations": {ann.CLONE_TARGET: "team/vm-root"}}}
    assert list(keys_for(ObjectCache(), res.POD, pod)) == [Key(Reconciler.CLONE, "team", "vm-root")]


def test_a_size_detection_pod_event_wakes_the_clones_of_its_source() -> None:
    cache = ObjectCache()
    for name, source in (("vm1", "disk"), ("vm2", "other")):
        cache.store(res.DATAVOLUME, {"metadata": {"namespace": "golden", "name": name, "resourceVersion": "1"},
                                     "spec": {"source": {"pvc": {"namespace": "golden", "name": source}}}})
    pod = {"metadata": {"namespace": "golden", "name": "size-detection-u1",
                        "labels": {ann.COMPONENT_LABEL: ann.SIZE_DETECTION_COMPONENT},
                        "annotations": {ann.SIZE_DETECTION_SOURCE: "disk"},
                        "ownerReferences": [{"kind": "PersistentVolumeClaim", "name": "disk"}]}}
    assert list(keys_for(cache, res.POD, pod)) == [Key(Reconciler.DATAVOLUME, "golden", "vm1")]


def source_claim(annotations: dict[str, str], capacity: str = "64Mi", mode: str = "Filesystem") -> dict[str, object]:
    return {"metadata": {"namespace": "golden", "name": "disk", "uid": "u1", "annotations": annotations},
            "spec": {"volumeMode": mode}, "status": {"capacity": {"storage": capacity}}}


def test_detected_size_is_kept_while_the_source_capacity_is_unchanged() -> None:
    recorded = {ann.VIRTUAL_IMAGE_SIZE: "63963136", ann.SOURCE_CAPACITY: "64Mi"}
    assert size_detection.cached(source_claim(recorded)) == 63963136
    assert size_detection.cached(source_claim(recorded, capacity="67108864")) == 63963136  # same quantity
    assert size_detection.cached(source_claim(recorded, capacity="128Mi")) is None  # resized: measure again
    assert size_detection.cached(source_claim({ann.VIRTUAL_IMAGE_SIZE: "63963136"})) is None
    assert size_detection.cached(source_claim({**recorded, ann.VIRTUAL_IMAGE_SIZE: "-1"})) is None


def test_only_filesystem_sources_with_kubevirt_content_are_measured() -> None:
    assert size_detection.applies(source_claim({}))
    assert not size_detection.applies(source_claim({}, mode="Block"))
    assert not size_detection.applies(source_claim({ann.CONTENT_TYPE: "archive"}))


# -- DataImportCron schedules (the real croniter) ---------------------------------------------------

def test_cron_schedule_is_parsed_by_croniter_and_due_when_it_fired() -> None:
    import datetime as dt

    from cdi.controller.cron import schedule
    utc = dt.timezone.utc
    monday_3am = dt.datetime(2026, 12, 7, 3, 0, tzinfo=utc)
    assert schedule.next_run("0 3 * * 1", dt.datetime(2026, 12, 4, 12, 0, tzinfo=utc)) == monday_3am
    with pytest.raises(schedule.BadSchedule):
        schedule.next_run("every monday", monday_3am)
    with pytest.raises(schedule.BadSchedule):
        schedule.next_run("0 3 * * 1 2026", monday_3am)  # six fields: seconds/years are not cron
    friday = dt.datetime(2026, 12, 4, 12, 0, tzinfo=utc)
    assert schedule.due("0 3 * * 1", None, None, friday)[0]  # never polled: now
    not_yet, wait = schedule.due("0 3 * * 1", friday - dt.timedelta(hours=1), None, friday)
    assert not not_yet and wait == (monday_3am - friday).total_seconds()
    assert schedule.due("0 3 * * 1", friday - dt.timedelta(days=7), None, friday)[0]  # fired since
    assert schedule.due("0 3 * * 1", friday - dt.timedelta(hours=1), friday - dt.timedelta(minutes=1), friday)[0]
    assert schedule.parse_time("2026-12-04T12:00:00Z") == friday


def test_import_names_and_pinned_urls() -> None:
    from cdi.controller.cron.imports import import_name
    from importer.sources.registry.digest import pinned
    digest = "sha256:" + "ab" * 32
    assert import_name({"metadata": {"name": "c"}, "spec": {"managedDataSource": "fedora"}}, digest) == \
        "fedora-abababababab"
    assert pinned("docker://reg.example:5000/disks/fedora:latest", digest) == \
        f"docker://reg.example:5000/disks/fedora@{digest}"
