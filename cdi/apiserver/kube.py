"""The server's own connection to kube-apiserver: a kubeconfig, or the pod's service account."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client, config


def api_client(kubeconfig: Path | None) -> Any:
    """A ``kubernetes.client.ApiClient``; in-cluster credentials when ``kubeconfig`` is None."""
    if kubeconfig is not None:
        return config.new_client_from_config(str(kubeconfig))
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)
