"""The server's settings, read once at the entrypoint from flags, else the environment, else defaults.

============================  ====================================  ==========================================
flag                          environment                           meaning
============================  ====================================  ==========================================
``--tls-cert-file``           ``APISERVER_TLS_CERT_FILE``           serving certificate (PEM), required
``--tls-private-key-file``    ``APISERVER_TLS_KEY_FILE``            its key, required
``--signing-key-file``        ``APISERVER_PRIVATE_KEY_FILE``        RSA key that signs upload tokens (PEM), required
``--kubeconfig``              ``KUBECONFIG``                        credentials for reviews; in-cluster if unset
``--bind-address``            ``APISERVER_BIND_ADDRESS``            default ``0.0.0.0``
``--secure-port``             ``APISERVER_PORT``                    default ``8443``
``--tls-min-version``         ``TLS_MIN_VERSION``                   ``VersionTLS12`` (default) or ``VersionTLS13``
============================  ====================================  ==========================================

In the Deployment (``deploy/``) the two secrets are CDI's: ``cdi-apiserver-server-cert``
(``tls.crt``/``tls.key``) and ``cdi-api-signing-key`` (``id_rsa``, with ``id_rsa.pub`` for the
upload proxy). Only :meth:`Settings.parse` looks at ``os.environ``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    tls_cert: Path
    tls_key: Path
    signing_key: Path
    kubeconfig: Path | None = None
    """None: the pod's in-cluster service-account credentials."""
    address: str = "0.0.0.0"
    port: int = 8443
    tls_min_version: str | None = None

    @classmethod
    def parse(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Flags override the environment; a missing required file is a usage error (exit 2)."""
        env = os.environ if env is None else env
        parser = _parser(env)
        args = parser.parse_args(argv)
        required = (("--tls-cert-file", args.tls_cert_file), ("--tls-private-key-file", args.tls_private_key_file),
                    ("--signing-key-file", args.signing_key_file))
        for flag, value in required:
            if not value:
                parser.error(f"{flag} (or its environment variable) is required")
        return cls(tls_cert=Path(args.tls_cert_file), tls_key=Path(args.tls_private_key_file),
                   signing_key=Path(args.signing_key_file),
                   kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
                   address=args.bind_address, port=args.secure_port, tls_min_version=args.tls_min_version or None)


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cdi.apiserver",
                                     description="Serve upload.cdi.kubevirt.io/v1beta1 UploadTokenRequests "
                                                 "behind kube-apiserver's aggregation layer.")
    parser.add_argument("--tls-cert-file", default=env.get("APISERVER_TLS_CERT_FILE"))
    parser.add_argument("--tls-private-key-file", default=env.get("APISERVER_TLS_KEY_FILE"))
    parser.add_argument("--signing-key-file", default=env.get("APISERVER_PRIVATE_KEY_FILE"))
    parser.add_argument("--kubeconfig", default=env.get("KUBECONFIG"))
    parser.add_argument("--bind-address", default=env.get("APISERVER_BIND_ADDRESS", "0.0.0.0"))
    parser.add_argument("--secure-port", type=int, default=int(env.get("APISERVER_PORT", "8443")))
    parser.add_argument("--tls-min-version", default=env.get("TLS_MIN_VERSION"))
    return parser
