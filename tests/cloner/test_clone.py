"""Host-assisted clones end to end: ``python -m cloner`` to ``python -m uploadproxy.server``.

Behaviours under test:
- a sparse 1 GiB Filesystem source arrives with the same sha256, no more allocated blocks than
  the source, and only its data on the wire (allocated zeros and holes are not sent); both
  processes exit 0 with ``Clone Complete``;
- all four Filesystem/Block directions on real loop devices; a Block target that held other
  data reads as the source afterwards (holes are zeroed on the device, never left stale);
- archive content: every file of the source tree but lost+found, unpacked by the importer's
  safe extractor; a symlink in the source is not followed into the target;
- compression on the wire only when it pays: compressible data travels in fewer bytes, random
  data in its own size plus frame headers;
- a source larger than the target is a permanent error (exit 2, TooSmall) before any data is
  sent, for a file and for a device target; nothing is left in the target volume;
- a client certificate with the wrong CN (401) or from an untrusted CA (TLS refused) is a
  permanent error, nothing written;
- the termination messages and exit codes the controller reads.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from tests.cloner.conftest import LoopFactory, ServerFactory
from tests.cloner.harness import MiB, ClonePki, cloner_env, run_cloner, sparse_image


def sha256(path: Path, length: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        left = length if length is not None else 1 << 62
        while left > 0 and (chunk := file.read(min(4 * MiB, left))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def test_sparse_1gib_file_to_file(clone_pki: ClonePki, target_server: ServerFactory, tmp_path: Path) -> None:
    source = tmp_path / "source" / "disk.img"
    data = sparse_image(source, 1 << 30, extents=400)
    target = tmp_path / "target" / "disk.img"
    target.parent.mkdir()
    server = target_server(target, size="1Gi")
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, source=source.parent), tmp_path)
    assert run.returncode == 0, run.log
    assert server.wait() == 0
    assert server.termination()["message"] == "Clone Complete"
    assert run.termination["message"] == "Clone Complete"
    assert sha256(target) == sha256(source)
    assert target.stat().st_size == source.stat().st_size
    assert target.stat().st_blocks <= source.stat().st_blocks
    assert run.termination["dataBytes"] == data  # the allocated zeros were not sent
    assert run.termination["bytesSent"] < data + 64 * 1024  # random data: headers only on top
    assert sorted(p.name for p in target.parent.iterdir()) == ["disk.img"]


def make_device_source(path: Path, size: int, loop_device: LoopFactory) -> Path:
    sparse_image(path, size, extents=120, seed=9)
    return loop_device(path)


@pytest.mark.parametrize("source_mode,target_mode", [
    ("Filesystem", "Block"), ("Block", "Filesystem"), ("Block", "Block"), ("Filesystem", "Filesystem")])
def test_four_directions(source_mode: str, target_mode: str, clone_pki: ClonePki, target_server: ServerFactory,
                         loop_device: LoopFactory, tmp_path: Path) -> None:
    size = 32 * MiB
    image = tmp_path / "source" / "disk.img"
    sparse_image(image, size, extents=120, seed=9)
    source = loop_device(image) if source_mode == "Block" else image.parent
    if target_mode == "Block":
        backing = tmp_path / "target.raw"
        backing.write_bytes(b"\xff" * size)  # stale data that must not survive in the holes
        target = loop_device(backing)
        server = target_server(target)
    else:
        target = tmp_path / "target" / "disk.img"
        target.parent.mkdir()
        server = target_server(target, size="32Mi")
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, mode=source_mode, source=source), tmp_path)
    assert run.returncode == 0, run.log
    assert server.wait() == 0 and server.termination()["message"] == "Clone Complete"
    assert sha256(target) == sha256(image)
    allocated = (backing if target_mode == "Block" else target).stat().st_blocks
    assert allocated <= image.stat().st_blocks  # holes stay holes (punched on the device)


def test_archive(clone_pki: ClonePki, target_server: ServerFactory, tmp_path: Path) -> None:
    rng = random.Random(4)
    source = tmp_path / "source"
    files = {"a.txt": b"hello clone\n" * 1000, "sub/blob.bin": rng.randbytes(5 * MiB),
             "sub/deeper/empty": b"", "zeros.bin": bytes(3 * MiB)}
    for name, content in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(content)
    (source / "lost+found").mkdir()
    (source / "lost+found" / "junk").write_bytes(b"x")
    (source / "escape").symlink_to("/etc/passwd")
    target = tmp_path / "target"
    target.mkdir()
    server = target_server(target / "disk.img", size="64Mi")
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, content="archive", source=source,
                                CLONE_SEGMENT_BYTES="2Mi"), tmp_path)
    assert run.returncode == 0, run.log
    assert server.wait() == 0 and server.termination()["message"] == "Clone Complete"
    for name, content in files.items():
        assert (target / name).read_bytes() == content, name
    assert not (target / "lost+found").exists()
    assert not (target / "escape").exists()  # links are not unpacked (the importer's rule)
    assert run.termination["bytesSent"] < sum(map(len, files.values()))  # zeros and text compress


def test_compression_only_when_it_pays(clone_pki: ClonePki, target_server: ServerFactory, tmp_path: Path) -> None:
    source = tmp_path / "source" / "disk.img"
    source.parent.mkdir()
    text = b"".join(b"line %d of a very compressible disk\n" % i for i in range(300_000))
    source.write_bytes(text + bytes(-len(text) % MiB))
    target = tmp_path / "target" / "disk.img"
    target.parent.mkdir()
    server = target_server(target, size=str(source.stat().st_size))
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, source=source.parent), tmp_path)
    assert run.returncode == 0, run.log
    assert server.wait() == 0
    assert sha256(target) == sha256(source)
    assert run.termination["bytesSent"] < len(text) / 4


def test_source_larger_than_target(clone_pki: ClonePki, target_server: ServerFactory, tmp_path: Path) -> None:
    source = tmp_path / "source" / "disk.img"
    sparse_image(source, 64 * MiB, extents=20)
    target = tmp_path / "target" / "disk.img"
    target.parent.mkdir()
    server = target_server(target, size="32Mi")
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, source=source.parent), tmp_path)
    assert run.returncode == 2, run.log
    assert run.termination["fatalError"] is True and run.termination["reason"] == "TooSmall"
    assert "larger than the reported available storage" in run.termination["message"]
    assert "sending kubevirt content" not in run.log  # refused before a byte of data was sent
    assert list(target.parent.iterdir()) == []
    assert server.process.poll() is None  # the server waits for a clone that fits


def test_source_larger_than_target_device(clone_pki: ClonePki, target_server: ServerFactory,
                                          loop_device: LoopFactory, tmp_path: Path) -> None:
    source = tmp_path / "source" / "disk.img"
    sparse_image(source, 64 * MiB, extents=20)
    backing = tmp_path / "small.raw"
    backing.write_bytes(b"\xee" * (16 * MiB))
    server = target_server(loop_device(backing))
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, source=source.parent), tmp_path)
    assert run.returncode == 2 and run.termination["reason"] == "TooSmall", run.log
    assert backing.read_bytes() == b"\xee" * (16 * MiB)  # refused before anything was written


def test_wrong_client_name(clone_pki: ClonePki, target_server: ServerFactory, tmp_path: Path) -> None:
    """Signed by the right CA for another name: the server answers 401, a permanent error."""
    source = tmp_path / "source" / "disk.img"
    sparse_image(source, 8 * MiB, extents=10)
    target = tmp_path / "target" / "disk.img"
    target.parent.mkdir()
    server = target_server(target, size="8Mi")
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, source=source.parent,
                                client=clone_pki.wrong_name), tmp_path)
    assert run.returncode == 2, run.log
    assert run.termination["reason"] == "Unauthorized" and run.termination["fatalError"] is True
    assert list(target.parent.iterdir()) == []


def test_untrusted_client_ca(clone_pki: ClonePki, target_server: ServerFactory, tmp_path: Path) -> None:
    """The right name from a CA the server does not trust: refused in TLS. With TLS 1.3 the
    cloner only sees the connection closed (no alert reaches it), which a restarting server
    looks like too, so it is retried (exit 1), never sent."""
    source = tmp_path / "source" / "disk.img"
    sparse_image(source, 8 * MiB, extents=10)
    target = tmp_path / "target" / "disk.img"
    target.parent.mkdir()
    server = target_server(target, size="8Mi")
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, source=source.parent, client=clone_pki.stranger,
                                CLONE_RETRY_ATTEMPTS="2"), tmp_path)
    assert run.returncode in (1, 2) and run.termination["message"].startswith("Unable to clone"), run.log
    assert "sending kubevirt content" not in run.log
    assert list(target.parent.iterdir()) == []
    assert "refused a request" not in server.log_path.read_text()  # it never got past TLS


def test_missing_disk_image_is_permanent(clone_pki: ClonePki, target_server: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    target = tmp_path / "target" / "disk.img"
    target.parent.mkdir()
    server = target_server(target, size="8Mi")
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, source=tmp_path / "source"), tmp_path)
    assert run.returncode == 2 and run.termination["reason"] == "InvalidSource"
    assert "disk.img" in run.termination["message"]


def test_server_gone_is_temporary(clone_pki: ClonePki, tmp_path: Path) -> None:
    source = tmp_path / "source" / "disk.img"
    sparse_image(source, 8 * MiB, extents=10)
    from tests.servers.ports import free_port
    url = f"https://127.0.0.1:{free_port()}/v1beta1/clone"
    run = run_cloner(cloner_env(clone_pki, url, tmp_path, source=source.parent, CLONE_RETRY_ATTEMPTS="1"), tmp_path)
    assert run.returncode == 1 and run.termination["fatalError"] is False, run.log
    assert os.path.exists(source)
