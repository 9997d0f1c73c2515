"""The importer pod: ``python -m importer``.

Reads CDI's ``IMPORTER_*`` environment once, serves the progress metric on :8443, runs the
import and reports the outcome the way CDI's controller expects it:

* success: exit 0, termination message JSON ``{"message": "Import Complete",
  "preallocationApplied": ..., "labels": {...}, ...}`` (at most 4096 bytes);
* a scratch directory is needed but none is mounted: exit 0, ``"scratchSpaceRequired": true``
  (the controller then recreates the pod with a scratch volume, as CDI does);
* failure: exit 1 when retrying may help, exit 2 when it cannot; the termination message is
  JSON too, ``{"message": "Unable to ...: <why>", "reason": "<Reason>", "fatalError": bool}``,
  so the controller can fail the DataVolume at once on a permanent error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from .errors import CdiImportError, ScratchSpaceRequired
from .job import run_job
from .metrics import MetricsServer, ProgressMetric
from .progress import Progress, ProgressEvent
from .settings import PodSettings

log = logging.getLogger("importer")
MAX_MESSAGE = 4096
EXIT_TEMPORARY = 1
EXIT_PERMANENT = 2


def termination_message(payload: dict[str, Any]) -> str:
    """JSON no longer than kubelet keeps: labels are dropped first, then the text shortened."""
    text = json.dumps(payload, sort_keys=True)
    if len(text) > MAX_MESSAGE and payload.get("labels"):
        payload = dict(payload, labels={})
        text = json.dumps(payload, sort_keys=True)
    if len(text) > MAX_MESSAGE:
        cut = len(text) - MAX_MESSAGE + 20
        payload = dict(payload, message=str(payload.get("message", ""))[:-cut] + " ...")
        text = json.dumps(payload, sort_keys=True)
    return text


def write_termination(path: Path, payload: dict[str, Any]) -> None:
    try:
        path.write_text(termination_message(payload))
    except OSError as error:
        log.warning("cannot write the termination message to %s: %s", path, error)


def failure_prefix(settings: PodSettings | None) -> str:
    """CDI's leading words for a failure, which users and tests search for."""
    if settings is None:
        return "Unable to start the import"
    if settings.source == "blank":
        return "Unable to create blank image"
    return "Unable to process data"


def log_progress(every: float = 5.0) -> Any:
    last = [0.0]

    def listener(event: ProgressEvent) -> None:
        import time

        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            pct = f"{event.overall:.1f}%" if event.overall is not None else "?"
            log.info("%s: %s, %d bytes, %.1f MB/s", event.phase, pct, event.done, event.rate / 1e6)

    return listener


def main(env: dict[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings: PodSettings | None = None
    termination = PodSettings.termination_path_from_env(env)
    server: MetricsServer | None = None
    try:
        settings = PodSettings.from_env(env)
        metric = ProgressMetric(settings.owner_uid)
        progress = Progress([metric, log_progress()])
        if settings.metrics_port:
            server = MetricsServer(metric, settings.metrics_port).start()
        result = run_job(settings, progress)
    except ScratchSpaceRequired as error:
        log.info("scratch space required: %s", error)
        write_termination(termination, {"scratchSpaceRequired": True, "message": str(error)})
        return 0
    except CdiImportError as error:
        message = error.message
        if not message.startswith("Unable to"):
            message = f"{failure_prefix(settings)}: {message}"
        log.error("%s", message)
        write_termination(termination, {"message": message, "reason": error.reason,
                                         "fatalError": error.permanent})
        return EXIT_PERMANENT if error.permanent else EXIT_TEMPORARY
    except Exception as error:  # an unexpected bug: report it, let the pod retry
        log.exception("import failed unexpectedly")
        write_termination(termination, {"message": f"{failure_prefix(settings)}: {error}",
                                        "reason": "Error", "fatalError": False})
        return EXIT_TEMPORARY
    finally:
        if server is not None:
            server.stop()
    log.info("Import Complete: %s (%s, %d bytes)", result.path, result.format, result.disk_size)
    write_termination(termination, {
        "message": "Import Complete",
        "scratchSpaceRequired": False,
        "preallocationApplied": result.preallocated,
        "labels": result.labels,
        "format": result.format,
        "virtualSize": result.virtual_size,
        "route": result.route,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
