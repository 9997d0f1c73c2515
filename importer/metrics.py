"""The progress counter CDI's controller scrapes: ``kubevirt_cdi_import_progress_total``.

Served over HTTPS with a self-signed certificate on port 8443 at ``/metrics``, in the
Prometheus text format, labelled with the DataVolume's UID (``ownerUID``), exactly where and
how CDI's controller looks for it. The value is the overall percent (transfer and conversion
together), only ever rising.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .progress import ProgressEvent

METRIC = "kubevirt_cdi_import_progress_total"


class ProgressMetric:
    """A progress listener holding the highest percent seen."""

    def __init__(self, owner_uid: str, metric: str = METRIC) -> None:
        self.owner_uid = owner_uid
        self.metric = metric
        self.value = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        if event.overall is not None:
            with self._lock:
                self.value = max(self.value, event.overall)

    def render(self) -> str:
        with self._lock:
            value = self.value
        return (f"# HELP {self.metric} The import progress in percentage\n"
                f"# TYPE {self.metric} counter\n"
                f'{self.metric}{{ownerUID="{self.owner_uid}"}} {value:.2f}\n')


class MetricsServer:
    """HTTPS ``/metrics`` endpoint on a background thread."""

    def __init__(self, metric: ProgressMetric, port: int = 8443, host: str = "0.0.0.0") -> None:
        self.metric = metric
        handler = self._handler(metric)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = _self_signed(Path(tmp))
            context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @staticmethod
    def _handler(metric: ProgressMetric) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = metric.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _self_signed(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cdi-importer-metrics")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)
