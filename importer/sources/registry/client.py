"""The registry's HTTP side: TLS trust, scheme choice, Basic and Bearer auth, error mapping
and bounded reads."""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import quote, urlsplit

import requests
import urllib3

from ...errors import (
    AuthenticationFailed,
    InvalidImage,
    PermanentError,
    SourceNotFound,
    SourceUnavailable,
)
from ...stream import CHUNK
from .. import SourceOptions
from ..base import retry_after_seconds, retrying
from ..guards import same_origin
from ..tls import TrustBundle
from .reference import ImageReference

log = logging.getLogger(__name__)

USER_AGENT = "cdi-py-importer"

# ---------------------------------------------------------------------------------------------
# HTTP: auth, errors, retries


@dataclass
class _Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


_CHALLENGE_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> _Challenge | None:
    """``Bearer realm="https://auth",service="reg",scope="repository:a:pull"`` -> fields."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    for key, quoted, bare in _CHALLENGE_PARAM.findall(rest):
        params[key.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
    return _Challenge(scheme.lower(), params)


def _registry_errors(response: requests.Response) -> str:
    """The registry's error codes and messages (``{"errors": [{"code", "message"}]}``), if any."""
    try:
        body = response.json()
        errors = body.get("errors") or []
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        return ""



def _status_error(response: requests.Response, what: str) -> Exception:
    """The importer error for an unexpected HTTP status while fetching ``what``."""
    status = response.status_code
    detail = _registry_errors(response) or response.reason or ""
    text = f"{what}: HTTP {status} {detail}".rstrip()
    if status in (401, 403):
        return AuthenticationFailed(
            f"{text}: access denied (the credentials are wrong, lack pull access, or the "
            "image does not exist)", reason="ImagePullFailed")
    if status in (404, 410):
        return SourceNotFound(f"{what} not found: HTTP {status} {detail}".rstrip(), reason="ImagePullFailed")
    if status == 429 or status >= 500:
        return SourceUnavailable(text, retry_after=retry_after_seconds(response.headers.get("Retry-After")))
    return PermanentError(text, reason="ImagePullFailed")


class RegistryClient:
    """One registry, one repository: TLS trust, scheme choice, auth and error mapping.

    ``requests`` does the HTTP; this class adds the registry protocol around it: the ``/v2/``
    ping, the Basic or Bearer challenge (a token is fetched for ``repository:<repo>:pull`` and
    fetched again once when a request gets 401, e.g. after it expired), and the translation of
    statuses and network failures into importer errors.
    """

    def __init__(self, ref: ImageReference, options: SourceOptions) -> None:
        self.ref = ref
        self.options = options
        self.policy = options.retry
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self._bundle = None if options.insecure else TrustBundle.build(options.cert_dir, options.proxy_cert_dir)
        self.verify: bool | str = False if options.insecure else (str(self._bundle.path) if self._bundle else True)
        """Passed with every request: a Session's own ``verify`` loses to REQUESTS_CA_BUNDLE."""
        if options.insecure:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.base = f"https://{ref.api_host}"
        self._authorization: str | None = None
        self._challenge: _Challenge | None = None

    @property
    def scope(self) -> str:
        return f"repository:{self.ref.repository}:pull"

    def close(self) -> None:
        self.session.close()
        if self._bundle is not None:
            self._bundle.close()
            self._bundle = None

    # -- connection -----------------------------------------------------------------------

    def ping(self) -> None:
        """``GET /v2/``: pick the scheme (https, or http for an insecure registry) and learn
        the auth challenge; authenticate right away when credentials or a token service exist."""
        response = retrying(self.policy, f"registry {self.ref.registry}", self._ping_any_scheme)
        with response:
            if response.status_code == 401:
                self._challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
                self._authenticate(self._challenge)

    def _ping_any_scheme(self) -> requests.Response:
        """https first; for an insecure registry fall back to http when https fails (TLS or
        connection), as containers/image does."""
        self.base = f"https://{self.ref.api_host}"
        try:
            return self._send("GET", f"{self.base}/v2/", what="registry ping", auth=False)
        except (AuthenticationFailed, SourceUnavailable) as error:
            if not self.options.insecure:
                raise
            log.info("registry %s: https failed (%s); trying plain http", self.ref.registry, error)
            self.base = f"http://{self.ref.api_host}"
            return self._send("GET", f"{self.base}/v2/", what="registry ping", auth=False)

    def _send(self, method: str, url: str, *, what: str, auth: bool = True,
              headers: dict[str, str] | None = None, stream: bool = False) -> requests.Response:
        """One request; network and TLS failures become importer errors."""
        all_headers = dict(headers or {})
        if auth and self._authorization:
            all_headers["Authorization"] = self._authorization
        try:
            return self.session.request(method, url, headers=all_headers, stream=stream, verify=self.verify,
                                        timeout=(self.policy.connect_timeout, self.policy.stall_timeout))
        except requests.exceptions.SSLError as error:
            raise AuthenticationFailed(
                f"{what}: TLS with {self.ref.registry} failed: {error}. Add the registry's CA "
                "to the certificate ConfigMap, or mark the registry insecure (also needed when "
                "it speaks plain http)",
                reason="ImagePullFailed") from error
        except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader) as error:
            raise PermanentError(f"{what}: {self.ref.registry} sent us somewhere we cannot go: {error}",
                                 reason="ImagePullFailed") from error
        except (requests.ConnectionError, requests.Timeout) as error:
            raise SourceUnavailable(f"{what}: cannot reach {self.ref.registry}: {error}") from error
        except requests.RequestException as error:
            raise SourceUnavailable(f"{what}: request to {self.ref.registry} failed: {error}") from error

    # -- authentication -------------------------------------------------------------------

    def _authenticate(self, challenge: _Challenge | None) -> bool:
        """Set the Authorization header for ``challenge``; False when there is nothing to try."""
        if challenge is None:
            return False
        if challenge.scheme == "bearer":
            self._authorization = f"Bearer {self._fetch_token(challenge)}"
            return True
        if challenge.scheme == "basic" and self._has_credentials():
            basic = self._basic_header()
            if self._authorization == basic:
                return False
            self._authorization = basic
            return True
        return False

    def _has_credentials(self) -> bool:
        return bool(self.options.access_key_id and self.options.secret_key)

    def _basic_header(self) -> str:
        raw = f"{self.options.access_key_id}:{self.options.secret_key}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def _fetch_token(self, challenge: _Challenge) -> str:
        """The Bearer token flow: GET the realm with service and scope, with Basic credentials
        when we have them, anonymously otherwise; the answer's ``token`` or ``access_token``."""
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthenticationFailed(f"registry {self.ref.registry} asks for a token but names no realm")
        params = {"scope": challenge.params.get("scope") or self.scope}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        auth = (self.options.access_key_id or "", self.options.secret_key or "") if self._has_credentials() else None
        if auth is not None and not self._may_send_credentials(realm):
            raise AuthenticationFailed(
                f"registry {self.ref.registry} asks for the credentials to be sent to the token "
                f"realm {realm} over plain http on another host; refusing (a realm over https, or "
                "on the registry's own origin, is fine)", reason="ImagePullFailed")
        return retrying(self.policy, "registry token", lambda: self._token_request(realm, params, auth))

    def _may_send_credentials(self, realm: str) -> bool:
        """Basic credentials go to a token realm over https, or to the registry's own origin."""
        return urlsplit(realm).scheme.lower() == "https" or same_origin(realm, self.base)

    def _token_request(self, realm: str, params: dict[str, str], auth: tuple[str, str] | None) -> str:
        what = f"token from {realm}"
        try:
            response = self.session.get(realm, params=params, auth=auth, verify=self.verify,
                                        timeout=(self.policy.connect_timeout, self.policy.stall_timeout))
        except requests.exceptions.SSLError as error:
            raise AuthenticationFailed(f"{what}: TLS verification failed: {error}", reason="ImagePullFailed") from error
        except requests.RequestException as error:
            raise SourceUnavailable(f"{what}: {error}") from error
        with response:
            if response.status_code in (401, 403):
                raise AuthenticationFailed(f"the registry token service refused the credentials ({what}: "
                                           f"HTTP {response.status_code})", reason="ImagePullFailed")
            if response.status_code != 200:
                raise _status_error(response, what)
            try:
                body = response.json()
                token = body.get("token") or body.get("access_token")
            except (ValueError, AttributeError):
                token = None
        if not token or not isinstance(token, str):
            raise AuthenticationFailed(f"{what}: the answer holds no token", reason="ImagePullFailed")
        return token

    # -- requests with auth ---------------------------------------------------------------

    def get(self, path: str, *, what: str, headers: dict[str, str] | None = None,
            stream: bool = False, ok: tuple[int, ...] = (200,)) -> requests.Response:
        """GET ``/v2/<repo>/<path>``; on 401 authenticate (again) once and retry."""
        url = f"{self.base}/v2/{quote(self.ref.repository)}/{path}"
        response = self._send("GET", url, what=what, headers=headers, stream=stream)
        if response.status_code == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", "")) or self._challenge
            if self._authenticate(challenge):
                response.close()
                response = self._send("GET", url, what=what, headers=headers, stream=stream)
        if response.status_code not in ok:
            with response:
                raise _status_error(response, what)
        return response

    def get_small(self, path: str, *, what: str, limit: int,
                  headers: dict[str, str] | None = None) -> tuple[bytes, requests.Response]:
        """A small document (manifest, config), read whole, at most ``limit`` bytes."""
        def fetch() -> tuple[bytes, requests.Response]:
            response = self.get(path, what=what, headers=headers, stream=True)
            with response:
                body = _read_limited(response, limit, what)
            return body, response
        return retrying(self.policy, what, fetch)

    def open_blob(self, digest: str, offset: int, what: str) -> requests.Response:
        """A streaming GET of a blob from ``offset`` (a Range request when not at 0)."""
        headers = {"Range": f"bytes={offset}-"} if offset else None
        return self.get(f"blobs/{digest}", what=what, headers=headers, stream=True, ok=(200, 206))


def _read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    """The whole body, refusing more than ``limit`` bytes; a broken read is temporary."""
    parts: list[bytes] = []
    total = 0
    for piece in raw_chunks(response, what, 64 * 1024):
        total += len(piece)
        if total > limit:
            raise InvalidImage(f"{what} is larger than {limit} bytes; refusing it")
        parts.append(piece)
    return b"".join(parts)


def raw_chunks(response: requests.Response, what: str, size: int = CHUNK, linger: float = 0.25) -> Iterator[bytes]:
    """The body as received (no content decoding), in pieces of about ``size`` bytes, handed
    on after ``linger`` seconds when the link is slow (so the speed floor sees a drip).

    Reads with ``read1`` into our own buffer so that when the connection breaks, the bytes
    that did arrive are still yielded before SourceUnavailable: a resume then starts exactly
    where the data stopped (``stream(amt)`` would drop a partly filled read).
    """
    buffer = bytearray()
    failure: Exception | None = None
    since = time.monotonic()
    try:
        while piece := response.raw.read1(size - len(buffer), decode_content=False):
            buffer += piece
            if len(buffer) >= size or time.monotonic() - since >= linger:
                yield bytes(buffer)
                buffer.clear()
                since = time.monotonic()
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as error:
        failure = error
    if buffer:
        yield bytes(buffer)
    if failure is not None:
        raise SourceUnavailable(f"{what}: the connection broke: {failure}") from failure
