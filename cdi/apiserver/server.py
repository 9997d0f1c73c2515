"""The aiohttp application: routes, the front-proxy check, and ``v1 Status`` for every failure.

Which requests need what:

* ``/healthz``, ``/readyz``: anyone (kubelet probes carry no certificate);
* discovery (``/``, ``/apis``, the group and version documents) and ``/openapi/v2``, ``/openapi/v3``: the front
  proxy's certificate; kube-apiserver fetches them as ``system:kube-aggregator``/``system:aggregator``
  and needs no further authorization, as CDI's server grants them to every caller of the proxy;
* ``POST .../namespaces/{ns}/uploadtokenrequests``: the certificate, a user in the headers, and a
  SubjectAccessReview that allows it (:mod:`.tokenrequests`);
* ``POST /datavolume-validate``, ``/datavolume-mutate``: no certificate: kube-apiserver calls
  admission webhooks as a plain HTTPS client, and the requester is inside the AdmissionReview
  (:mod:`.webhooks`). Only these two exact paths skip the front-proxy check.

TLS asks for a client certificate without requiring one (``CERT_OPTIONAL``): a certificate from
another CA fails the handshake, while a request with none reaches the middleware and gets a 401
``Status``, and the probes keep working.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from kubernetes import client

from uploadproxy import tokens
from uploadproxy.tls import server_context

from . import discovery, frontproxy, openapi, webhooks
from .authn import Unauthenticated, check_front_proxy, user_from_headers
from .authz import SubjectAccessReviewer
from .frontproxy import FrontProxyConfig
from .kube import api_client
from .settings import Settings
from .status import StatusError, status_body
from .tokenrequests import TokenIssuer

log = logging.getLogger("cdi.apiserver")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz"}) | webhooks.PATHS
NAMESPACE = "{namespace:[a-z0-9][-a-z0-9]*}"
CREATE_PATH = f"{discovery.VERSION_PATH}/namespaces/{NAMESPACE}/{discovery.RESOURCE}"
FRONT_PROXY_KEY = web.AppKey("front_proxy", FrontProxyConfig)
ISSUER_KEY = web.AppKey("issuer", TokenIssuer)


def ssl_context(settings: Settings, front_proxy: FrontProxyConfig) -> ssl.SSLContext:
    """Serve with our certificate; accept client certificates from the front-proxy CA only."""
    context = server_context(settings.tls_cert, settings.tls_key, min_version=settings.tls_min_version)
    context.load_verify_locations(cadata=front_proxy.client_ca_pem)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


@web.middleware
async def as_status(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render refusals, aiohttp's own 404/405 and crashes as ``v1 Status`` JSON."""
    try:
        return await handler(request)
    except StatusError as error:
        return web.json_response(error.body(), status=error.code)
    except web.HTTPMethodNotAllowed:
        return _status(405, "the server does not allow this method on the requested resource")
    except web.HTTPNotFound:
        return _status(404, "the server could not find the requested resource")
    except web.HTTPException as error:
        return _status(error.status, error.reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _status(500, "an internal error occurred; see the cdi-apiserver log")


@web.middleware
async def front_proxy_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 for every request that did not come through kube-apiserver's front proxy."""
    if request.path not in OPEN_PATHS:
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        try:
            check_front_proxy(peercert, request.app[FRONT_PROXY_KEY])
        except Unauthenticated as error:
            log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, error)
            raise StatusError(401, f"Unauthorized: {error}") from error
    return await handler(request)


def _status(code: int, message: str) -> web.Response:
    return web.json_response(status_body(code, message), status=code)


async def create(request: web.Request) -> web.Response:
    try:
        user = user_from_headers(request.headers.items(), request.app[FRONT_PROXY_KEY])
    except Unauthenticated as error:
        raise StatusError(401, f"Unauthorized: {error}") from error
    content_type = request.content_type if "Content-Type" in request.headers else ""
    created, warnings = await request.app[ISSUER_KEY].create(
        user, request.match_info["namespace"], request.query, content_type, await request.read())
    response = web.json_response(created, status=201)
    for warning in warnings:
        response.headers.add("Warning", warning)
    return response


async def not_allowed(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


def _json(body: Callable[[], dict[str, Any]]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body())

    return handler


async def openapi_v2(request: web.Request) -> web.Response:
    data, etag = openapi.serialized()
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=data, content_type="application/json", headers={"ETag": etag})


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(front_proxy: FrontProxyConfig, issuer: TokenIssuer,
              admission: webhooks.Webhooks | None = None) -> web.Application:
    app = web.Application(middlewares=[as_status, front_proxy_only])
    app[FRONT_PROXY_KEY] = front_proxy
    app[ISSUER_KEY] = issuer
    get = [("/", discovery.root_paths), ("/apis", discovery.api_group_list), ("/apis/", discovery.api_group_list),
           (discovery.GROUP_PATH, discovery.api_group), (discovery.GROUP_PATH + "/", discovery.api_group),
           (discovery.VERSION_PATH, discovery.api_resource_list),
           (discovery.VERSION_PATH + "/", discovery.api_resource_list)]
    for path, body in get:
        app.router.add_get(path, _json(body), allow_head=False)
    app.router.add_get("/openapi/v2", openapi_v2, allow_head=False)
    app.router.add_get("/openapi/v3", _json(openapi.v3_listing), allow_head=False)
    app.router.add_get("/healthz", ok)
    app.router.add_get("/readyz", ok)
    app.router.add_post(CREATE_PATH, create)
    app.router.add_route("*", CREATE_PATH + "/{name}", not_allowed)
    if admission is not None:
        app.router.add_routes(admission.routes())
    return app


def serve(settings: Settings) -> None:
    """Connect to kube-apiserver, read the front-proxy settings, and serve until SIGTERM."""
    api = api_client(settings.kubeconfig)
    front_proxy = frontproxy.load(client.CoreV1Api(api))
    signing_key = tokens.load_private_key(settings.signing_key.read_bytes())
    app = build_app(front_proxy, TokenIssuer(signing_key, SubjectAccessReviewer(api)),
                    webhooks.for_api_client(api, signing_key))
    log.info("serving %s on https://%s:%d", discovery.GROUP_VERSION, settings.address, settings.port)
    web.run_app(app, host=settings.address, port=settings.port, ssl_context=ssl_context(settings, front_proxy),
                print=None, access_log_format='%a "%r" %s %b %Tfs')
