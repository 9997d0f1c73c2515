"""A real nginx (Debian's) serving a directory on loopback, as CDI's test file host does:
plain http, https with the test CA, basic auth (http and https), and a rate-limited port
for progress tests. Runs as a plain process with its own config and prefix."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .pki import TestCA
from .ports import free_port, wait_listening

USER, PASSWORD = "cdi", "s3cret-pass"


@dataclass
class Nginx:
    http: str
    https: str
    auth: str
    https_auth: str
    slow: str
    root: Path
    process: subprocess.Popen[bytes]
    prefix: Path

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_nginx(root: Path, prefix: Path, ca: TestCA, rate: str = "1m", host: str = "127.0.0.1") -> Nginx:
    """``host`` is the address to listen on and to put in URLs: pods reach the host at the node IP."""
    if not shutil.which("nginx"):
        raise RuntimeError("nginx is not installed: run scripts/setup")
    prefix.mkdir(parents=True, exist_ok=True)
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(exist_ok=True)
    server = ca.issue(prefix, "nginx", ips=tuple(dict.fromkeys(("127.0.0.1", host))))
    hashed = subprocess.run(["openssl", "passwd", "-apr1", PASSWORD], check=True,
                            capture_output=True, text=True).stdout.strip()
    (prefix / "htpasswd").write_text(f"{USER}:{hashed}\n")
    ports = {name: free_port() for name in ("http", "https", "auth", "https_auth", "slow")}
    tls = f"ssl_certificate {server.cert}; ssl_certificate_key {server.key};"
    auth = f'auth_basic "cdi"; auth_basic_user_file {prefix / "htpasswd"};'
    conf = f"""
daemon off;
master_process on;
worker_processes 2;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log {prefix}/logs/access.log;
  client_body_temp_path {prefix}/tmp/body; proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fcgi; uwsgi_temp_path {prefix}/tmp/uwsgi; scgi_temp_path {prefix}/tmp/scgi;
  sendfile on; default_type application/octet-stream;
  server {{ listen {host}:{ports['http']}; root {root}; }}
  server {{ listen {host}:{ports['https']} ssl; {tls} root {root}; }}
  server {{ listen {host}:{ports['auth']}; {auth} root {root}; }}
  server {{ listen {host}:{ports['https_auth']} ssl; {tls} {auth} root {root}; }}
  server {{ listen {host}:{ports['slow']}; limit_rate {rate}; root {root}; }}
}}
"""
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    process = subprocess.Popen(["nginx", "-c", str(conf_path), "-p", str(prefix)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for port in ports.values():
        wait_listening(port, host=host)
    return Nginx(http=f"http://{host}:{ports['http']}", https=f"https://{host}:{ports['https']}",
                 auth=f"http://{host}:{ports['auth']}", https_auth=f"https://{host}:{ports['https_auth']}",
                 slow=f"http://{host}:{ports['slow']}", root=root, process=process, prefix=prefix)
