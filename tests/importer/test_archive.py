"""``archive`` content: a tar (plain or compressed) unpacked into a filesystem volume.

Behaviours under test: tar, tar.gz, tar.xz and tar.zst unpack with their files and
directories; a member escaping the volume is refused and nothing is left; links are skipped,
never followed; a non-tar source is refused with a clear message; a tar bomb larger than the
volume fails with ImageTooLarge and leaves nothing; the pod reads IMPORTER_CONTENTTYPE.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

import cdi
from tests.servers.badserver import BadServer
from tests.servers.images import COMPRESSIONS


def make_tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def serve(bad_server: BadServer, name: str, data: bytes) -> str:
    (bad_server.root / name).write_bytes(data)
    return bad_server.url("plain", name)


@pytest.mark.parametrize("compression", ["", "gz", "xz", "zst"])
def test_archive_unpacks(compression: str, bad_server: BadServer, tmp_path: Path) -> None:
    data = make_tar({"a.txt": b"hello", "dir/sub/b.bin": bytes(range(256)) * 100},
                    links={"dir/link": "/etc/passwd"})
    if compression:
        data = COMPRESSIONS[compression](data)
    url = serve(bad_server, f"archive.tar.{compression or 'plain'}", data)
    result = cdi.import_image(url, tmp_path, content_type="archive")
    assert (tmp_path / "a.txt").read_bytes() == b"hello"
    assert (tmp_path / "dir/sub/b.bin").read_bytes() == bytes(range(256)) * 100
    assert not (tmp_path / "dir/link").exists() and not (tmp_path / "dir/link").is_symlink()
    assert result.format == "tar" and result.route == "archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "dir"]


def test_archive_escape_refused(bad_server: BadServer, tmp_path: Path) -> None:
    url = serve(bad_server, "evil.tar", make_tar({"ok.txt": b"x", "../../evil.txt": b"pwned"}))
    (tmp_path / "vol").mkdir()
    with pytest.raises(cdi.UnsafeImage):
        cdi.import_image(url, tmp_path / "vol", content_type="archive")
    assert list((tmp_path / "vol").iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_archive_needs_a_tar(bad_server: BadServer, tmp_path: Path) -> None:
    url = serve(bad_server, "not-a-tar.bin", b"just some bytes" * 1000)
    with pytest.raises(cdi.InvalidImage) as caught:
        cdi.import_image(url, tmp_path, content_type="archive")
    assert "must be a tar archive" in str(caught.value)


def test_archive_bomb_bounded_by_volume(bad_server: BadServer, tmp_path: Path) -> None:
    bomb = COMPRESSIONS["xz"](make_tar({"zeros.bin": bytes(64 << 20)}))
    assert len(bomb) < 100_000
    url = serve(bad_server, "bomb.tar.xz", bomb)
    with pytest.raises(cdi.ImageTooLarge):
        cdi.import_image(url, tmp_path, content_type="archive", size=8 << 20)
    assert list(tmp_path.iterdir()) == []


def test_raw_decompression_bomb_bounded_by_target(bad_server: BadServer, tmp_path: Path) -> None:
    url = serve(bad_server, "bomb.raw.zst", COMPRESSIONS["zst"](b"\x01" * (64 << 20)))
    with pytest.raises(cdi.ImageTooLarge):
        cdi.import_image(url, tmp_path / "d.img", size=8 << 20)
    assert list(tmp_path.iterdir()) == []
