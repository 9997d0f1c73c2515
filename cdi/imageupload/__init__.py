"""``cdi image-upload``: virtctl's image-upload as a library call and a command.

Modules, one job each: :mod:`.options` (the request and its checks), :mod:`.manifests` (the
objects created), :mod:`.volumes` (find/create/undo the DataVolume or PVC), :mod:`.waiting`
(ready for upload, then processed), :mod:`.tokens` (proxy URL and upload tokens),
:mod:`.datasource`, :mod:`.cluster` (the API client), :mod:`.flow` (ties them:
``upload_image``), :mod:`.command` (the CLI). Nothing is imported here: the Kubernetes client
costs ~0.4 s to load, which ``cdi import`` should not pay.
"""
