"""``python -m cdi.controller``: run the DataVolume controller against a cluster.

Configuration is read here, once: the kubeconfig (``--kubeconfig``, else ``$KUBECONFIG``, else
in-cluster), ``IMPORTER_IMAGE``/``IMPORTER_PULL_POLICY`` for worker pods,
``IMPORTER_EXTRA_ENV`` (``K=V,K=V``, passed to every importer), ``IMPORT_MAX_ATTEMPTS`` (failed
importer runs after which even a temporary error fails the DataVolume), ``WORKERS``; for upload
servers ``UPLOADSERVER_IMAGE``/``UPLOADSERVER_PULL_POLICY``, ``UPLOADSERVER_CA_CERT_FILE`` and
``UPLOADSERVER_CA_KEY_FILE`` (the signer of their serving certificates, which the proxy trusts),
``UPLOADPROXY_CLIENT_CA_FILE`` (the CA of the proxy's client certificate), ``UPLOADPROXY_URL``
(published as CDIConfig ``status.uploadProxyURL``) and ``UPLOADSERVER_EXTRA_ENV``; for clones
``CLONE_TOKEN_PUBLIC_KEY_FILE`` (the apiserver's token key, which validates the clone tokens
the DataVolume webhook stamps).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from kubernetes import client, config

from .cache import ObjectCache
from .certs import CertificatePem
from .clone.authorization import Keys
from .context import Context
from .importer_pod import ImporterSettings
from .kube import Kube
from .operator import Controller, connection_from
from .upload_pod import UploadSettings


def _parse_env_list(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {k.strip(): v.strip() for k, v in pairs}


def upload_settings(env: dict[str, str] | os._Environ[str]) -> UploadSettings:
    """Upload servers need the signer's cert and key and the proxy's client CA, all or none."""
    names = ("UPLOADSERVER_CA_CERT_FILE", "UPLOADSERVER_CA_KEY_FILE", "UPLOADPROXY_CLIENT_CA_FILE")
    given = [n for n in names if env.get(n)]
    if given and len(given) != len(names):
        raise SystemExit(f"upload servers need all of {', '.join(names)}; only {', '.join(given)} given")
    ca = CertificatePem(Path(env[names[0]]).read_bytes(), Path(env[names[1]]).read_bytes()) if given else None
    return UploadSettings(
        image=env.get("UPLOADSERVER_IMAGE", UploadSettings.image),
        pull_policy=env.get("UPLOADSERVER_PULL_POLICY", UploadSettings.pull_policy),
        server_ca=ca, client_ca_pem=Path(env[names[2]]).read_bytes() if given else b"",
        proxy_url=env.get("UPLOADPROXY_URL", ""),
        extra_env=_parse_env_list(env.get("UPLOADSERVER_EXTRA_ENV", "")))


def load_configuration(kubeconfig: str | None) -> client.Configuration:
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        config.load_kube_config(config_file=path, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return configuration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdi.controller", description=__doc__)
    parser.add_argument("--kubeconfig")
    parser.add_argument("--liveness", help="e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "8")))
    parser.add_argument("-v", "--verbose", action="store_true")
    # always so; accepted for kopf-style command lines (the Deployment spells them out)
    parser.add_argument("--standalone", action="store_true", help="no peering (always)")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="cluster-wide (always)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.WARNING)
    configuration = load_configuration(args.kubeconfig)
    configuration.connection_pool_maxsize = max(args.workers * 2, 8)
    cache = ObjectCache()
    importer = ImporterSettings(
        image=os.environ.get("IMPORTER_IMAGE", ImporterSettings.image),
        pull_policy=os.environ.get("IMPORTER_PULL_POLICY", ImporterSettings.pull_policy),
        extra_env=_parse_env_list(os.environ.get("IMPORTER_EXTRA_ENV", "")))
    upload = upload_settings(os.environ)
    public_key_file = os.environ.get("CLONE_TOKEN_PUBLIC_KEY_FILE")
    ctx = Context(cache=cache, kube=Kube(client.ApiClient(configuration), cache), importer=importer, upload=upload,
                  clone_keys=Keys(Path(public_key_file).read_bytes() if public_key_file else b"", upload.server_ca),
                  max_attempts=int(os.environ.get("IMPORT_MAX_ATTEMPTS", "3")))
    controller = Controller(ctx, workers=args.workers)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await controller.run(stop_flag=stop, liveness_endpoint=args.liveness,
                             connection=connection_from(configuration))

    asyncio.run(run())
    logging.getLogger("cdi.controller").info("stopped after %d API writes", ctx.kube.requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
