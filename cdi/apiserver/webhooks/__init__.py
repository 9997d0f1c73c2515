"""CDI's DataVolume admission webhooks, served by cdi-apiserver next to the UploadTokenRequest API.

kube-apiserver calls them for every DataVolume written, as ``deploy/`` registers them
(``cdi-api-datavolume-validate`` and ``cdi-api-datavolume-mutate``, ``failurePolicy: Fail``):

* ``POST /datavolume-mutate`` (CREATE): for a clone, authorize the requester in the source
  namespace as CDI does and stamp the clone token (:mod:`cdi.clonetoken`) the controller checks
  before it reads the source (:mod:`.mutate`, :mod:`.authorize`, :mod:`.sources`);
* ``POST /datavolume-validate`` (CREATE, UPDATE): what the CRD's CEL rules cannot say: the spec
  is immutable, an existing PVC of the same name is not silently taken, sizes, URLs and registry
  settings, the DataSource a ``sourceRef`` names, and the clone source against the target
  (:mod:`.validate`, :mod:`.speccheck`, :mod:`.clonecheck`).

:mod:`.review` speaks AdmissionReview v1, :mod:`.cluster` reads the cluster, :mod:`.handler`
serves HTTP.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from .cluster import Cluster, KubeCluster
from .handler import MUTATE_PATH, PATHS, VALIDATE_PATH, Webhooks
from .mutate import Mutator
from .validate import Validator

__all__ = ["MUTATE_PATH", "PATHS", "VALIDATE_PATH", "Webhooks", "Cluster", "KubeCluster", "webhooks"]


def webhooks(cluster: Cluster, signing_key: rsa.RSAPrivateKey) -> Webhooks:
    return Webhooks(Validator(cluster), Mutator(cluster, signing_key))


def for_api_client(api_client: Any, signing_key: rsa.RSAPrivateKey) -> Webhooks:
    """Webhooks that read the cluster through ``api_client`` (the server's own credentials)."""
    return webhooks(KubeCluster(api_client), signing_key)
