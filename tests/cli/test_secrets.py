"""``cdi import`` takes secrets from files and the environment, and never prints them.

Behaviours under test (a real ``cdi`` process against the misbehaving server and SeaweedFS):
- the basic-auth password from ``--password-file`` (and from stdin with ``-``) and from
  ``$CDI_USERNAME``/``$CDI_PASSWORD`` reaches the server (a netrc already worked for http,
  through requests, so it is not re-proved here);
- secret headers from ``--secret-header-file`` reach the server;
- S3 keys from ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY`` read a private bucket;
- neither a successful import (``-v --json``) nor a failing one (wrong password, 404) prints
  the password or a secret header's value, on stdout or stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import sha256_of
from tests.servers.badserver import BadServer
from tests.servers.images import Image
from tests.servers.seaweed import SeaweedS3

PASSWORD = "s3cret-pass"
SECRET = "secret-value"


def cdi(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CDI_", "AWS_", "NETRC"))}
    return subprocess.run([sys.executable, "-m", "cdi.cli", "-v", "import", *args, "--no-progress"],
                          env={**clean, **(env or {})}, input=stdin, capture_output=True, text=True, timeout=120)


def assert_quiet(proc: subprocess.CompletedProcess[str]) -> None:
    for secret in (PASSWORD, SECRET):
        assert secret not in proc.stdout and secret not in proc.stderr


@pytest.mark.parametrize("how", ["file", "stdin", "env"])
def test_password_off_the_command_line(how: str, bad_server: BadServer, images: dict[str, Image],
                                       tmp_path: Path) -> None:
    args = [bad_server.url("auth", "disk.raw.gz"), str(tmp_path / "d.img"), "--json"]
    env: dict[str, str] = {}
    stdin = None
    if how == "file":
        (tmp_path / "pw").write_text(PASSWORD + "\n")
        args += ["--username", "cdi", "--password-file", str(tmp_path / "pw")]
    elif how == "stdin":
        args += ["--username", "cdi", "--password-file", "-"]
        stdin = PASSWORD + "\n"
    else:
        env = {"CDI_USERNAME": "cdi", "CDI_PASSWORD": PASSWORD}
    proc = cdi(*args, env=env, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert sha256_of(tmp_path / "d.img") == images["disk.raw.gz"].raw_sha256
    assert_quiet(proc)


def test_secret_header_file(bad_server: BadServer, images: dict[str, Image], tmp_path: Path) -> None:
    (tmp_path / "headers").write_text(f"X-Secret: {SECRET}\n")
    proc = cdi(bad_server.url("headers", "disk.qcow2"), str(tmp_path / "d.img"), "--header", "X-Extra: extra-value",
               "--secret-header-file", str(tmp_path / "headers"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert sha256_of(tmp_path / "d.img") == images["disk.qcow2"].raw_sha256
    assert_quiet(proc)


@pytest.mark.parametrize("behaviour", ["auth", "status-404"])
def test_failures_do_not_echo_secrets(behaviour: str, bad_server: BadServer, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "-but-wrong\n")
    (tmp_path / "headers").write_text(f"X-Secret: {SECRET}\n")
    proc = cdi(bad_server.url(behaviour, "disk.raw"), str(tmp_path / "d.img"), "--username", "cdi",
               "--password-file", str(tmp_path / "pw"), "--secret-header-file", str(tmp_path / "headers"))
    assert proc.returncode == 2
    assert "import failed (permanent" in proc.stderr
    assert_quiet(proc)
    assert "but-wrong" not in proc.stderr


def test_s3_keys_from_the_aws_environment(seaweed_s3: SeaweedS3, images: dict[str, Image], tmp_path: Path) -> None:
    image = images["disk.raw.xz"]
    seaweed_s3.put("secrets/disk.raw.xz", image.path.read_bytes())
    env = {"AWS_ACCESS_KEY_ID": seaweed_s3.access_key, "AWS_SECRET_ACCESS_KEY": seaweed_s3.secret_key}
    url = f"s3://{seaweed_s3.bucket}/secrets/disk.raw.xz"
    proc = cdi(url, str(tmp_path / "d.img"), "--s3-endpoint", seaweed_s3.http_endpoint, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert sha256_of(tmp_path / "d.img") == image.raw_sha256
    assert seaweed_s3.secret_key not in proc.stdout + proc.stderr
    denied = cdi(url, str(tmp_path / "e.img"), "--s3-endpoint", seaweed_s3.http_endpoint)
    assert denied.returncode == 2 and "anonymous" in denied.stderr
