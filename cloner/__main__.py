"""The cloner pod: ``python -m cloner`` (in the uploadserver image).

Reads the source volume and streams it to the target's upload server (see :mod:`cloner.run`),
serving ``kubevirt_cdi_clone_progress_total{ownerUID}`` on :8443 as the importer serves its
import metric, and reporting as the importer does:

* success: exit 0, ``{"message": "Clone Complete", "bytesSent": ..., "dataBytes": ...,
  "resumedFrom": [...]}``;
* temporary failure: exit 1, ``{"message": "Unable to clone: ...", "reason": ..., "fatalError":
  false}`` (the pod's ``restartPolicy: OnFailure`` runs it again and it resumes);
* permanent failure: exit 2, the same with ``"fatalError": true``.
"""

from __future__ import annotations

import logging
import sys

from importer.__main__ import EXIT_PERMANENT, EXIT_TEMPORARY, write_termination
from importer.errors import CdiImportError
from importer.metrics import MetricsServer, ProgressMetric
from importer.progress import ProgressEvent, TRANSFER

from .client import CloneClient, RetryPolicy
from .run import Cloner, CloneOutcome
from .settings import ClonerSettings, termination_path_from_env
from .source import open_source
from .tls import client_context

log = logging.getLogger("cloner")
METRIC = "kubevirt_cdi_clone_progress_total"


class CloneMetric(ProgressMetric):
    """The importer's counter under CDI's clone name and help text."""

    def render(self) -> str:
        return super().render().replace("The import progress", "The clone progress")


def clone(settings: ClonerSettings, metric: ProgressMetric) -> CloneOutcome:
    source = open_source(settings.volume_mode, settings.content_type, settings.source_dir, settings.source_device)
    try:
        def on_position(position: int) -> None:
            percent = min(100.0, 100.0 * position / source.size) if source.size else 100.0
            metric(ProgressEvent(TRANSFER, position, source.size, 0.0, percent))

        client = CloneClient(settings.upload_url, client_context(settings))
        cloner = Cloner(source, client, compress=settings.compress, segment_bytes=settings.segment_bytes,
                        policy=RetryPolicy(attempts=settings.attempts), on_position=on_position)
        outcome = cloner.run()
        metric(ProgressEvent(TRANSFER, source.size, source.size, 0.0, 100.0))
        return outcome
    finally:
        source.close()


def main(env: dict[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    termination = termination_path_from_env(env)
    server: MetricsServer | None = None
    try:
        settings = ClonerSettings.from_env(env)
        metric = CloneMetric(settings.owner_uid, METRIC)
        if settings.metrics_port:
            server = MetricsServer(metric, settings.metrics_port).start()
        outcome = clone(settings, metric)
    except CdiImportError as error:
        message = error.message if error.message.startswith("Unable to") else f"Unable to clone: {error.message}"
        log.error("%s", message)
        write_termination(termination, {"message": message, "reason": error.reason, "fatalError": error.permanent})
        return EXIT_PERMANENT if error.permanent else EXIT_TEMPORARY
    except Exception as error:  # a bug: report it and let the pod retry (it resumes)
        log.exception("clone failed unexpectedly")
        write_termination(termination, {"message": f"Unable to clone: {error}", "reason": "Error",
                                        "fatalError": False})
        return EXIT_TEMPORARY
    finally:
        if server is not None:
            server.stop()
    log.info("Clone Complete: %d bytes of data, %d on the wire, sent from %s", outcome.data_bytes,
             outcome.wire_bytes, outcome.resumed_from)
    write_termination(termination, {"message": "Clone Complete", "bytesSent": outcome.wire_bytes,
                                    "dataBytes": outcome.data_bytes, "resumedFrom": outcome.resumed_from})
    return 0


if __name__ == "__main__":
    sys.exit(main())
