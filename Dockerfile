# cdi-py's images: one Dockerfile, one target per image, sharing every layer they can.
#
#   docker build --target controller   -t REGISTRY/cdi-py/controller:TAG .    # controller, cdi-apiserver, upload proxy (+nginx)
#   docker build --target importer     -t REGISTRY/cdi-py/importer:TAG .      # importer pods (python -m importer)
#   docker build --target uploadserver -t REGISTRY/cdi-py/uploadserver:TAG .  # upload server pods
#
# Why three images from one file, not one image: the worker images carry qemu-img (~25 MB the
# controller never runs) and a different default user and entrypoint (CDI's importer runs as 107
# with the volume at /data; the controller as 1001; deploy/ gives the controller image the
# cdi-apiserver's and the upload proxy's commands). Why one file: the Python dependencies are
# installed once (stage `venv`) and our sources compiled once (stage `app`), and every image copies
# both, in that order: a source change rebuilds and pushes one small layer per image, a
# dependency change one more. Nothing used to build (pip, setuptools, python3-venv, apt's lists
# and caches) is left in an image.
#
# scripts/images builds these with buildah from a locally made Debian base stored under the name
# debian:bookworm-slim; `docker build`/`podman build` with the pulled debian:bookworm-slim builds
# the same. Where outbound HTTPS is intercepted, pip needs the host's CA bundle: pass it as a
# build secret (`--secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt`); it is never stored
# in a layer, and without it pip uses its own.

FROM debian:bookworm-slim AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb
# the users the images run as exist by name: kopf (and anything calling getpass) looks the uid up
RUN useradd --system --uid 1001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin cdi \
 && useradd --system --uid 107 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin cdi-worker
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# the dependencies alone (read from pyproject.toml), so a source change does not reinstall them
FROM python AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb
COPY pyproject.toml /tmp/
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && python3 -m venv /opt/venv \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --no-compile --disable-pip-version-check -r /tmp/requirements.txt

# the venv as the images get it: no pip or setuptools; kubernetes' asyncio client (42 MB, unused:
# we use the synchronous one) dropped; compiled once (hash-checked .pyc: an image never changes);
# our packages at /opt/cdi-py on its path
FROM build AS venv
RUN /opt/venv/bin/python -m pip uninstall -q -y pip setuptools \
 && site=$(/opt/venv/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))") \
 && rm -rf "$site/kubernetes/aio" \
 && echo /opt/cdi-py > "$site/cdi-py.pth" \
 && python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv

# our packages: pure Python, run as `python -m ...`, so they are copied and compiled, not pip-installed
FROM python AS app
COPY cdi /opt/cdi-py/cdi
COPY importer /opt/cdi-py/importer
COPY uploadproxy /opt/cdi-py/uploadproxy
COPY cloner /opt/cdi-py/cloner
RUN python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/cdi-py

FROM python AS controller
# nginx: the upload proxy's data path (UPLOADPROXY_DATA_PATH=nginx, uploadproxy/nginx.py); it runs
# as our child with its own config, so the package's default site and logs are never used
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /etc/nginx/sites-enabled/*
COPY --from=venv /opt/venv /opt/venv
COPY --from=app /opt/cdi-py /opt/cdi-py
# numeric, so the kubelet can verify runAsNonRoot; deploy/ sets the same UID
USER 1001
EXPOSE 8080 8443
ENTRYPOINT ["python", "-m", "cdi.controller"]
CMD ["--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]

FROM python AS worker
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-utils bubblewrap \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
 && mkdir -p /data && chown 107:107 /data
COPY --from=venv /opt/venv /opt/venv
COPY --from=app /opt/cdi-py /opt/cdi-py
# CDI's importer and upload pods run as 107 with the volume at /data (or /dev/cdi-block-volume);
# no /scratch here: the importer uses scratch space only where a volume is mounted there
USER 107
EXPOSE 8443

FROM worker AS uploadserver
ENTRYPOINT ["python", "-m", "uploadproxy.server"]

FROM worker AS importer
ENTRYPOINT ["python", "-m", "importer"]
