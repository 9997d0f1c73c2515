"""The aggregation layer's request-header settings, as kube-apiserver publishes them.

kube-apiserver writes its ``--requestheader-*`` flags into the ConfigMap
``kube-system/extension-apiserver-authentication`` so that every aggregated API server can trust
the same front proxy: ``requestheader-client-ca-file`` (PEM), and JSON lists under
``requestheader-allowed-names``, ``requestheader-username-headers``, ``requestheader-group-headers``
and ``requestheader-extra-headers-prefix``. Reading it needs the Role
``extension-apiserver-authentication-reader`` in kube-system.

It is read once at start-up: the front-proxy CA changes only when the control plane's PKI is
rotated, and then the aggregated servers are restarted with it (CDI watches it; we do not yet).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("cdi.apiserver.frontproxy")

CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "extension-apiserver-authentication"

# what kube-apiserver assumes when a flag is not set (the headers every kubeadm cluster uses)
DEFAULT_USER_HEADERS = ("X-Remote-User",)
DEFAULT_GROUP_HEADERS = ("X-Remote-Group",)
DEFAULT_EXTRA_PREFIXES = ("X-Remote-Extra-",)


class FrontProxyNotConfigured(RuntimeError):
    """The cluster publishes no request-header CA: it has no aggregation layer to serve behind."""


@dataclass(frozen=True)
class FrontProxyConfig:
    """Whom to trust as the front proxy, and where it puts the user's identity."""

    client_ca_pem: str
    """CA bundle that signs the front proxy's client certificate."""
    allowed_names: tuple[str, ...] = ()
    """CNs the front proxy's certificate may carry; empty means any certificate from the CA."""
    user_headers: tuple[str, ...] = DEFAULT_USER_HEADERS
    group_headers: tuple[str, ...] = DEFAULT_GROUP_HEADERS
    extra_prefixes: tuple[str, ...] = DEFAULT_EXTRA_PREFIXES

    @classmethod
    def from_configmap_data(cls, data: Mapping[str, str]) -> FrontProxyConfig:
        """Parse the ConfigMap's ``data``; :class:`FrontProxyNotConfigured` without a CA."""
        ca = data.get("requestheader-client-ca-file", "").strip()
        if not ca:
            raise FrontProxyNotConfigured(
                f"{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} has no requestheader-client-ca-file: "
                "kube-apiserver runs without --requestheader-client-ca-file (no aggregation layer)")
        return cls(
            client_ca_pem=ca + "\n",
            allowed_names=_list(data, "requestheader-allowed-names", ()),
            user_headers=_list(data, "requestheader-username-headers", DEFAULT_USER_HEADERS),
            group_headers=_list(data, "requestheader-group-headers", DEFAULT_GROUP_HEADERS),
            extra_prefixes=_list(data, "requestheader-extra-headers-prefix", DEFAULT_EXTRA_PREFIXES),
        )

    def name_allowed(self, common_name: str | None) -> bool:
        """kube-apiserver's rule: the CN must be listed, unless the list is empty."""
        if not self.allowed_names:
            return True
        return common_name is not None and common_name in self.allowed_names


def load(core_api: Any) -> FrontProxyConfig:
    """Read the ConfigMap with a ``kubernetes.client.CoreV1Api``."""
    configmap = core_api.read_namespaced_config_map(CONFIGMAP_NAME, CONFIGMAP_NAMESPACE)
    config = FrontProxyConfig.from_configmap_data(configmap.data or {})
    log.info("front proxy: allowed names %s, user headers %s, group headers %s, extra prefixes %s",
             list(config.allowed_names) or "(any)", list(config.user_headers), list(config.group_headers),
             list(config.extra_prefixes))
    return config


def _list(data: Mapping[str, str], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A JSON list of strings; a missing, empty or ``null`` value means ``default``."""
    raw = data.get(key, "").strip()
    if not raw:
        return default
    value = json.loads(raw)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{CONFIGMAP_NAME}: {key} is not a JSON list of strings: {raw!r}")
    return tuple(value) or default
