"""Who is asking: the front proxy's certificate first, then the user it vouches for.

An aggregated API server must not trust ``X-Remote-User`` from just anyone: kube-apiserver's
request-header authenticator only reads the headers on a connection whose client certificate
verifies against the request-header CA (the TLS layer does that, see :func:`cdi.apiserver.server.ssl_context`)
and whose CN is an allowed name. Anything else is 401, whatever headers it sends.

Header semantics follow kube-apiserver's (``apiserver/pkg/authentication/request/headerrequest``):
the user is the first non-empty value of the first user header present; groups are every value
of every group header, one group per header line (no comma splitting); an extra is
``<prefix><key>: <value>`` with the key lower-cased and percent-decoded (keys such as
``authentication.kubernetes.io/credential-id`` travel as ``...%2fcredential-id``), one value per
header line. All header names compare case-insensitively.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from uploadproxy.tls import peer_common_name

from .frontproxy import FrontProxyConfig


class Unauthenticated(Exception):
    """The request may not be served: no or wrong front-proxy certificate, or no user."""


@dataclass(frozen=True)
class UserInfo:
    """The user kube-apiserver authenticated, as a SubjectAccessReview wants it."""

    name: str
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)
    uid: str = ""
    """Set for users from an AdmissionReview; the front proxy's headers carry none."""


def check_front_proxy(peercert: dict[str, Any] | None, config: FrontProxyConfig) -> str:
    """The front proxy's CN, or :class:`Unauthenticated` if it is not the front proxy."""
    if not peercert:
        raise Unauthenticated("a client certificate signed by the front-proxy (request-header) CA is required")
    name = peer_common_name(peercert)  # ssl only returns a certificate it verified
    if not config.name_allowed(name):
        raise Unauthenticated(f"client certificate CN {name!r} is not one of the allowed front-proxy names "
                              f"{list(config.allowed_names)}")
    return name or ""


def user_from_headers(headers: Iterable[tuple[str, str]], config: FrontProxyConfig) -> UserInfo:
    """The user the front proxy vouches for; :class:`Unauthenticated` when it names none."""
    pairs = [(name.lower(), value.strip()) for name, value in headers]
    user = _first_user(pairs, config.user_headers)
    if not user:
        raise Unauthenticated(f"no user in the front-proxy headers {list(config.user_headers)}")
    wanted_groups = {h.lower() for h in config.group_headers}
    groups = tuple(value for name, value in pairs if name in wanted_groups and value)
    return UserInfo(user, groups, _extras(pairs, config.extra_prefixes))


def _first_user(pairs: list[tuple[str, str]], user_headers: Iterable[str]) -> str:
    for header in user_headers:
        for name, value in pairs:
            if name == header.lower() and value:
                return value
    return ""


def _extras(pairs: list[tuple[str, str]], prefixes: Iterable[str]) -> dict[str, list[str]]:
    extra: dict[str, list[str]] = {}
    for prefix in (p.lower() for p in prefixes):
        for name, value in pairs:
            if name.startswith(prefix) and len(name) > len(prefix) and value:
                key = urllib.parse.unquote(name[len(prefix):])
                extra.setdefault(key, []).append(value)
    return extra
