"""What every reconciler shares: the cache it reads, the client it writes with, the resolved
CDIConfig, and the controller's own settings."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from . import resources as res
from .cache import ObjectCache
from .clone.authorization import Keys
from .config import ControllerConfig, resolve_config
from .importer_pod import ImporterSettings
from .kube import Kube
from .upload_pod import UploadSettings

CONFIG_NAME = "config"
"""CDI's singleton CDIConfig."""


@dataclass
class Context:
    cache: ObjectCache
    kube: Kube
    importer: ImporterSettings = field(default_factory=ImporterSettings)
    upload: UploadSettings = field(default_factory=UploadSettings)
    max_attempts: int = 3
    """Failed importer runs of one import after which a *temporary* error fails the DataVolume
    too (CDI retries forever; a permanent error fails it after the first)."""
    clone_keys: Keys = field(default_factory=lambda: Keys(b"", None))
    """What validates clone tokens (the apiserver's public key) and signs the extended ones."""
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc)
    """Now, for schedules (DataImportCron); a test may move it."""
    poll_seconds: float = 2.0
    """How often progress is read from a running importer, as CDI does."""

    def config(self) -> ControllerConfig:
        return resolve_config(self.cache.get(res.CDICONFIG, "", CONFIG_NAME), self.cache.list(res.STORAGECLASS))
