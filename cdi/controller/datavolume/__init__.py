"""DataVolume reconcilers, one per kind of source over a shared base (CDI's
``controller/datavolume/{import,upload,clone}``): :mod:`.base` renders and creates the PVC and
turns its state into the DataVolume's status; :mod:`.importer` is the flow for http, s3,
registry and blank sources, :mod:`.upload` the one for uploads; :mod:`.kinds` picks the flow and
says plainly which sources this controller does not handle yet."""

from __future__ import annotations

from .base import reconcile

__all__ = ["reconcile"]
