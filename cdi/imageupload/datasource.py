"""``--datasource``: publish the uploaded PVC as a DataSource of the same name.

Create, or point an existing DataSource at this PVC (its other fields are left alone), so
re-uploading a golden image under the same name moves the DataSource along, as virtctl does.
"""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.rest import ApiException

from cdi.api.v1beta1 import GROUP, VERSION

from . import manifests
from .errors import ImageUploadError

DATASOURCES = "datasources"


def publish(api: client.ApiClient, namespace: str, name: str) -> str:
    """Create or update DataSource ``namespace/name``; ``created`` or ``updated``."""
    custom = client.CustomObjectsApi(api)
    body = manifests.datasource(namespace, name)
    try:
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, DATASOURCES, body)
            return "created"
        except ApiException as error:
            if error.status != 409:
                raise
        # a merge patch: null drops whatever other source the DataSource pointed at before
        source = {"snapshot": None, "dataSource": None, **body["spec"]["source"]}
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, DATASOURCES, name,
                                              {"spec": {"source": source}},
                                              _content_type="application/merge-patch+json")
        return "updated"
    except ApiException as error:
        raise ImageUploadError(f"the upload went through, but DataSource {namespace}/{name} could not be "
                               f"written: {error.status} {error.reason}",
                               permanent=error.status is not None and 400 <= error.status < 500) from error
