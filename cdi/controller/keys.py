"""What the work queue holds: which reconciler is to look at which object.

A key names the *reconciler* as well as the object, because one object concerns several: a PVC
is the DataVolume controller's claim, an import or upload target, and maybe a clone target, and
each of those reconciles it on its own terms.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class Reconciler(str, Enum):
    DATAVOLUME = "datavolume"
    """A DataVolume: its PVC and its status."""
    IMPORT = "import"
    """A PVC with an import source: its importer pod."""
    UPLOAD = "upload"
    """A PVC that takes uploads (or a host-assisted clone's bytes): its upload server."""
    CLONE = "clone"
    """A clone target PVC: the source side (cloner pod, snapshot, CSI clone)."""
    DATASOURCE = "datasource"
    """A DataSource: its resolved source and Ready condition."""
    CRON = "dataimportcron"
    """A DataImportCron: its polls, imports and DataSource."""
    STORAGE_PROFILE = "storageprofile"
    """A StorageClass: its StorageProfile."""
    CONFIG = "cdiconfig"
    """The singleton CDIConfig."""


class Key(NamedTuple):
    reconciler: Reconciler
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.reconciler.value} {where}"
