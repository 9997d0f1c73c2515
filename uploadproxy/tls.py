"""TLS contexts for the three hops: client -> proxy, proxy -> upload server (mutual TLS).

The upload server asks for a client certificate but does not require one at the handshake
(``CERT_OPTIONAL``): a certificate from another CA still fails the handshake, while a request
without one reaches the handler and gets CDI's 401, and ``/healthz`` stays reachable for the
readiness probe. The handler then checks the certificate's CN (:func:`peer_common_name`).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MIN_VERSIONS = {
    "VersionTLS12": ssl.TLSVersion.TLSv1_2, "VersionTLS13": ssl.TLSVersion.TLSv1_3,
    "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3,
}


def server_context(cert: Path, key: Path, client_ca: Path | None = None, *,
                   min_version: str | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    """A server context; with ``client_ca``, client certificates signed by it are accepted."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.minimum_version = _MIN_VERSIONS.get(min_version or "", ssl.TLSVersion.TLSv1_2)
    if ciphers:
        _set_ciphers(context, ciphers)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
                   *, insecure: bool = False) -> ssl.SSLContext:
    """A client context trusting ``ca`` (else the system CAs), presenting ``cert`` if given."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def peer_common_name(peercert: dict[str, Any] | None) -> str | None:
    """The CN of a verified peer certificate (``transport.get_extra_info("peercert")``)."""
    for rdn in (peercert or {}).get("subject", ()):
        for attribute, value in rdn:
            if attribute == "commonName":
                return str(value)
    return None


def _set_ciphers(context: ssl.SSLContext, ciphers: str) -> None:
    """CDI passes Go cipher-suite names; OpenSSL only knows its own, so unknown ones are
    reported and the defaults kept rather than refusing to start."""
    try:
        context.set_ciphers(ciphers.replace(" ", ""))
    except ssl.SSLError as error:
        log.warning("TLS_CIPHERS %r not understood by OpenSSL (%s); keeping the defaults", ciphers, error)
