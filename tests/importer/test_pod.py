"""The importer pod entrypoint (``python -m importer``) run as a real process with CDI's env.

Behaviours under test:
- an http qcow2 import writes ``<data>/disk.img`` resized to the requested size less the
  filesystem overhead, and the JSON termination message says "Import Complete";
- the progress metric is served over HTTPS on the metrics port with the owner UID, and
  rises between 1 and 99 during a rate-limited import;
- a 404 exits 2 with CDI's message and ``fatalError: true``; a DNS failure exits 1 with
  ``fatalError: false``; a bad checksum exits 2 with reason ChecksumError and no disk.img;
- blank images, with and without preallocation, and a missing scratch dir is reported as
  ``scratchSpaceRequired`` (exit 0) for a compressed VMDK.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import urllib3

from tests.conftest import sha256_of
from tests.servers.images import Image
from tests.servers.badserver import BadServer
from tests.servers.nginx import Nginx
from tests.servers.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def pod_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "data").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMPORTER_")}
    env.update({
        "IMPORTER_DATA_DIR": str(tmp_path / "data"),
        "IMPORTER_BLOCK_DEVICE": str(tmp_path / "no-block-device"),
        "IMPORTER_SCRATCH_DIR": str(tmp_path / "no-scratch"),
        "IMPORTER_TERMINATION_MESSAGE_PATH": str(tmp_path / "termination-log"),
        "IMPORTER_METRICS_PORT": "0",
        "OWNER_UID": "0f1e2d3c-uid",
        "PYTHONPATH": str(ROOT),
    })
    env.update(extra)
    return env


def run_pod(env: dict[str, str], timeout: float = 120) -> tuple[int, dict[str, object]]:
    proc = subprocess.run([sys.executable, "-m", "importer"], env=env, cwd=ROOT, timeout=timeout,
                          capture_output=True, text=True)
    message = json.loads(Path(env["IMPORTER_TERMINATION_MESSAGE_PATH"]).read_text())
    return proc.returncode, message


def test_http_import_to_filesystem_volume(images: dict[str, Image], nginx: Nginx, tmp_path: Path) -> None:
    env = pod_env(tmp_path, IMPORTER_SOURCE="http", IMPORTER_ENDPOINT=f"{nginx.http}/disk.qcow2.xz",
                  IMPORTER_IMAGE_SIZE="100Mi", FILESYSTEM_OVERHEAD="0.055", IMPORTER_CONTENTTYPE="kubevirt")
    code, message = run_pod(env)
    assert code == 0, message
    assert message["message"] == "Import Complete"
    assert message["scratchSpaceRequired"] is False and message["preallocationApplied"] is False
    disk = tmp_path / "data" / "disk.img"
    usable = 94 << 20  # ceil(0.945 * 100 MiB) = 94.5 MiB, rounded down to MiB
    assert disk.stat().st_size == usable
    with open(disk, "rb") as f:
        import hashlib
        assert hashlib.sha256(f.read(images["disk.qcow2"].raw_size)).hexdigest() == images["disk.qcow2"].raw_sha256


def test_progress_metric_is_served(nginx: Nginx, tmp_path: Path) -> None:
    port = free_port()
    env = pod_env(tmp_path, IMPORTER_SOURCE="http", IMPORTER_ENDPOINT=f"{nginx.slow}/disk.raw.gz",
                  IMPORTER_METRICS_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "importer"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pattern = re.compile(r'kubevirt_cdi_import_progress_total\{ownerUID="0f1e2d3c-uid"\} (\d{1,3}\.?\d*)')
    seen: list[float] = []
    urllib3.disable_warnings()
    try:
        while proc.poll() is None:
            try:
                text = requests.get(f"https://127.0.0.1:{port}/metrics", verify=False, timeout=2).text
                match = pattern.search(text)
                if match:
                    seen.append(float(match.group(1)))
            except requests.RequestException:
                pass
            time.sleep(0.3)
    finally:
        proc.wait(60)
    assert proc.returncode == 0
    assert any(1 <= v <= 99 for v in seen), seen
    assert seen == sorted(seen)


def test_not_found_is_fatal(nginx: Nginx, tmp_path: Path) -> None:
    env = pod_env(tmp_path, IMPORTER_SOURCE="http", IMPORTER_ENDPOINT=f"{nginx.http}/missing.img")
    code, message = run_pod(env)
    assert code == 2
    assert message["fatalError"] is True and message["reason"] == "NotFound"
    assert message["message"] == ("Unable to connect to http data source: expected status code 200, "
                                  "got 404. Status: 404 Not Found")


def test_dns_failure_is_retryable(tmp_path: Path) -> None:
    env = pod_env(tmp_path, IMPORTER_SOURCE="http", IMPORTER_ENDPOINT="http://i-made-this-up.invalid/x.img")
    env["IMPORTER_RETRY_ATTEMPTS"] = "1"
    code, message = run_pod(env)
    assert code == 1
    assert message["fatalError"] is False
    assert str(message["message"]).startswith("Unable to connect to http data source")


def test_checksum_mismatch(nginx: Nginx, tmp_path: Path) -> None:
    env = pod_env(tmp_path, IMPORTER_SOURCE="http", IMPORTER_ENDPOINT=f"{nginx.http}/disk.raw.zst",
                  IMPORTER_CHECKSUM="sha1:" + "0" * 40)
    code, message = run_pod(env)
    assert code == 2 and message["reason"] == "ChecksumError"
    assert "checksum validation failed" in str(message["message"])
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("prealloc", ["false", "true"])
def test_blank(prealloc: str, tmp_path: Path) -> None:
    env = pod_env(tmp_path, IMPORTER_SOURCE="none", IMPORTER_IMAGE_SIZE="64Mi",
                  FILESYSTEM_OVERHEAD="0", PREALLOCATION=prealloc)
    code, message = run_pod(env)
    assert code == 0, message
    disk = tmp_path / "data" / "disk.img"
    assert disk.stat().st_size == 64 << 20
    assert message["preallocationApplied"] is (prealloc == "true")
    allocated = disk.stat().st_blocks * 512
    assert (allocated >= 64 << 20) if prealloc == "true" else allocated == 0
    assert sha256_of(disk) == "3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351"


def test_scratch_space_required(nginx: Nginx, tmp_path: Path) -> None:
    env = pod_env(tmp_path, IMPORTER_SOURCE="http", IMPORTER_ENDPOINT=f"{nginx.http}/disk-sized.vhd.gz")
    code, message = run_pod(env)
    assert code == 0 and message["scratchSpaceRequired"] is True, message
    assert list((tmp_path / "data").iterdir()) == []
    (tmp_path / "scratch").mkdir()
    env["IMPORTER_SCRATCH_DIR"] = str(tmp_path / "scratch")
    code, message = run_pod(env)
    assert code == 0 and message["message"] == "Import Complete" and message["route"] == "qemu-scratch"
    assert list((tmp_path / "scratch").iterdir()) == []


def test_archive_content(bad_server: BadServer, tmp_path: Path) -> None:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("inside/file.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    (bad_server.root / "pod-archive.tar.gz").write_bytes(buffer.getvalue())
    env = pod_env(tmp_path, IMPORTER_SOURCE="http", IMPORTER_CONTENTTYPE="archive",
                  IMPORTER_ENDPOINT=bad_server.url("plain", "pod-archive.tar.gz"))
    code, message = run_pod(env)
    assert code == 0, message
    assert (tmp_path / "data" / "inside" / "file.txt").read_bytes() == b"hello"
    assert not (tmp_path / "data" / "disk.img").exists()


def test_bad_content_type(tmp_path: Path) -> None:
    env = pod_env(tmp_path, IMPORTER_SOURCE="http", IMPORTER_CONTENTTYPE="iso",
                  IMPORTER_ENDPOINT="http://127.0.0.1:1/x")
    code, message = run_pod(env)
    assert code == 2 and "ContentType not one of: kubevirt, archive" in str(message["message"])
