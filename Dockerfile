# cdi-py's images: one Dockerfile, one target per image, sharing every layer they can.
#
#   docker build --target controller   -t REGISTRY/cdi-py/controller:TAG .    # controller, cdi-apiserver, upload proxy
#   docker build --target importer     -t REGISTRY/cdi-py/importer:TAG .      # importer pods (python -m importer)
#   docker build --target uploadserver -t REGISTRY/cdi-py/uploadserver:TAG .  # upload server pods
#
# Why three images from one file, not one image: the worker images carry qemu-img (~60 MB the
# controller never runs) and a different default user and entrypoint (CDI's importer runs as 107
# with the volume at /data; the controller as 1001); why one file: Python, the dependencies and our
# package are built once (stage `app`) and copied into each, so a source change rebuilds one small
# layer per image. scripts/images builds these with buildah from a locally made Debian base; any
# `docker build`/`podman build` with the pulled debian:bookworm-slim builds the same.
#
# pip needs the host's CA bundle where outbound HTTPS is intercepted: pass it as a build secret
# (`--secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt`); it is never stored in a layer.

FROM debian:bookworm-slim AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# the dependencies alone (read from pyproject.toml), so a source change does not reinstall them
FROM python AS deps
WORKDIR /opt/cdi-py
COPY pyproject.toml ./
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && python3 -m venv /opt/venv \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

FROM deps AS app
COPY README.md ./
COPY cdi ./cdi
COPY importer ./importer
COPY uploadproxy ./uploadproxy
COPY cloner ./cloner
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps . \
 && python3 -m compileall -q /opt/venv

FROM python AS controller
COPY --from=app /opt/venv /opt/venv
# numeric, so the kubelet can verify runAsNonRoot; deploy/ sets the same UID
USER 1001
EXPOSE 8080 8443
ENTRYPOINT ["python", "-m", "cdi.controller"]
CMD ["--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]

FROM python AS worker
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-utils \
 && rm -rf /var/lib/apt/lists/*
COPY --from=app /opt/venv /opt/venv
RUN mkdir -p /data /scratch && chown 107:107 /data /scratch
# CDI's importer and upload pods run as 107 with the volume at /data (or /dev/cdi-block-volume)
USER 107
EXPOSE 8443

FROM worker AS uploadserver
ENTRYPOINT ["python", "-m", "uploadproxy.server"]

FROM worker AS importer
ENTRYPOINT ["python", "-m", "importer"]
