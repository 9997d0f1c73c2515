"""nginx as the upload proxy's data path: its config, made from our settings, and its supervision.

Relaying gigabytes through asyncio's TLS costs the Python proxy more than half of an upload's
speed; nginx costs a few percent (bench/upload.py). So with ``UPLOADPROXY_DATA_PATH=nginx``
nginx listens on the proxy's port and terminates TLS, and for each request on an upload path
asks this process (``auth_request`` to :mod:`uploadproxy.gate`, on loopback) what to do:
answer itself, or stream the body, unbuffered, to the upload server it names over mutual TLS
(the proxy's client certificate, the servers' CA, the server's name checked). Every other path
(``/healthz``, unknown paths) goes to this process's own HTTP server on loopback.

nginx runs unprivileged as our child with everything it writes in one directory, logs to our
stderr, and is watched: when it exits, :func:`supervise` raises, and the proxy exits so the
kubelet restarts the pod. It runs in its own process group, which is killed when it stops (its
workers outlive a master killed outright), and with ``PR_SET_PDEATHSIG`` so it dies with us.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

from . import gate
from .gate import CORS_HEADERS, GATE_PATH, METHOD_HEADER, URI_HEADER
from .paths import CONTENT_TYPE_HEADER, PROXY_PATHS, RESUMABLE
from .proxy import UploadProxy
from .relay import REQUEST_HEADERS
from .settings import ProxySettings

log = logging.getLogger(__name__)

DAY = "24h"
"""CDI's proxy gives an upload 24 hours."""
ANSWER_STATUSES = (200, 204, 400, 401, 403, 404, 405, 409, 413, 500, 503)
SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")
TEMP_DIRS = {"client_body": "body", "proxy": "proxy", "fastcgi": "fastcgi", "uwsgi": "uwsgi", "scgi": "scgi"}
"""nginx's temp path directives and their directories (the compiled-in ones are not writable)."""


class NginxExited(Exception):
    """nginx is gone: the proxy cannot relay uploads any more."""


def _variable(header: str) -> str:
    return "$" + header.lower().replace("-", "_")


def _cors_headers() -> str:
    """``add_header`` for the CORS headers the gate computed (an empty value adds nothing)."""
    return " ".join(f"add_header {name} $cdi_{name.lower().replace('-', '_')} always;" for name in CORS_HEADERS)


def _auth_variables() -> str:
    names = ["Status", "Body", "Upstream", "Ssl-Name", "Content-Type", *CORS_HEADERS]
    return "\n".join(f"      auth_request_set $cdi_{n.lower().replace('-', '_')} "
                     f"{_variable('upstream_http_x_cdi_' + n)};" for n in names)


def _upstream_headers() -> str:
    """The request headers the Python relay passes on (Content-Length is nginx's own)."""
    lines = [f"proxy_set_header {name} {_variable('http_' + name)};"
             for name in REQUEST_HEADERS if name != "Content-Length"]
    lines.append(f"proxy_set_header {CONTENT_TYPE_HEADER} $cdi_content_type;")
    return "\n".join("      " + line for line in dict.fromkeys(lines))


def _listen(settings: ProxySettings) -> str:
    host = f"[{settings.address}]" if ":" in settings.address else settings.address
    tls = settings.tls_cert is not None and settings.tls_key is not None
    return f"listen {host}:{settings.port}{' ssl' if tls else ''};" + (
        f" ssl_certificate {settings.tls_cert}; ssl_certificate_key {settings.tls_key};"
        " ssl_protocols TLSv1.2 TLSv1.3;" if tls else "")


def _upstream_tls(settings: ProxySettings) -> str:
    client = (f"proxy_ssl_certificate {settings.client_cert}; proxy_ssl_certificate_key {settings.client_key};"
              if settings.client_cert and settings.client_key else "")
    return (f"{client} proxy_ssl_trusted_certificate {settings.server_ca or SYSTEM_CAS}; proxy_ssl_verify on;"
            " proxy_ssl_verify_depth 4; proxy_ssl_name $cdi_ssl_name; proxy_ssl_server_name on;"
            " proxy_ssl_protocols TLSv1.2 TLSv1.3;")


def _answers() -> str:
    """nginx returns the gate's own answers: ``return`` takes a constant status, so one per status."""
    lines = [f"if ($cdi_status = {status}) {{ return {status} $cdi_body; }}" for status in ANSWER_STATUSES]
    return "\n".join("      " + line for line in [*lines, "return 500 $cdi_body;"])


def config(settings: ProxySettings, gate_port: int, directory: Path, workers: int) -> str:
    """The whole nginx.conf for these settings, with the gate on ``127.0.0.1:gate_port``."""
    upload_paths = "|".join(p.replace(".", r"\.") for p in (*PROXY_PATHS, RESUMABLE))
    gate = f"http://127.0.0.1:{gate_port}"
    temp = " ".join(f"{kind}_temp_path {directory / name};" for kind, name in TEMP_DIRS.items())
    return f"""# made by uploadproxy.nginx from the proxy's settings; rewritten at every start
daemon off; master_process on; worker_processes {workers}; pid {directory / 'nginx.pid'};
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
  access_log off; server_tokens off; default_type text/plain; {temp}
  server {{
    {_listen(settings)}
    client_max_body_size 0; client_body_timeout {DAY}; send_timeout {DAY}; keepalive_timeout 75s;
    proxy_http_version 1.1; proxy_request_buffering off; proxy_buffering off; proxy_next_upstream off;
    proxy_connect_timeout 10s; proxy_read_timeout {DAY}; proxy_send_timeout {DAY};

    location ~ ^(?:{upload_paths})$ {{
      auth_request {GATE_PATH};
{_auth_variables()}
      error_page 403 = @answer;
      error_page 502 504 = @unreachable;
      proxy_pass https://$cdi_upstream;
      proxy_pass_request_headers off;
{_upstream_headers()}
      {_upstream_tls(settings)}
      {_cors_headers()}
    }}
    location = {GATE_PATH} {{
      internal;
      proxy_pass {gate}{GATE_PATH}; proxy_http_version 1.1; proxy_buffering on; proxy_buffer_size 16k; proxy_buffers 4 16k;
      proxy_pass_request_body off; proxy_set_header Content-Length ""; proxy_set_header Transfer-Encoding "";
      proxy_set_header {METHOD_HEADER} $request_method; proxy_set_header {URI_HEADER} $request_uri;
      proxy_read_timeout 60s;
    }}
    location @answer {{
      {_cors_headers()}
{_answers()}
    }}
    location @unreachable {{
      {_cors_headers()}
      return 500 "error proxying the upload: the upload server did not answer";
    }}
    location / {{
      proxy_pass {gate}; proxy_set_header Host $host;
    }}
  }}
}}
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the proxy process dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def workers() -> int:
    """One worker per usable core, at most four: each relays many uploads."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


class Nginx:
    """nginx running with :func:`config` in ``directory``."""

    def __init__(self, settings: ProxySettings, gate_port: int) -> None:
        binary = shutil.which(settings.nginx)
        if binary is None:
            raise FileNotFoundError(f"UPLOADPROXY_DATA_PATH=nginx, but {settings.nginx!r} is not installed")
        self.binary = binary
        self.settings = settings
        self.directory = settings.nginx_dir or Path(tempfile.mkdtemp(prefix="cdi-uploadproxy-nginx-"))
        self.gate_port = gate_port
        self.process: asyncio.subprocess.Process | None = None

    def write_config(self) -> Path:
        for name in TEMP_DIRS.values():
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        path = self.directory / "nginx.conf"
        path.write_text(config(self.settings, self.gate_port, self.directory, workers()))
        return path

    async def start(self) -> None:
        conf = self.write_config()
        self.process = await asyncio.create_subprocess_exec(
            self.binary, "-e", "stderr", "-p", str(self.directory), "-c", str(conf),
            stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent, start_new_session=True)
        log.info("nginx (pid %d) relays uploads on %s:%d; decisions on 127.0.0.1:%d",
                 self.process.pid, self.settings.address, self.settings.port, self.gate_port)

    async def supervise(self) -> None:
        """Return never: raise NginxExited when nginx exits."""
        assert self.process is not None
        status = await self.process.wait()
        raise NginxExited(f"nginx exited with status {status}")

    async def stop(self) -> None:
        """Stop nginx, and its workers with it: a master killed outright leaves them serving."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await self.process.wait()


async def serve(proxy: UploadProxy, settings: ProxySettings) -> None:
    """The proxy with nginx as its data path, until nginx exits (NginxExited) or we are cancelled."""
    proxy.extensions.append(lambda app: gate.add_route(app, proxy))
    port = await proxy.start("127.0.0.1", 0, None)
    nginx = Nginx(settings, port)
    try:
        await nginx.start()
        await nginx.supervise()
    finally:
        await nginx.stop()
        await proxy.stop()
