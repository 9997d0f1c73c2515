"""importer.qemu against the real qemu-img (no mocks).

Behaviours under test:

* ``info`` reads qcow2, vmdk, vpc, vhdx, vdi and raw images and parses format, sizes, cluster
  size, backing file, qcow2 data file and VMDK extents.
* ``validate`` refuses backing files, qcow2 external data files, VMDK descriptors whose
  extents are other files, formats outside the supported set (or the caller's subset), and
  images larger than the capacity; it accepts plain images.
* qemu-img failures become InvalidImage with qemu's words: a VMDK with a huge L1 table
  ("L1 size too big", CDI's fixture message), a qcow2 with a huge L1 table, the wrong ``-f``.
* The CPU and memory limits really reach the child: a 200 KiB qcow2 asking for a 32 MiB L1
  table fails under a 64 MiB address-space limit and passes under the default 1 GiB; a
  spinning child dies of SIGXCPU; a slow one hits the wall-clock timeout.
* ``convert`` produces the same bytes as the raw original from every format, reports
  increasing percentages, never lets qemu probe (a raw file that looks like a qcow2 with a
  backing file is copied verbatim), removes its partial output on failure, preallocates, and
  moves on to the next preallocation mode only on "Unsupported preallocation mode".
* ``stream`` splits stdout on ``\\r`` and ``\\n`` and reports failures with stderr.
* ``create_raw`` and ``resize_raw`` make and grow blank images, never shrinking them.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from importer.errors import ImageTooLarge, InvalidImage, UnsafeImage
from importer.sandbox import Sandbox
from importer.qemu import (
    SUPPORTED_FORMATS,
    ImageInfo,
    Limits,
    QemuImg,
    QemuImgError,
    validate,
)

MiB = 1024 * 1024
SIZE = 4 * MiB

# format name -> extra `qemu-img convert -O` options (vpc: keep the exact size, not CHS's)
FORMATS: dict[str, list[str]] = {
    "qcow2": [],
    "vmdk": [],
    "vpc": ["-o", "force_size=on"],
    "vhdx": [],
    "vdi": [],
}


def qemu_img(*args: str | os.PathLike[str]) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def patterned_raw(path: Path, size: int = SIZE) -> Path:
    """A raw disk with data and holes, so converters have both to get right."""
    block = 64 * 1024
    with path.open("wb") as f:
        for index in range(size // block):
            f.write(bytes([index % 251 + 1]) * block if index % 3 else bytes(block))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same patterned disk as raw and in every supported format, made by qemu-img."""
    root = tmp_path_factory.mktemp("images")
    made = {"raw": patterned_raw(root / "disk.raw")}
    for fmt, options in FORMATS.items():
        made[fmt] = root / f"disk.{fmt}"
        qemu_img("convert", "-f", "raw", "-O", fmt, *options, made["raw"], made[fmt])
    return made


@pytest.fixture
def qemu() -> QemuImg:
    return QemuImg()


# -- info ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["raw", *FORMATS])
def test_info_reads_every_format(qemu: QemuImg, images: dict[str, Path], fmt: str) -> None:
    info = qemu.info(images[fmt], fmt)
    assert info.format == fmt
    assert info.virtual_size == SIZE
    assert info.actual_size is not None and info.actual_size > 0
    assert info.backing_filename is None and info.data_file is None
    validate(info, capacity=SIZE)


def test_info_probes_only_when_no_format_is_given(qemu: QemuImg, images: dict[str, Path]) -> None:
    assert qemu.info(images["vhdx"]).format == "vhdx"


def test_info_parses_qcow2_details(qemu: QemuImg, images: dict[str, Path]) -> None:
    info = qemu.info(images["qcow2"], "qcow2")
    assert info.cluster_size == 65536
    assert info.corrupt is False
    assert info.raw["format-specific"]["type"] == "qcow2"


def test_info_lists_vmdk_extents(qemu: QemuImg, images: dict[str, Path]) -> None:
    info = qemu.info(images["vmdk"], "vmdk")
    assert info.create_type == "monolithicSparse"
    assert [e.filename for e in info.extents] == [str(images["vmdk"])]


# -- validate -----------------------------------------------------------------------------


def test_backing_file_is_refused(qemu: QemuImg, tmp_path: Path) -> None:
    qemu_img("create", "-f", "qcow2", tmp_path / "base.qcow2", "1M")
    child = tmp_path / "child.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", tmp_path / "base.qcow2", "-F", "qcow2", child)
    info = qemu.info(child, "qcow2")
    assert info.backing_filename == str(tmp_path / "base.qcow2")
    with pytest.raises(UnsafeImage, match=r"image .* has a backing file .*: refusing"):
        validate(info)


def test_backing_file_is_refused_even_when_missing(qemu: QemuImg, tmp_path: Path) -> None:
    """info does not open backing files, so a dangling one is still seen and refused."""
    child = tmp_path / "child.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/nonexistent/base", "-F", "qcow2", child, "1M")
    with pytest.raises(UnsafeImage, match="backing file '/nonexistent/base'"):
        validate(qemu.info(child, "qcow2"))


def test_qcow2_external_data_file_is_refused(qemu: QemuImg, tmp_path: Path) -> None:
    image = tmp_path / "df.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", image, "1M")
    info = qemu.info(image, "qcow2")
    assert info.data_file == str(tmp_path / "data.raw")
    with pytest.raises(UnsafeImage, match="external file"):
        validate(info)


def test_split_vmdk_is_refused(tmp_path: Path) -> None:
    """Unsandboxed, qemu-img opens the extent files and validate() refuses them."""
    image = tmp_path / "split.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", image, "1M")
    bare = QemuImg(sandbox=Sandbox(None))
    with pytest.raises(UnsafeImage, match=r"extents point at other files \('/.*/split-s001.vmdk'\)"):
        validate(bare.info(image, "vmdk"))


def test_sandboxed_qemu_img_cannot_see_other_extents(qemu: QemuImg, tmp_path: Path) -> None:
    image = tmp_path / "split.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", image, "1M")
    assert qemu.sandbox.active
    with pytest.raises(InvalidImage, match="split-s001.vmdk': No such file"):
        qemu.info(image, "vmdk")


def test_vmdk_descriptor_pointing_elsewhere_is_refused(tmp_path: Path) -> None:
    """The classic exfiltration: a text descriptor whose FLAT extent is a host file.
    Unsandboxed, qemu-img reads it and validate() refuses it; sandboxed, it is not there."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cr3t".ljust(1 * MiB, b"\0"))
    descriptor = tmp_path / "evil.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\nRW 2048 FLAT "{secret}" 0\n'
    )
    info = QemuImg(sandbox=Sandbox(None)).info(descriptor, "vmdk")
    assert [e.filename for e in info.extents] == [str(secret)]
    with pytest.raises(UnsafeImage, match="VMDK descriptor"):
        validate(info)
    with pytest.raises(InvalidImage, match="secret': No such file"):
        QemuImg().info(descriptor, "vmdk")


def test_monolithic_vmdk_reached_by_another_path_is_accepted(
    qemu: QemuImg, images: dict[str, Path], tmp_path: Path
) -> None:
    link = tmp_path / "link.vmdk"
    link.symlink_to(images["vmdk"])
    validate(qemu.info(link, "vmdk"))


def test_image_larger_than_capacity_is_refused(qemu: QemuImg, images: dict[str, Path]) -> None:
    with pytest.raises(ImageTooLarge) as caught:
        validate(qemu.info(images["qcow2"], "qcow2"), capacity=SIZE - 1)
    assert (caught.value.needed, caught.value.available) == (SIZE, SIZE - 1)
    assert "A larger PVC is required" in str(caught.value)


def test_unsupported_format_is_refused(qemu: QemuImg, tmp_path: Path) -> None:
    image = tmp_path / "disk.qed"
    qemu_img("create", "-f", "qed", image, "1M")
    info = qemu.info(image, "qed")
    assert "qed" not in SUPPORTED_FORMATS
    with pytest.raises(InvalidImage, match="format 'qed', which is not supported"):
        validate(info)


def test_caller_can_narrow_the_formats(qemu: QemuImg, images: dict[str, Path]) -> None:
    with pytest.raises(InvalidImage, match="supported: raw"):
        validate(qemu.info(images["qcow2"], "qcow2"), allowed_formats={"raw", "qed"})


def test_image_flagged_corrupt_is_refused() -> None:
    info = ImageInfo.from_json(
        {"filename": "x", "format": "qcow2", "virtual-size": 1,
         "format-specific": {"type": "qcow2", "data": {"corrupt": True}}}
    )
    with pytest.raises(InvalidImage, match="marked corrupt"):
        validate(info)


# -- qemu-img failures as InvalidImage -----------------------------------------------------


def patch(source: Path, dest: Path, offset: int, value: bytes) -> Path:
    data = bytearray(source.read_bytes())
    data[offset:offset + len(value)] = value
    dest.write_bytes(bytes(data))
    return dest


def test_vmdk_with_huge_l1_table_is_invalid(qemu: QemuImg, tmp_path: Path) -> None:
    """CDI's fixture message. Capacity 2^42 sectors / 64 Ki sectors per L1 entry = 64 Mi
    entries, over qemu's 32 Mi cap (and still fits qemu's 32-bit l1_size)."""
    qemu_img("create", "-f", "vmdk", tmp_path / "ok.vmdk", "1M")
    bad = patch(tmp_path / "ok.vmdk", tmp_path / "bad.vmdk", 12, struct.pack("<Q", 1 << 42))
    with pytest.raises(InvalidImage, match="L1 size too big"):
        qemu.info(bad, "vmdk")


def test_qcow2_with_huge_l1_table_is_invalid(qemu: QemuImg, tmp_path: Path) -> None:
    """qemu 7.2 words it "Active L1 table too large" for qcow2 (l1_size is at byte 36)."""
    qemu_img("create", "-f", "qcow2", tmp_path / "ok.qcow2", "1M")
    bad = patch(tmp_path / "ok.qcow2", tmp_path / "bad.qcow2", 36, struct.pack(">I", 1 << 28))
    with pytest.raises(InvalidImage, match=r"could not read image .*bad.qcow2: .*L1 table too large"):
        qemu.info(bad, "qcow2")


def test_wrong_format_is_invalid(qemu: QemuImg, images: dict[str, Path]) -> None:
    with pytest.raises(InvalidImage, match="Image is not in qcow2 format"):
        qemu.info(images["raw"], "qcow2")


def test_invalid_image_keeps_the_qemu_details(qemu: QemuImg, tmp_path: Path) -> None:
    with pytest.raises(InvalidImage) as caught:
        qemu.info(tmp_path / "missing.qcow2", "qcow2")
    cause = caught.value.__cause__
    assert isinstance(cause, QemuImgError)
    assert cause.returncode == 1 and "No such file or directory" in cause.stderr
    assert cause.command[:3] == ["qemu-img", "info", "--output=json"]


# -- resource limits ----------------------------------------------------------------------


def big_l1_qcow2(tmp_path: Path) -> Path:
    """A ~200 KiB qcow2 whose header asks qemu to allocate and read a 32 MiB L1 table."""
    qemu_img("create", "-f", "qcow2", tmp_path / "ok.qcow2", "1G")
    return patch(tmp_path / "ok.qcow2", tmp_path / "big-l1.qcow2", 36, struct.pack(">I", 4 * MiB))


def test_memory_limit_reaches_qemu_img(tmp_path: Path) -> None:
    image = big_l1_qcow2(tmp_path)
    assert image.stat().st_size < 256 * 1024
    QemuImg().info(image, "qcow2")  # fine under the default 1 GiB
    tight = QemuImg(limits=Limits(address_space=64 * MiB))
    tight.info(tmp_path / "ok.qcow2", "qcow2")  # qemu-img itself fits in 64 MiB ...
    with pytest.raises(InvalidImage, match="Could not allocate L1 table"):
        tight.info(image, "qcow2")  # ... but not with a 32 MiB table on top


def test_limits_are_set_in_the_child() -> None:
    script = (
        "import resource as r; "
        "print(r.getrlimit(r.RLIMIT_CPU)[0], r.getrlimit(r.RLIMIT_AS)[0])"
    )
    out = QemuImg(sys.executable, sandbox=Sandbox(None)).run(["-c", script], limits=Limits())
    assert out.split() == [b"30", str(1024 * MiB).encode()]


def test_memory_limit_refuses_a_huge_allocation() -> None:
    with pytest.raises(QemuImgError, match="MemoryError"):
        QemuImg(sys.executable, sandbox=Sandbox(None)).run(["-c", "bytearray(2 << 30)"], limits=Limits())


def test_cpu_limit_kills_a_spinning_child() -> None:
    with pytest.raises(QemuImgError) as caught:
        QemuImg("sh").run(["-c", "while :; do :; done"], timeout=20, limits=Limits(cpu_seconds=1))
    assert caught.value.killed_by in (signal.SIGXCPU, signal.SIGKILL)


def test_wall_clock_timeout() -> None:
    with pytest.raises(QemuImgError, match="did not finish within 0.3 s") as caught:
        QemuImg("sleep").run(["5"], timeout=0.3)
    assert caught.value.timed_out


# -- convert --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["raw", *FORMATS])
def test_convert_gives_the_original_bytes(
    qemu: QemuImg, images: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / "out.raw"
    qemu.convert(images[fmt], fmt, out)
    assert sha256(out) == sha256(images["raw"])


def test_convert_reports_increasing_progress(qemu: QemuImg, tmp_path: Path) -> None:
    source = patterned_raw(tmp_path / "src.raw", 32 * MiB)
    seen: list[float] = []
    qemu.convert(source, "raw", tmp_path / "out.raw", progress=seen.append)
    assert len(seen) > 2
    assert seen == sorted(set(seen))
    assert seen[-1] == 100.0


def test_convert_never_lets_qemu_probe(qemu: QemuImg, tmp_path: Path) -> None:
    """A raw disk that starts with a qcow2 header naming a backing file stays raw bytes."""
    lure = tmp_path / "lure.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/hostname", "-F", "raw", lure, "1M")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(lure.read_bytes().ljust(1 * MiB, b"\0"))
    out = tmp_path / "out.raw"
    qemu.convert(disk, "raw", out)
    assert sha256(out) == sha256(disk)


def test_convert_refuses_unsupported_source_formats(qemu: QemuImg, tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="'qed'"):
        qemu.convert(tmp_path / "x", "qed", tmp_path / "out.raw")


def test_failed_convert_removes_partial_output(qemu: QemuImg, tmp_path: Path) -> None:
    """Compressed clusters overwritten with garbage fail mid-way, after the output exists."""
    source = patterned_raw(tmp_path / "src.raw", 8 * MiB)
    compressed = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", source, compressed)
    data = bytearray(compressed.read_bytes())
    middle = len(data) // 2
    data[middle:len(data) - 4096] = b"\xab" * (len(data) - 4096 - middle)
    compressed.write_bytes(bytes(data))
    out = tmp_path / "out.raw"
    with pytest.raises(QemuImgError, match=r"could not convert .*Input/output error") as caught:
        qemu.convert(compressed, "qcow2", out)
    assert caught.value.returncode == 1
    assert not out.exists()


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_convert_is_sparse_unless_preallocating(
    qemu: QemuImg, images: dict[str, Path], tmp_path: Path
) -> None:
    sparse, full = tmp_path / "sparse.raw", tmp_path / "full.raw"
    qemu.convert(images["qcow2"], "qcow2", sparse)
    qemu.convert(images["qcow2"], "qcow2", full, preallocate=True)
    assert sha256(full) == sha256(sparse) == sha256(images["raw"])
    assert allocated(sparse) < SIZE <= allocated(full)


class MetadataFirst(QemuImg):
    """raw has no "metadata" preallocation: qemu answers "Unsupported preallocation mode"."""

    PREALLOCATION_ATTEMPTS = (("-o", "preallocation=metadata"), ("-o", "preallocation=falloc"))


class BogusFirst(QemuImg):
    PREALLOCATION_ATTEMPTS = (("-o", "preallocation=bogus"), ("-o", "preallocation=falloc"))


def test_preallocation_falls_back_on_unsupported_mode(
    images: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.raw"
    MetadataFirst().convert(images["vdi"], "vdi", out, preallocate=True)
    assert sha256(out) == sha256(images["raw"])
    assert allocated(out) >= SIZE


def test_preallocation_does_not_fall_back_on_other_errors(
    images: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.raw"
    with pytest.raises(QemuImgError, match="invalid parameter value: bogus"):
        BogusFirst().convert(images["vdi"], "vdi", out, preallocate=True)
    assert not out.exists()


def test_convert_into_an_existing_target(qemu: QemuImg, images: dict[str, Path], tmp_path: Path) -> None:
    """``dest_is_block`` writes in place (-n), as on a block device, zeroing the holes."""
    out = tmp_path / "device"
    out.write_bytes(b"\xff" * SIZE)
    qemu.convert(images["vmdk"], "vmdk", out, dest_is_block=True, preallocate=True)
    assert sha256(out) == sha256(images["raw"])


# -- stream -------------------------------------------------------------------------------


def test_stream_splits_on_carriage_returns_and_newlines() -> None:
    lines: list[str] = []
    QemuImg("sh").stream(["-c", r"printf '  (1.00/100%%)\r  (2.50/100%%)\rdone\n\nlast'"], lines.append)
    assert lines == ["  (1.00/100%)", "  (2.50/100%)", "done", "last"]


def test_stream_failure_carries_command_status_and_stderr() -> None:
    with pytest.raises(QemuImgError) as caught:
        QemuImg("sh").stream(["-c", "echo 'qemu-img: broken' >&2; exit 3"], lambda line: None)
    assert caught.value.returncode == 3
    assert caught.value.stderr.strip() == "qemu-img: broken"
    assert caught.value.detail == "broken"
    assert caught.value.command == ["sh", "-c", "echo 'qemu-img: broken' >&2; exit 3"]


def test_stream_callback_error_stops_the_process() -> None:
    def stop(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        QemuImg("sh").stream(["-c", "echo one; sleep 30"], stop)


def test_missing_binary_is_reported() -> None:
    with pytest.raises(QemuImgError, match="cannot run /nonexistent/qemu-img"):
        QemuImg("/nonexistent/qemu-img").info("/dev/null", "raw")


# -- blank images --------------------------------------------------------------------------


@pytest.mark.parametrize("preallocate", [False, True])
def test_create_raw(qemu: QemuImg, tmp_path: Path, preallocate: bool) -> None:
    disk = tmp_path / "blank.raw"
    qemu.create_raw(disk, 3 * MiB, preallocate=preallocate)
    assert disk.stat().st_size == 3 * MiB
    assert (allocated(disk) >= 3 * MiB) == preallocate
    assert qemu.info(disk, "raw").virtual_size == 3 * MiB


@pytest.mark.parametrize("preallocate", [False, True])
def test_resize_raw_grows(qemu: QemuImg, tmp_path: Path, preallocate: bool) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\x01" * MiB)
    qemu.resize_raw(disk, 5 * MiB, preallocate=preallocate)
    assert disk.stat().st_size == 5 * MiB
    assert disk.read_bytes()[: MiB] == b"\x01" * MiB
    assert (allocated(disk) >= 5 * MiB) == preallocate


def test_resize_raw_never_shrinks(qemu: QemuImg, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\x01" * (2 * MiB))
    qemu.resize_raw(disk, MiB)
    assert disk.stat().st_size == 2 * MiB
