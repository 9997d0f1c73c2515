"""``/datavolume-mutate``: authorize a clone and stamp its token (CDI's ``datavolume-mutate.go``).

For every DataVolume created, whatever its source:

1. a DataVolume being deleted passes untouched;
2. its clone source is resolved (:mod:`.sources`); not a clone: allowed, nothing stamped;
3. the source namespace must exist (else refused, 400, kube-apiserver's ``not found`` wording);
4. the requester is authorized in the source namespace (:mod:`.authorize`); refused with 403 and
   ``User X has insufficient permissions in clone source namespace Y``;
5. a token (:mod:`cdi.clonetoken`, five minutes) naming the source and the target is added as the
   annotation ``cdi.kubevirt.io/storage.clone.token`` by a JSON patch (replacing any the user
   wrote: a token is only ever ours). Same-namespace clones get one too, as in CDI.

A DataVolume annotated ``cdi.kubevirt.io/storage.prePopulated`` or ``storage.checkStaticVolume``
needs no token (its PVC exists already or comes from a static PV): when its source or source
namespace is missing, or the user may not clone it, it is admitted without a token, as CDI does.

CDI also runs this webhook on UPDATE, re-authorizing whoever updates the DataVolume; we register
it for CREATE only: the token is stamped at creation and the validating webhook keeps the spec
(and so the source) from changing afterwards, so a later review would protect nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from cdi import clonetoken

from . import review
from .authorize import authorize
from .cluster import Cluster
from .review import Cause, Request, obj
from .sources import BadDataSourceChain, DataSourceMissing, resolve

log = logging.getLogger("cdi.apiserver.webhooks")

PRE_POPULATED = "cdi.kubevirt.io/storage.prePopulated"
CHECK_STATIC_VOLUME = "cdi.kubevirt.io/storage.checkStaticVolume"
SOURCE_FIELD = "spec.source.PVC.namespace"  # where CDI points the denial's cause


class Mutator:
    def __init__(self, cluster: Cluster, signing_key: rsa.RSAPrivateKey) -> None:
        self.cluster = cluster
        self.signing_key = signing_key

    async def admit(self, request: Request) -> dict[str, Any]:
        dv = request.object
        metadata = obj(dv.get("metadata"))
        if metadata.get("deletionTimestamp") or request.operation != "CREATE":
            return review.allow(request.uid)
        namespace = str(metadata.get("namespace") or request.namespace)
        name = str(metadata.get("name") or request.name)
        annotations = obj(metadata.get("annotations"))
        no_token_okay = PRE_POPULATED in annotations or CHECK_STATIC_VOLUME in annotations
        try:
            source = await resolve(obj(dv.get("spec")), namespace, self.cluster)
        except (DataSourceMissing, BadDataSourceChain) as err:
            return review.allow(request.uid) if no_token_okay and isinstance(err, DataSourceMissing) \
                else review.error(request.uid, str(err))
        if source is None:
            return review.allow(request.uid)
        if not await self.cluster.namespace_exists(source.namespace):
            return review.allow(request.uid) if no_token_okay \
                else review.error(request.uid, f'namespaces "{source.namespace}" not found')
        decision = await authorize(self.cluster, request.user, source, namespace)
        if not decision.allowed:
            log.info("refused clone %s/%s from %s %s/%s for %s", namespace, name, source.kind, source.namespace,
                     source.name, request.user.name)
            if no_token_okay:
                return review.allow(request.uid)
            return review.reject(request.uid, 403, [Cause(decision.reason, SOURCE_FIELD)])
        token = clonetoken.mint(self.signing_key, source=source.as_tuple, target=(namespace, name))
        return review.allow(request.uid, annotation_patch(annotations, clonetoken.ANNOTATION, token))


def annotation_patch(annotations: dict[str, Any], key: str, value: str) -> list[dict[str, Any]]:
    """A JSON patch setting one annotation, creating ``metadata.annotations`` when there is none."""
    if not annotations:
        return [{"op": "add", "path": "/metadata/annotations", "value": {key: value}}]
    escaped = key.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": f"/metadata/annotations/{escaped}", "value": value}]
