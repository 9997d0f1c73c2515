"""Nothing that was there before an import is lost, whatever goes wrong.

Behaviours under test (real imports from the misbehaving server on loopback, through the
library and the ``cdi`` command):
- a failed import (404, a truncated image, a stale partial from a killed run beside it) leaves
  the previous ``disk.img`` byte-identical, same inode, and no partial file;
- while a new image is being written, the old ``disk.img`` is still there, unchanged; only the
  finished image replaces it (a rename: a new inode with the new content);
- a character device, a FIFO or a socket where ``disk.img`` should be is refused with a
  clear permanent error before any byte moves, and is still there afterwards;
- a directory named ``disk.img`` is a clean error (exit 2, no traceback);
- importing a volume into itself (the source is the target's ``disk.img``) is refused;
- an empty source (0 bytes, served or local, or empty inside gzip) is an error, not a blank disk.
"""

from __future__ import annotations

import gzip
import os
import socket
import stat
from pathlib import Path

import pytest

import cdi
from cdi.cli import main as cli
from importer.progress import ProgressEvent
from tests.conftest import sha256_of
from tests.servers.badserver import BadServer
from tests.servers.images import Image

OLD = b"the previous disk, which must survive\n" * 4096


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    directory = tmp_path / "vol"
    directory.mkdir()
    (directory / "disk.img").write_bytes(OLD)
    return directory


def assert_untouched(volume: Path, inode: int) -> None:
    disk = volume / "disk.img"
    assert disk.read_bytes() == OLD and disk.stat().st_ino == inode
    assert sorted(p.name for p in volume.iterdir()) == ["disk.img"]


def test_failed_import_keeps_the_previous_disk(volume: Path, bad_server: BadServer,
                                               fast_retry: cdi.RetryPolicy) -> None:
    inode = (volume / "disk.img").stat().st_ino
    with pytest.raises(cdi.SourceNotFound):
        cdi.import_image(bad_server.url("plain", "no-such.img"), volume, retry=fast_retry)
    assert_untouched(volume, inode)


def test_stale_partial_is_replaced_and_old_disk_kept(volume: Path, bad_server: BadServer,
                                                     images: dict[str, Image], tmp_path: Path) -> None:
    """A killed run left a partial; a new import that fails midway (the qcow2 is cut short)
    removes both partials and keeps the disk."""
    (volume / ".disk.img.partial").write_bytes(b"left by a killed run")
    inode = (volume / "disk.img").stat().st_ino
    truncated = tmp_path / "cut.qcow2"
    truncated.write_bytes(images["disk.qcow2"].path.read_bytes()[:400 * 1024])
    with pytest.raises(cdi.InvalidImage):
        cdi.import_image(str(truncated), volume)
    assert_untouched(volume, inode)


def test_old_disk_stays_until_the_new_one_is_complete(volume: Path, bad_server: BadServer,
                                                      images: dict[str, Image]) -> None:
    (volume / ".disk.img.partial").write_bytes(b"left by a killed run")
    inode = (volume / "disk.img").stat().st_ino
    seen_during_transfer: list[bytes] = []

    def look(event: ProgressEvent) -> None:
        if event.phase == "transfer" and event.done and not seen_during_transfer:
            seen_during_transfer.append((volume / "disk.img").read_bytes())

    cdi.import_image(bad_server.url("plain", "disk.raw.gz"), volume, progress=look)
    assert seen_during_transfer == [OLD]
    assert sha256_of(volume / "disk.img") == images["disk.raw.gz"].raw_sha256
    assert (volume / "disk.img").stat().st_ino != inode
    assert sorted(p.name for p in volume.iterdir()) == ["disk.img"]


def _make_special(path: Path, kind: str) -> socket.socket | None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a /dev/null of our own
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return sock
    return None


@pytest.mark.parametrize("kind,what", [("fifo", "a FIFO"), ("chardev", "a character device"),
                                       ("socket", "a socket")])
@pytest.mark.parametrize("named", [True, False], ids=["target-path", "disk.img-in-dir"])
def test_special_files_are_refused_and_kept(kind: str, what: str, named: bool, tmp_path: Path,
                                            bad_server: BadServer, capsys: pytest.CaptureFixture[str]) -> None:
    special = tmp_path / "disk.img"
    held = _make_special(special, kind)
    try:
        target = special if named else tmp_path
        code = cli(["import", bad_server.url("plain", "disk.raw"), str(target), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2
        assert f"refusing to import into {special}: it is {what}" in err and "Traceback" not in err
        mode = special.lstat().st_mode
        assert {"fifo": stat.S_ISFIFO, "chardev": stat.S_ISCHR, "socket": stat.S_ISSOCK}[kind](mode)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.img"]
    finally:
        if held is not None:
            held.close()


def test_disk_img_directory_is_a_clean_error(tmp_path: Path, bad_server: BadServer,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "disk.img").mkdir()
    (tmp_path / "disk.img" / "keep").write_text("mine")
    code = cli(["import", bad_server.url("plain", "disk.raw"), str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"refusing to import into {tmp_path / 'disk.img'}: it is a directory" in err
    assert "Traceback" not in err
    assert (tmp_path / "disk.img" / "keep").read_text() == "mine"


@pytest.mark.parametrize("how", ["file", "directory"])
def test_import_into_itself_is_refused(volume: Path, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    inode = (volume / "disk.img").stat().st_ino
    target = volume / "disk.img" if how == "file" else volume
    code = cli(["import", str(volume / "disk.img"), str(target), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"refusing to import {volume / 'disk.img'} into itself" in err
    assert_untouched(volume, inode)


def test_empty_http_source_is_an_error(volume: Path, bad_server: BadServer) -> None:
    inode = (volume / "disk.img").stat().st_ino
    with pytest.raises(cdi.InvalidImage, match=r"is empty \(0 bytes\)"):
        cdi.import_image(bad_server.url("empty", "disk.raw"), volume)
    assert_untouched(volume, inode)


@pytest.mark.parametrize("content", [b"", gzip.compress(b"")], ids=["empty", "empty-gzip"])
def test_empty_local_source_is_an_error(content: bytes, tmp_path: Path) -> None:
    source = tmp_path / "empty.img"
    source.write_bytes(content)
    with pytest.raises(cdi.InvalidImage, match="is empty"):
        cdi.import_image(str(source), tmp_path / "out", size=1 << 20)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
