"""Install cdi-py into a cluster as a user would: CRDs, ``deploy/`` with the images named, the
Secrets CDI's components need (made once, kept on later runs), and the APIService's CA.

``python -m cdi.install --image controller=REF --image importer=REF --image uploadserver=REF``;
``scripts/deploy`` runs it for the test cluster with the images ``scripts/images`` pushed.
"""
