"""The two HTTP endpoints kube-apiserver calls, ``POST /datavolume-validate`` and ``/datavolume-mutate``.

kube-apiserver calls webhooks as a plain HTTPS client: no front-proxy certificate and no identity
headers (the requester is inside the review), so these two paths are exempt from the front-proxy
check that guards the aggregated API (:mod:`cdi.apiserver.server`), and only these. What a caller
can do here is ask for a decision, and get a token only for a clone its own ``userInfo`` may make;
that ``userInfo`` is trusted because only kube-apiserver can get the answer applied.

Bodies are read up to :data:`MAX_BODY` (kube-apiserver caps an object at about 3 MiB; a review
holds the object and, on UPDATE, the old one) and must be JSON. A body that is not an
AdmissionReview v1 is refused with 400 and a ``v1 Status`` saying why; any answer to a real review is
200 with the verdict inside, as the webhook protocol requires.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cdi.apiserver.status import StatusError

from . import review
from .cluster import LookupFailed
from .mutate import Mutator
from .review import BadReview, Request
from .validate import Validator

log = logging.getLogger("cdi.apiserver.webhooks")

VALIDATE_PATH = "/datavolume-validate"
MUTATE_PATH = "/datavolume-mutate"
PATHS = frozenset({VALIDATE_PATH, MUTATE_PATH})
MAX_BODY = 8 << 20
RESOURCE = {"group": "cdi.kubevirt.io", "version": "v1beta1", "resource": "datavolumes"}

Admit = Callable[[Request], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Webhooks:
    validator: Validator
    mutator: Mutator

    def routes(self) -> list[web.RouteDef]:
        return [web.post(VALIDATE_PATH, handler(self.validator.admit)),
                web.post(MUTATE_PATH, handler(self.mutator.admit))]


def handler(admit: Admit) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(http: web.Request) -> web.Response:
        if http.content_type != "application/json":
            raise StatusError(415, f"an AdmissionReview must be sent as application/json, not {http.content_type!r}")
        try:
            request = review.parse(await read_bounded(http, MAX_BODY))
        except BadReview as err:
            raise StatusError(400, f"{http.path}: {err}") from err
        return web.json_response(await decide(admit, request))
    return handle


async def decide(admit: Admit, request: Request) -> dict[str, Any]:
    """The verdict for one review; lookups that fail refuse the request rather than guess."""
    if {k: request.resource.get(k) for k in RESOURCE} != RESOURCE:
        return review.error(request.uid, f"expect resource to be '{RESOURCE['resource']}'")
    try:
        return await admit(request)
    except LookupFailed as err:
        log.warning("review %s of %s/%s: %s", request.uid, request.namespace, request.name, err)
        return review.error(request.uid, str(err))


async def read_bounded(http: web.Request, limit: int) -> bytes:
    """The body, or 413 once it passes ``limit`` bytes (checked before reading when a length is declared)."""
    if http.content_length is not None and http.content_length > limit:
        raise StatusError(413, f"the AdmissionReview is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in http.content.iter_chunked(64 << 10):
        size += len(chunk)
        if size > limit:
            raise StatusError(413, f"the AdmissionReview is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
