"""The streaming qcow2 converter against the real qemu-img: every image variant must convert to
exactly the bytes of ``qemu-img convert -O raw``, from a pure stream and with random access,
and every unsafe or broken image must be refused with a clean error."""

from __future__ import annotations

import json
import random
import signal
import struct
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from importer.errors import CdiImportError, ImageTooLarge, InvalidImage, UnsafeImage
from importer.formats.qcow2 import (
    HEADER_PROBE_BYTES,
    L2_COMPRESSED,
    MAX_L1_BYTES,
    OFFSET_MASK,
    Qcow2Header,
    convert_qcow2,
    parse_header,
)
from importer.stream import ChunkReader
from importer.target import DiskTarget, TargetSpec

from .fixtures_qcow2 import (
    HAVE_QEMU,
    QEMU_IMG,
    VARIANTS,
    MiB,
    convert,
    file_chunks,
    make_source,
    make_variant,
    patch,
    pread_of,
    qemu_raw_sha,
    qcow2_from,
    read_field,
    run,
    sha256_file,
)

pytestmark = [pytest.mark.timeout(120)]
assert HAVE_QEMU, "needs qemu-img and qemu-io: run scripts/setup (qemu-utils)"

MODES = {
    "stream-1MiB": (MiB, False),
    "stream-100003": (100003, False),
    "read_at": (MiB, True),
}
SPILL_EXPECTED = {"resized", "snapshot", "zlib-cs512"}
"""Variants whose stream carries data before the table mapping it (the others need none)."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qcow2")


@pytest.fixture(scope="module")
def source(workdir: Path) -> Path:
    return make_source(workdir / "source.raw")


@pytest.fixture(scope="module")
def variant(workdir: Path, source: Path) -> Callable[[str], tuple[Path, str]]:
    """Build each variant once per module, with the hash of qemu-img's raw conversion."""
    cache: dict[str, tuple[Path, str]] = {}

    def get(name: str) -> tuple[Path, str]:
        if name not in cache:
            image = make_variant(name, source, workdir / f"{name}.qcow2")
            cache[name] = (image, qemu_raw_sha(image, workdir))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def small(workdir: Path) -> Path:
    """A small valid image (4 MiB + 1536 bytes, 64 KiB clusters) to hand-edit."""
    raw = workdir / "small.raw"
    with open(raw, "wb") as f:
        f.truncate(4 * MiB + 1536)
        rng = random.Random(5)
        for offset in (0, 300_000, 2 * MiB + 7, 4 * MiB + 1000):
            f.seek(offset)
            f.write(rng.randbytes(100_000 if offset < 4 * MiB else 536))
    return qcow2_from(raw, workdir / "small.qcow2", "cluster_size=65536")


def info(image: Path) -> dict[str, Any]:
    facts: dict[str, Any] = json.loads(run(QEMU_IMG, "info", "--output=json", image))
    return facts


def copy_of(image: Path, tmp_path: Path) -> Path:
    out = tmp_path / image.name
    out.write_bytes(image.read_bytes())
    return out


def header_of(image: Path) -> Qcow2Header:
    with open(image, "rb") as f:
        return parse_header(f.read(HEADER_PROBE_BYTES))


def l1_entries(image: Path) -> list[int]:
    h = header_of(image)
    with open(image, "rb") as f:
        f.seek(h.l1_table_offset)
        return list(struct.unpack(f">{h.l1_size}Q", f.read(8 * h.l1_size)))


def first_l2_offset(image: Path) -> int:
    return next(entry & OFFSET_MASK for entry in l1_entries(image) if entry & OFFSET_MASK)


# -- equivalence with qemu-img -------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", VARIANTS)
def test_matches_qemu_img(variant: Callable[[str], tuple[Path, str]], tmp_path: Path,
                          name: str, mode: str) -> None:
    image, expected = variant(name)
    chunk, random_access = MODES[mode]
    spill = tmp_path / "spill"
    spill.mkdir()
    out = tmp_path / "out.img"
    result, _ = convert(image, out, chunk=chunk, random_access=random_access, spill_dir=spill)
    assert sha256_file(out) == expected
    assert result.virtual_size == info(image)["virtual-size"] == out.stat().st_size
    assert list(spill.iterdir()) == [], "the spill file must not outlive the conversion"
    if random_access or name not in SPILL_EXPECTED:
        assert result.spilled_bytes == 0
    else:
        assert result.spilled_bytes > 0
    if name.startswith(("zlib", "zstd")):
        assert result.compressed_clusters > 0
    else:
        assert result.compressed_clusters == 0


def test_output_is_sparse(variant: Callable[[str], tuple[Path, str]], tmp_path: Path) -> None:
    """Holes, zero clusters and preallocated-but-empty clusters are not written."""
    for name in ("cs64k", "prealloc-metadata"):
        out = tmp_path / f"{name}.img"
        convert(variant(name)[0], out)
        assert out.stat().st_blocks * 512 < 20 * MiB < out.stat().st_size


def test_variants_have_the_features_they_claim(
        variant: Callable[[str], tuple[Path, str]]) -> None:
    """Guard the fixtures: each variant really has what it is named after."""
    assert header_of(variant("compat010")[0]).version == 2
    assert header_of(variant("zstd")[0]).compression_type == 1
    assert header_of(variant("cs2M")[0]).cluster_size == 2 * MiB
    assert info(variant("snapshot")[0])["snapshots"]
    assert header_of(variant("snapshot")[0]).nb_snapshots == 1
    resized = variant("resized")[0]
    assert header_of(resized).l1_table_offset > 4 * MiB  # the L1 table moved to the end
    mapping = json.loads(run(QEMU_IMG, "map", "--output=json", variant("zero-clusters")[0]))
    assert any(m["zero"] and m["present"] for m in mapping)


@pytest.mark.parametrize("name", ["cs512", "cs64k", "compat010", "zstd", "zero-clusters"])
def test_parse_header_fields(variant: Callable[[str], tuple[Path, str]], name: str) -> None:
    image = variant(name)[0]
    h = header_of(image)
    facts = info(image)
    assert h.virtual_size == facts["virtual-size"]
    assert h.cluster_size == facts["cluster-size"]
    assert h.version == (2 if facts["format-specific"]["data"]["compat"] == "0.10" else 3)
    assert h.l1_size >= h.l1_needed > 0
    assert h.backing_file_offset == 0 and h.crypt_method == 0 and not h.dirty


def test_dirty_image_converts(small: Path, tmp_path: Path, workdir: Path) -> None:
    """The dirty bit only says refcounts may be stale; reading does not use them."""
    expected = qemu_raw_sha(small, workdir)
    image = copy_of(small, tmp_path)
    patch(image, 72, ">Q", 1)
    assert header_of(image).dirty
    for random_access in (False, True):
        convert(image, tmp_path / "out.img", random_access=random_access)
        assert sha256_file(tmp_path / "out.img") == expected


def test_compressed_cluster_cut_by_end_of_file(tmp_path: Path) -> None:
    """The last compressed cluster's final sector may run past the end of the file; qemu
    reads zeros there and so must we."""
    raw = tmp_path / "tail.raw"
    raw.write_bytes(random.Random(3).randbytes(200_000) + b"compress me " * 70_000)
    image = qcow2_from(raw, tmp_path / "tail.qcow2", compress=True)
    data = image.read_bytes()
    tail = len(data) - len(data.rstrip(b"\0"))
    assert tail > 0, "qemu pads the file to a sector"
    image.write_bytes(data[:len(data) - tail])
    expected = qemu_raw_sha(image, tmp_path)
    for random_access in (False, True):
        result, _ = convert(image, tmp_path / "out.img", random_access=random_access)
        assert result.compressed_clusters > 0
        assert sha256_file(tmp_path / "out.img") == expected


# -- refusals made with qemu-img --------------------------------------------------------------


def expect(error: type[CdiImportError], match: str, image: Path, tmp_path: Path,
           **kwargs: object) -> None:
    """The image is refused in both modes, and no target file is left behind."""
    out = tmp_path / "out.img"
    for random_access in (False, True):
        with pytest.raises(error, match=match):
            convert(image, out, random_access=random_access, **kwargs)  # type: ignore[arg-type]
        assert not out.exists() and not (tmp_path / ".out.img.partial").exists()


def test_refuses_backing_file(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    run(QEMU_IMG, "create", "-q", "-f", "qcow2", base, "4M")
    top = tmp_path / "top.qcow2"
    run(QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    expect(UnsafeImage, "backing file", top, tmp_path)


def test_refuses_external_data_file(tmp_path: Path) -> None:
    image = tmp_path / "img.qcow2"
    run(QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
        f"data_file={tmp_path / 'data.raw'}", image, "4M")
    expect(UnsafeImage, "external data file", image, tmp_path)


def test_refuses_luks_encryption(tmp_path: Path) -> None:
    image = tmp_path / "img.qcow2"
    for _ in range(10):  # qemu's PBKDF benchmark fails now and then (a 0 ms CPU sample)
        try:
            run(QEMU_IMG, "create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=abc",
                "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
                image, "4M")
            break
        except subprocess.CalledProcessError as error:
            failure = error.stderr
    else:  # qemu built without crypto, or a very busy machine: say so, do not pass quietly
        pytest.fail(f"qemu-img cannot make LUKS images here: {failure}")
    expect(UnsafeImage, "encrypted", image, tmp_path)


def test_refuses_extended_l2(tmp_path: Path) -> None:
    image = tmp_path / "img.qcow2"
    run(QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", image, "4M")
    expect(InvalidImage, "extended L2", image, tmp_path)


def test_too_small_target_fails_before_any_write(small: Path, tmp_path: Path) -> None:
    target = DiskTarget(TargetSpec(path=tmp_path / "out.img", size=2 * MiB))
    with target:
        with pytest.raises(ImageTooLarge, match="larger than the reported available"):
            convert_qcow2(ChunkReader(file_chunks(small, MiB)), target)
        assert target.bytes_written == 0 and target.highest_written == 0
    assert not (tmp_path / "out.img").exists()


# -- hand-edited headers and tables -------------------------------------------------------------

HEADER_EDITS = {
    # name: (offset, format, value, error, message)
    "bad magic": (0, ">I", 0x514649FA, InvalidImage, "not a qcow2"),
    "version 1": (4, ">I", 1, InvalidImage, "version"),
    "version 4": (4, ">I", 4, InvalidImage, "version"),
    "backing offset": (8, ">Q", 0x200, UnsafeImage, "backing file"),
    "cluster_bits 8": (20, ">I", 8, InvalidImage, "cluster"),
    "cluster_bits 22": (20, ">I", 22, InvalidImage, "cluster"),
    "AES": (32, ">I", 1, UnsafeImage, "encrypted"),
    "huge L1 size": (36, ">I", 0x0100_0000, InvalidImage, "L1 size too big"),
    "largest L1 size": (36, ">I", 0xFFFF_FFFF, InvalidImage, "L1 size too big"),
    "L1 too small": (36, ">I", 0, InvalidImage, "too small"),
    "L1 beyond EOF": (40, ">Q", 1 << 40, InvalidImage, "truncated"),
    "L1 unaligned": (40, ">Q", 0x30200, InvalidImage, "not aligned"),
    "L1 in header": (40, ">Q", 0, InvalidImage, "overlaps the image header"),
    "unknown incompatible bit": (72, ">Q", 1 << 5, InvalidImage, "incompatible features: bit 5"),
    "unknown high bit": (72, ">Q", 1 << 63, InvalidImage, "incompatible features"),
    "corrupt bit": (72, ">Q", 2, InvalidImage, "corrupt"),
    "data file bit": (72, ">Q", 4, UnsafeImage, "external data file"),
    "compression bit without type": (72, ">Q", 8, InvalidImage, "compression type"),
    "extended L2 bit": (72, ">Q", 16, InvalidImage, "extended L2"),
    "raw data file autoclear bit": (88, ">Q", 2, UnsafeImage, "raw external data file"),
    "no refcount table": (56, ">I", 0, InvalidImage, "reference count table"),
    "huge refcount table": (56, ">I", 0x10000, InvalidImage, "reference count table too large"),
    "refcount table unaligned": (48, ">Q", 0x10008, InvalidImage, "reference count table"),
    "refcount order 7": (96, ">I", 7, InvalidImage, "refcount order"),
    "header length 100": (100, ">I", 100, InvalidImage, "header length"),
    "header length beyond cluster": (100, ">I", 1 << 17, InvalidImage, "header length"),
    "unknown compression type": (104, ">B", 7, InvalidImage, "compression type"),
    "huge virtual size": (24, ">Q", 1 << 62, InvalidImage, "too small"),
}


@pytest.mark.parametrize("name", list(HEADER_EDITS))
def test_refuses_hand_edited_header(small: Path, tmp_path: Path, name: str) -> None:
    offset, fmt, value, error, message = HEADER_EDITS[name]
    image = copy_of(small, tmp_path)
    assert header_of(image).l1_table_offset == 0x30000  # what the edits above assume
    patch(image, offset, fmt, value)
    expect(error, message, image, tmp_path)


def test_refuses_unaligned_snapshot_table(small: Path, tmp_path: Path) -> None:
    image = copy_of(small, tmp_path)
    patch(image, 60, ">I", 1)
    patch(image, 64, ">Q", 0x10008)
    expect(InvalidImage, "snapshot table offset", image, tmp_path)


def test_l1_size_limit_is_qemus() -> None:
    assert MAX_L1_BYTES == 32 * MiB


def edit_l2(image: Path, index: int, value: int) -> None:
    patch(image, first_l2_offset(image) + 8 * index, ">Q", value)


def test_refuses_l2_table_beyond_eof(small: Path, tmp_path: Path) -> None:
    image = copy_of(small, tmp_path)
    l1 = header_of(image).l1_table_offset
    patch(image, l1, ">Q", (1 << 63) | (1 << 40))
    expect(InvalidImage, "L2 table at 0x10000000000 lies beyond the end", image, tmp_path)


def test_refuses_unaligned_l2_table(small: Path, tmp_path: Path) -> None:
    image = copy_of(small, tmp_path)
    patch(image, header_of(image).l1_table_offset, ">Q", first_l2_offset(image) + 0x200)
    expect(InvalidImage, "L2 table offset .* not aligned", image, tmp_path)


def test_refuses_data_cluster_beyond_eof(small: Path, tmp_path: Path) -> None:
    image = copy_of(small, tmp_path)
    edit_l2(image, 0, (1 << 63) | (1 << 44))
    expect(InvalidImage, "truncated: the data cluster", image, tmp_path)


def test_refuses_unaligned_data_cluster(small: Path, tmp_path: Path) -> None:
    image = copy_of(small, tmp_path)
    edit_l2(image, 0, (1 << 63) | (0x50000 + 0x1000))
    expect(InvalidImage, "cluster offset .* not aligned", image, tmp_path)


def test_refuses_unaligned_zero_cluster(small: Path, tmp_path: Path) -> None:
    """A zero cluster may keep a preallocated host offset, but it must be aligned (qemu
    reports such an entry as corruption too)."""
    image = copy_of(small, tmp_path)
    edit_l2(image, 0, (1 << 63) | (0x50000 + 0x800) | 1)
    expect(InvalidImage, "cluster offset .* not aligned", image, tmp_path)


def test_refuses_compressed_cluster_in_header(small: Path, tmp_path: Path) -> None:
    image = copy_of(small, tmp_path)
    edit_l2(image, 0, L2_COMPRESSED | 0x100)
    expect(InvalidImage, "overlaps the image header", image, tmp_path)


def test_refuses_compressed_garbage(small: Path, tmp_path: Path) -> None:
    """A 'compressed' cluster that is really random data does not inflate to a cluster."""
    image = copy_of(small, tmp_path)
    data_cluster = l2_entry(image, 0) & OFFSET_MASK
    edit_l2(image, 0, L2_COMPRESSED | (3 << 54) | data_cluster)
    expect(InvalidImage, "does not decompress", image, tmp_path)


def l2_entry(image: Path, index: int) -> int:
    return read_field(image, first_l2_offset(image) + 8 * index, ">Q")


def test_stream_refuses_data_cluster_over_metadata(small: Path, tmp_path: Path) -> None:
    """From a stream, a data cluster mapped onto the L1 table cannot be served (those bytes
    were metadata, not spilled): a clean error, not wrong data."""
    image = copy_of(small, tmp_path)
    edit_l2(image, 0, (1 << 63) | header_of(image).l1_table_offset)
    with pytest.raises(InvalidImage, match="overlaps"):
        convert(image, tmp_path / "out.img")


@pytest.mark.parametrize("cut", [50, 200, 0x30004, 0x48000, -70000])
def test_refuses_truncated_stream(small: Path, tmp_path: Path, cut: int) -> None:
    size = small.stat().st_size
    limit = cut if cut > 0 else size + cut
    expect(InvalidImage, "truncated", small, tmp_path, limit=limit)


# -- fuzz -------------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so nothing in the converter can swallow it."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang()


def mutations(image: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """Random edits of the header, the L1 table and the L2 tables of a valid image."""
    h = parse_header(image[:HEADER_PROBE_BYTES])
    l1 = h.l1_table_offset
    tables = [e & OFFSET_MASK for e in struct.unpack_from(f">{h.l1_size}Q", image, l1)
              if e & OFFSET_MASK]
    regions = [(0, 112), (l1, l1 + 8 * h.l1_size)] + [(t, t + h.cluster_size) for t in tables]
    interesting = [0, 1, 1 << 63, 1 << 62, (1 << 63) | h.cluster_size, len(image),
                   (1 << 63) | (len(image) // h.cluster_size * h.cluster_size),
                   (1 << 62) | (len(image) - 100), 0xFFFF_FFFF_FFFF_FFFF, OFFSET_MASK]
    for _ in range(count):
        data = bytearray(image)
        edits = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            start, end = rng.choice(regions)
            at = rng.randrange(start, end)
            how = rng.random()
            if how < 0.4:
                data[at] ^= 1 << rng.randrange(8)
            elif how < 0.6:
                data[at] = rng.randrange(256)
            else:
                at = min(end - 8, at - (at - start) % 8)
                value = rng.choice(interesting) if how < 0.8 else rng.getrandbits(64)
                if how >= 0.9:  # a plausible offset inside the file
                    value = (rng.choice([0, 1 << 62, 1 << 63]) | rng.randrange(len(image)))
                data[at:at + 8] = struct.pack(">Q", value)
            edits.append(at)
        yield f"edits at {edits}", bytes(data)


@pytest.mark.timeout(60)
def test_fuzz_mutated_images_fail_cleanly(tmp_path: Path) -> None:
    raw = tmp_path / "fuzz.raw"
    rng = random.Random(1234)
    with open(raw, "wb") as f:
        f.truncate(MiB + 1536)
        f.write(rng.randbytes(150_000))
        f.seek(400_000)
        f.write(b"a compressible run " * 20_000)
        f.seek(MiB + 1000)
        f.write(rng.randbytes(536))
    bases = [
        qcow2_from(raw, tmp_path / "plain.qcow2", "cluster_size=4096").read_bytes(),
        qcow2_from(raw, tmp_path / "zlib.qcow2", "cluster_size=4096",
                   compress=True).read_bytes(),
        qcow2_from(raw, tmp_path / "zstd.qcow2", "cluster_size=512", "compression_type=zstd",
                   compress=True).read_bytes(),
    ]
    capacity = 2 * MiB
    image = tmp_path / "mutant.qcow2"
    outcomes: dict[str, int] = {}
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for n, (what, mutant) in enumerate(
                m for base in bases for m in mutations(base, rng, 110)):
            image.write_bytes(mutant)
            target = DiskTarget(TargetSpec(path=tmp_path / "out.img", size=capacity))
            read_at = pread_of(image) if n % 2 else None
            reader = ChunkReader(file_chunks(image, rng.choice([4096, 65536, 100003])))
            signal.alarm(10)
            try:
                with target:
                    convert_qcow2(reader, target, read_at=read_at, spill_dir=tmp_path)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except CdiImportError as error:
                outcomes[type(error).__name__] = outcomes.get(type(error).__name__, 0) + 1
            except Hang:
                pytest.fail(f"mutant {n} ({what}) hung")
            except Exception as error:  # pragma: no cover - the failure this test looks for
                raise AssertionError(f"mutant {n} ({what}) raised {error!r}") from error
            finally:
                signal.alarm(0)
            assert target.highest_written <= capacity
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert sum(outcomes.values()) == 330
    assert outcomes.get("InvalidImage", 0) > 30 and outcomes.get("ok", 0) > 30, outcomes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("qcow2-spill")]
