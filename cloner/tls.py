"""The cloner's side of mutual TLS: trust only the upload servers' CA, show our certificate."""

from __future__ import annotations

import ssl

from importer.errors import PermanentError

from .settings import ClonerSettings


def client_context(settings: ClonerSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(settings.server_ca) if settings.server_ca else None)
        if settings.client_cert is not None:
            context.load_cert_chain(settings.client_cert, settings.client_key)
    except (OSError, ssl.SSLError) as error:
        raise PermanentError(f"cannot load the cloner's TLS files: {error}", reason="InvalidSource") from error
    return context
