"""The ``cdi`` command as a user runs it: the installed console script, a real server.

Behaviours under test: ``cdi import`` prints a JSON result and writes the disk; exit codes
say permanent (2) from temporary (1) failures, with a message on stderr; ``cdi blank``; the
progress bar is drawn on stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import sha256_of
from tests.servers.images import Image
from tests.servers.nginx import Nginx

CDI = [str(Path(sys.executable).with_name("cdi"))]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CDI + list(args), capture_output=True, text=True, timeout=120)


def test_import_json(images: dict[str, Image], nginx: Nginx, tmp_path: Path) -> None:
    proc = run("import", f"{nginx.http}/disk.qcow2.gz", str(tmp_path), "--json",
               "--checksum", f"sha256:{images['disk.qcow2.gz'].file_sha256}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["format"] == "qcow2" and result["compression"] == ["gz"]
    assert sha256_of(tmp_path / "disk.img") == images["disk.qcow2.gz"].raw_sha256


def test_progress_bar_on_stderr(nginx: Nginx, tmp_path: Path) -> None:
    proc = run("import", f"{nginx.http}/disk.raw", str(tmp_path / "d.img"))
    assert proc.returncode == 0
    assert "transfer" in proc.stderr and "100%" in proc.stderr
    assert "imported raw" in proc.stdout


def test_permanent_failure_exit_code(nginx: Nginx, tmp_path: Path) -> None:
    proc = run("import", f"{nginx.http}/missing.qcow2", str(tmp_path / "d.img"))
    assert proc.returncode == 2
    assert "permanent" in proc.stderr and "404" in proc.stderr


def test_blank(tmp_path: Path) -> None:
    proc = run("blank", str(tmp_path / "b.img"), "--size", "10Mi")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b.img").stat().st_size == 10 << 20


def test_bad_size_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("blank", str(tmp_path / "b.img"), "--size", "ten")
    assert proc.returncode == 2 and "invalid quantity" in proc.stderr
