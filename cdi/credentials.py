"""Secrets for ``cdi import`` that stay off the command line.

Anything on a command line is readable by every user of the machine (``ps``,
``/proc/<pid>/cmdline``), so besides ``--password`` and ``--secret-header`` the command takes
them from places only the user can read. In order of precedence, for each value:

==================  ==========================================================================
password / secret   ``--password``, else ``--password-file FILE`` (first line; ``-`` reads
                    stdin), else ``$CDI_PASSWORD``
username            ``--username``, else ``$CDI_USERNAME``
secret headers      ``--secret-header`` and every ``Name: value`` line of
                    ``--secret-header-file FILE`` (as the importer pod mounts them)
S3 keys             when none of the above gave both: ``$AWS_ACCESS_KEY_ID`` and
                    ``$AWS_SECRET_ACCESS_KEY``, the usual AWS variables
http(s), registry   when none of the above gave any: the host's entry in ``~/.netrc``
                    (``$NETRC`` to point elsewhere)
==================  ==========================================================================

Only this module (at the command's entrypoint) reads the environment; the library receives the
values as arguments. The values never appear in logs, errors or the printed result.
"""

from __future__ import annotations

import netrc
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from importer.errors import InvalidSource
from importer.sources import source_kind


@dataclass
class Credentials:
    username: str | None = None
    password: str | None = None
    secret_headers: list[str] = field(default_factory=list)


def _first_line(path: str) -> str:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise InvalidSource(f"cannot read the password file {path}: {error.strerror}") from error
    return text.splitlines()[0] if text else ""


def _header_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise InvalidSource(f"cannot read the secret header file {path}: {error.strerror}") from error


def _from_netrc(url: str, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    host = urlsplit(url if "://" in url else f"docker://{url}").hostname
    path = env.get("NETRC") or str(Path(env.get("HOME", "~")).expanduser() / ".netrc")
    if not host or not Path(path).is_file():
        return None, None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError) as error:
        raise InvalidSource(f"cannot read {path}: {getattr(error, 'msg', error)}") from error
    if entry is None:
        return None, None
    login, _, password = entry
    return login or None, password or None


def resolve(source: str, kind: str | None, *, username: str | None, password: str | None,
            password_file: str | None, secret_headers: list[str], secret_header_file: Path | None,
            env: Mapping[str, str] | None = None) -> Credentials:
    """The credentials for ``source`` from the flags, files and environment (see above)."""
    env = os.environ if env is None else env
    if password is None and password_file is not None:
        password = _first_line(password_file)
    username = username if username is not None else env.get("CDI_USERNAME")
    password = password if password is not None else env.get("CDI_PASSWORD")
    headers = list(secret_headers) + (_header_lines(secret_header_file) if secret_header_file else [])
    kind = kind or source_kind(source)
    if kind == "s3" and (username is None or password is None):
        username = username or env.get("AWS_ACCESS_KEY_ID")
        password = password or env.get("AWS_SECRET_ACCESS_KEY")
    if kind in ("http", "registry") and username is None and password is None:
        username, password = _from_netrc(source, env)
    return Credentials(username, password, headers)
