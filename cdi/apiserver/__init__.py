"""cdi-apiserver: CDI's aggregated API ``upload.cdi.kubevirt.io/v1beta1`` (``UploadTokenRequest``) and
its DataVolume admission webhooks.

``python -m cdi.apiserver`` serves one create-only resource behind kube-apiserver's aggregation
layer. A user creates an ``UploadTokenRequest`` naming a PVC; the answer carries a short-lived
token (:mod:`uploadproxy.tokens`) the upload proxy accepts for that PVC only.

How a request gets here, and why each module exists:

* kube-apiserver authenticates the user, finds the ``APIService`` ``v1beta1.upload.cdi.kubevirt.io``
  and proxies the request over TLS, presenting its front-proxy client certificate and the user's
  identity in ``X-Remote-*`` headers. :mod:`.authn` trusts those headers only on a connection whose
  certificate verifies against the request-header CA and carries an allowed CN, both read from
  ``kube-system/extension-apiserver-authentication`` (:mod:`.frontproxy`).
* kube-apiserver does *not* authorize resources of an aggregated API: that is ours to do.
  :mod:`.authz` asks it with a SubjectAccessReview (verb ``create``, this group and resource, the
  namespace), using the server's own credentials (``system:auth-delegator``).
* :mod:`.tokenrequests` validates the body and issues the token; :mod:`.discovery` and
  :mod:`.openapi` describe the API so that discovery, ``kubectl api-resources``, ``kubectl create -f``
  and the aggregator's OpenAPI merge work; :mod:`.status` renders every failure as a ``v1 Status``.
* :mod:`.webhooks` serves the DataVolume admission webhooks (``/datavolume-validate``,
  ``/datavolume-mutate``) kube-apiserver calls directly: clone authorization and the clone token.
* :mod:`.settings` is read once in :mod:`.__main__`; :mod:`.server` wires it all into aiohttp.
"""
