"""Reaching the cluster as kubectl and virtctl do: a kubeconfig, else in-cluster credentials.

The caller says which kubeconfig (the CLI passes ``--kubeconfig`` or ``$KUBECONFIG``, read
at its entrypoint); with none, ``~/.kube/config`` when it exists, else the pod's service
account. The namespace to use when none is given comes from the same place: the current
context's, or the service account's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from .errors import InvalidUploadRequest

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_KUBECONFIG = Path("~/.kube/config")


@dataclass
class Cluster:
    api: client.ApiClient
    namespace: str
    """The namespace of the current context (``default`` when it names none)."""


def connect(kubeconfig: str | None = None) -> Cluster:
    """An API client from ``kubeconfig`` (a path or ``a:b`` list), ``~/.kube/config`` or in-cluster."""
    path = kubeconfig or (str(DEFAULT_KUBECONFIG.expanduser()) if DEFAULT_KUBECONFIG.expanduser().exists()
                          else None)
    if kubeconfig and not any(Path(part).expanduser().is_file() for part in kubeconfig.split(os.pathsep)):
        raise InvalidUploadRequest(f"kubeconfig {kubeconfig}: no such file")
    try:
        if path:
            return Cluster(config.new_client_from_config(config_file=path), _context_namespace(path))
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as error:
        raise InvalidUploadRequest(f"no cluster to talk to: {error} (pass --kubeconfig or set KUBECONFIG)") \
            from error
    return Cluster(client.ApiClient(configuration), _service_account_namespace())


def _context_namespace(path: str) -> str:
    _, active = config.list_kube_config_contexts(config_file=path)
    return str((active or {}).get("context", {}).get("namespace") or "default")


def _service_account_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"
