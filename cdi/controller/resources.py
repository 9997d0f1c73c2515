"""The kinds the controller watches and writes: one table, used by the cache, the client and the
operator's watches alike.

A :class:`Resource` says where a kind lives in the API (group, version, plural), whether it is
namespaced, and whether the controller keeps it in its cache (Secrets never: the controller
writes key material once and must not hold it). Everything else names kinds by these constants,
never by strings that mean different things in different places.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.v1beta1 import GROUP, VERSION

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool
    cached: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str = "", name: str = "", subresource: str = "") -> str:
        """The REST path of the collection, or of one object (and one of its subresources)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base

    def __str__(self) -> str:
        return self.kind


DATAVOLUME = Resource("DataVolume", GROUP, VERSION, "datavolumes", True)
DATASOURCE = Resource("DataSource", GROUP, VERSION, "datasources", True)
STORAGEPROFILE = Resource("StorageProfile", GROUP, VERSION, "storageprofiles", False)
CDICONFIG = Resource("CDIConfig", GROUP, VERSION, "cdiconfigs", False)
CDI = Resource("CDI", GROUP, VERSION, "cdis", False)
PVC = Resource("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims", True)
POD = Resource("Pod", "", "v1", "pods", True)
SERVICE = Resource("Service", "", "v1", "services", True)
SECRET = Resource("Secret", "", "v1", "secrets", True, cached=False)
EVENT = Resource("Event", "", "v1", "events", True, cached=False)
STORAGECLASS = Resource("StorageClass", "storage.k8s.io", "v1", "storageclasses", False)
VOLUMESNAPSHOT = Resource("VolumeSnapshot", SNAPSHOT_GROUP, "v1", "volumesnapshots", True)
DATAIMPORTCRON = Resource("DataImportCron", GROUP, VERSION, "dataimportcrons", True)
VOLUMESNAPSHOTCLASS = Resource("VolumeSnapshotClass", SNAPSHOT_GROUP, "v1", "volumesnapshotclasses", False)

WATCHED: tuple[Resource, ...] = (DATAVOLUME, DATASOURCE, DATAIMPORTCRON, PVC, POD, STORAGECLASS, STORAGEPROFILE, CDICONFIG, CDI,
                                 VOLUMESNAPSHOT, VOLUMESNAPSHOTCLASS)
"""What the controller's cache holds, each filled by one watch."""
VOLUMESNAPSHOTCONTENT = Resource("VolumeSnapshotContent", SNAPSHOT_GROUP, "v1", "volumesnapshotcontents", False)
"""Read live (never watched): a cross-namespace smart clone copies one's snapshot handle."""
