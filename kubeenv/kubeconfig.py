"""Kubeconfig files with the certificates embedded, so a file stays valid wherever it is copied."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from kubeenv.pki import CertPair


def write_kubeconfig(path: Path, server: str, ca: Path, client: CertPair, user: str, cluster: str = "cdi-py") -> Path:
    """Write a one-context kubeconfig for ``user`` authenticating with a client certificate."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": _b64(client.cert),
                                          "client-key-data": _b64(client.key)}}],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()
