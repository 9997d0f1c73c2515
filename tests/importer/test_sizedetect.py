"""The size-detection pod's program, with the real qemu-img in its sandbox: the number on the
termination message, and CDI's exit codes for what it cannot measure."""

from __future__ import annotations

import subprocess
from pathlib import Path

from importer import sizedetect


def run(tmp_path: Path, image: Path, *extra: str) -> tuple[int, str]:
    message = tmp_path / "termination-log"
    code = sizedetect.main(["--image-path", str(image), "--termination-message", str(message), *extra])
    return code, message.read_text() if message.exists() else ""


def test_a_raw_disk_reports_its_size(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with image.open("wb") as disk:
        disk.truncate(63963136)
    assert run(tmp_path, image) == (0, "63963136")


def test_a_qcow2_named_disk_img_is_measured_as_raw_unless_probing_is_asked(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    code, size = run(tmp_path, image)
    sectors = -(-image.stat().st_size // 512)  # qemu counts a raw file in whole sectors
    assert code == 0 and int(size) == sectors * 512  # KubeVirt reads disk.img as raw, so do we
    assert run(tmp_path, image, "--probe") == (0, str(1 << 30))


def test_missing_or_special_paths_and_unwritable_messages_have_their_codes(tmp_path: Path) -> None:
    assert run(tmp_path, tmp_path / "absent")[0] == sizedetect.INVALID_PATH
    assert run(tmp_path, tmp_path)[0] == sizedetect.INVALID_PATH  # a directory is not an image
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(512))
    code = sizedetect.main(["--image-path", str(image), "--termination-message", str(tmp_path / "no" / "log")])
    assert code == sizedetect.BAD_TERMINATION_FILE
    assert sizedetect.main(["--no-such-flag"]) == sizedetect.BAD_ARGUMENTS
