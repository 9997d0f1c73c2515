"""CDI's ``cdi.kubevirt.io/v1beta1`` API as typed Python classes, and the CRDs generated from them.

``to_json``/``from_json`` convert between these classes and the JSON the apiserver speaks.
"""

from .schema import from_json, to_json
from .v1beta1 import (API_VERSION, CDI, GROUP, PHASES, VERSION, CDIConfig, DataImportCron, DataSource,
                      DataVolume, DataVolumeSource, DataVolumeSpec, DataVolumeStatus, StorageProfile, StorageSpec)

__all__ = [
    "API_VERSION", "GROUP", "VERSION", "PHASES", "CDI", "CDIConfig", "DataImportCron", "DataSource",
    "DataVolume", "DataVolumeSource", "DataVolumeSpec", "DataVolumeStatus", "StorageProfile", "StorageSpec",
    "from_json", "to_json",
]
