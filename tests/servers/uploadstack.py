"""The cluster side of uploads for end-to-end tests: certificates and the upload proxy process.

:func:`make_upload_pki` writes what an installer would put in Secrets: the upload-server signer
(the controller signs each upload pod's certificate with it; the proxy trusts it), the CA of the
proxy's client certificate (upload servers accept only it) and that client certificate, and the
proxy's own serving certificate, for the host addresses a client dials.

:class:`ProxyProcess` runs ``python -m uploadproxy.proxy`` on the host with the cluster resolver
in ``endpoints`` mode (the host has no cluster DNS; pods are reached at their IPs, the
certificate still checked against the Service's name).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cdi.controller.certs import CertificatePem, Signer, make_ca
from kubeenv.process import Process
from tests.servers.pki import TestCA
from tests.servers.ports import free_port, wait_listening
from uploadproxy.settings import PROXY_CLIENT_NAME

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class UploadPki:
    server_ca_cert: Path
    server_ca_key: Path
    client_ca_cert: Path
    proxy_client_cert: Path
    proxy_client_key: Path
    proxy_cert: Path
    proxy_key: Path
    proxy_ca: Path
    """What a client trusts to reach the proxy (the test CA)."""

    def controller_env(self) -> dict[str, str]:
        return {"UPLOADSERVER_CA_CERT_FILE": str(self.server_ca_cert),
                "UPLOADSERVER_CA_KEY_FILE": str(self.server_ca_key),
                "UPLOADPROXY_CLIENT_CA_FILE": str(self.client_ca_cert)}


def _write(directory: Path, name: str, pem: CertificatePem) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(pem.cert)
    key.write_bytes(pem.key)
    key.chmod(0o600)
    return cert, key


def make_upload_pki(directory: Path, test_ca: TestCA, proxy_ips: tuple[str, ...]) -> UploadPki:
    directory.mkdir(parents=True, exist_ok=True)
    server_ca = make_ca("cdi-uploadserver-signer")
    client_ca = make_ca("cdi-uploadserver-client-signer")
    server_ca_cert, server_ca_key = _write(directory, "server-ca", server_ca)
    client_ca_cert, _ = _write(directory, "client-ca", client_ca)
    client_cert, client_key = _write(directory, "proxy-client",
                                     Signer(client_ca).issue(PROXY_CLIENT_NAME, client=True))
    served = test_ca.issue(directory, "cdi-uploadproxy", dns=("localhost",), ips=("127.0.0.1", *proxy_ips))
    return UploadPki(server_ca_cert, server_ca_key, client_ca_cert, client_cert, client_key,
                     served.cert, served.key, test_ca.cert)


class ProxyProcess:
    def __init__(self, pki: UploadPki, kubeconfig: Path, public_key_pem: bytes, log: Path,
                 port: int | None = None, address: str = "127.0.0.1") -> None:
        self.pki = pki
        self.kubeconfig = kubeconfig
        self.public_key_pem = public_key_pem
        self.log_path = log
        self.port = port or free_port()
        self.address = address
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> ProxyProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KUBECONFIG": str(self.kubeconfig),
               "UPLOADPROXY_UPSTREAM": "endpoints", "APISERVER_PUBLIC_KEY": self.public_key_pem.decode(),
               "TLS_CERT_FILE": str(self.pki.proxy_cert), "TLS_KEY_FILE": str(self.pki.proxy_key),
               "CLIENT_CERT_FILE": str(self.pki.proxy_client_cert), "CLIENT_KEY_FILE": str(self.pki.proxy_client_key),
               "SERVER_CA_FILE": str(self.pki.server_ca_cert),
               "UPLOADPROXY_ADDRESS": self.address, "UPLOADPROXY_PORT": str(self.port)}
        env.pop("UPLOAD_SERVERS", None)
        self.process = Process.spawn("cdi-uploadproxy", [sys.executable, "-m", "uploadproxy.proxy"], self.log_path,
                                     die_with_parent=True, env=env, cwd=ROOT)
        wait_listening(self.port, host="127.0.0.1" if self.address in ("0.0.0.0", "127.0.0.1") else self.address)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
