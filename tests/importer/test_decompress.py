"""Streaming decompressors and magic detection.

Behaviours under test: every compression decodes concatenated members/frames/streams (as
the command-line tools do) whatever the chunking; a stream cut short or corrupted is
InvalidImage, never a silently shorter disk; output comes in bounded chunks even for a
bomb; detection finds every format in the magic table, including stacked ones.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import subprocess

import pytest
import zstandard

from importer.errors import InvalidImage
from importer.formats.decompress import decompress
from importer.formats.magic import detect
from importer.stream import CHUNK

DATA = os.urandom(300_000) + bytes(3_000_000) + os.urandom(1000)
TAIL = b"second member"


def zstd_cli(data: bytes, *flags: str) -> bytes:
    return subprocess.run(["zstd", "-q", "-c", *flags], input=data, capture_output=True, check=True).stdout


COMPRESSED = {
    "gz": gzip.compress(DATA) + gzip.compress(TAIL),
    "xz": lzma.compress(DATA) + lzma.compress(TAIL),
    "bz2": bz2.compress(DATA) + bz2.compress(TAIL),
    "zst": zstandard.ZstdCompressor(write_content_size=False).compress(DATA)
    + zstandard.ZstdCompressor(write_checksum=True).compress(TAIL),
    "zst-cli": zstd_cli(DATA, "--no-check") + zstd_cli(TAIL, "-19"),
}


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("name", COMPRESSED)
@pytest.mark.parametrize("size", [1 << 22, 65_537, 13])
def test_multi_member_any_chunking(name: str, size: int) -> None:
    kind = name.split("-")[0]
    data = COMPRESSED[name]
    chunks = split(data[:4000], size) + split(data[4000:], 1 << 20) if size < 100 else split(data, size)
    assert b"".join(decompress(kind, chunks)) == DATA + TAIL


@pytest.mark.parametrize("name", COMPRESSED)
@pytest.mark.parametrize("where", [0.01, 0.5, 0.999])
def test_truncated_is_invalid(name: str, where: float) -> None:
    kind = name.split("-")[0]
    data = COMPRESSED[name]
    cut = data[:int(len(data) * where)]
    with pytest.raises(InvalidImage):
        b"".join(decompress(kind, [cut]))


@pytest.mark.parametrize("kind", ["gz", "xz", "bz2", "zst"])
def test_corrupt_is_invalid(kind: str) -> None:
    # zstd can only see damage to stored (raw) blocks through the frame checksum, which the
    # zstd tool writes by default
    data = bytearray(zstd_cli(DATA) if kind == "zst" else COMPRESSED[kind])
    for i in range(100, 400):
        data[i] ^= 0x5A
    with pytest.raises(InvalidImage):
        b"".join(decompress(kind, [bytes(data)]))


@pytest.mark.parametrize("kind", ["gz", "xz", "bz2", "zst"])
def test_bomb_output_is_bounded_per_chunk(kind: str) -> None:
    bomb = {"gz": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress,
            "zst": zstandard.ZstdCompressor().compress}[kind](bytes(64 << 20))
    sizes = [len(chunk) for chunk in decompress(kind, [bomb])]
    assert sum(sizes) == 64 << 20 and max(sizes) <= CHUNK


@pytest.mark.parametrize("header,kind", [
    (b"\x1f\x8b\x08", "gz"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zst"),
    (b"BZh91AY&SY", "bz2"), (b"QFI\xfb\x00\x00\x00\x03", "qcow2"), (b"KDMV", "vmdk"),
    (b"vhdxfile", "vhdx"), (b"conectix", "vhd"), (bytes(0x40) + b"\x7f\x10\xda\xbe", "vdi"),
    (bytes(0x101) + b"ustar\x00", "tar"), (bytes(0x8001) + b"CD001", "iso"), (b"hello", "raw"),
    (b"BZh0", "raw"),
])
def test_magic(header: bytes, kind: str) -> None:
    assert detect(header) == kind


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
def test_gzip_through_isal_and_the_zlib_fallback(inflater: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """gzip is inflated by ISA-L (a dependency: it must be installed); the zlib fallback
    decodes the same members and refuses the same corruption."""
    import zlib

    from importer.formats import decompress as module

    assert module._inflate.__name__ == "isal.isal_zlib"
    if inflater == "zlib":
        monkeypatch.setattr(module, "_inflate", zlib)
    assert b"".join(decompress("gz", split(COMPRESSED["gz"], 65_537))) == DATA + TAIL
    corrupt = bytearray(COMPRESSED["gz"])
    corrupt[len(corrupt) // 3] ^= 0xFF
    with pytest.raises(InvalidImage):
        b"".join(decompress("gz", [bytes(corrupt)]))
