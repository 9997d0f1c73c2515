"""DataVolume reconcilers, one per kind of source over a shared base (CDI's
``controller/datavolume/{import,upload,clone}``): :mod:`.base` renders and creates the PVC and
turns its state into the DataVolume's status; :mod:`.importer` is the flow for http, s3,
registry and blank sources, :mod:`.upload` the one for uploads, :mod:`.clone` the one for
clones (from a PVC, a snapshot or a DataSource); :mod:`.kinds` picks the flow."""

from __future__ import annotations

from .base import fail, reconcile

__all__ = ["fail", "reconcile"]
