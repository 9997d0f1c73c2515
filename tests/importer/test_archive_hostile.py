"""Hostile tar archives end in a classified error, never a traceback, and leave nothing.

Behaviours under test (``cdi import --content-type archive`` of a local file, in a child):
a directory then a file of the same name, a file then a child of it, a NUL in a name, a name
component longer than 255 bytes, a member named like our staging directory, more members than
the volume can hold once per-member overhead is counted, and a volume that fills up while
unpacking (a 2 MiB tmpfs): each exits 2 with InvalidImage or TooSmall and a message that says
why, with no staging directory left behind. A good archive still unpacks.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from importer.archive import STAGING
from tests.importer.crafted import MiB, cdi_import

Member = tuple[str, bytes | None]  # (name, content) or (name, None) for a directory


def _tar(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if "\0" in name:  # only a PAX record can carry it
                info.name, info.pax_headers = "placeholder", {"path": name}
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _volume(tmp_path: Path) -> Path:
    volume = tmp_path / "vol"
    volume.mkdir()
    return volume


def _import(archive: Path, volume: Path, *extra: str) -> tuple[int, str]:
    outcome = cdi_import(archive, volume, "--content-type", "archive", *extra, timeout=60)
    return outcome.returncode, outcome.stderr


CASES = {
    "dir-then-file": ([("a", None), ("a", b"x")], "InvalidImage", "a directory"),
    "file-then-child": ([("a", b"x"), ("a/b", b"y")], "InvalidImage", "conflicts"),
    "file-then-dir": ([("a", b"x"), ("a", None)], "InvalidImage", "is a file"),
    "nul-in-name": ([("a\0b", b"x")], "InvalidImage", "NUL"),
    "long-component": ([("d/" + "n" * 300, b"x")], "InvalidImage", "longer than"),
    "staging-name": ([(f"{STAGING}/x", b"x")], "InvalidImage", "reserves"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_members_are_classified(tmp_path: Path, case: str) -> None:
    members, reason, words = CASES[case]
    volume = _volume(tmp_path)
    code, stderr = _import(_tar(tmp_path / "a.tar", members), volume)
    assert code == 2, stderr
    assert reason in stderr and words in stderr, stderr
    assert "Traceback" not in stderr
    assert list(volume.iterdir()) == []


def test_per_member_overhead_counts_against_the_capacity(tmp_path: Path) -> None:
    members: list[Member] = [(f"f{n}", b"") for n in range(600)]  # no content at all
    volume = _volume(tmp_path)
    code, stderr = _import(_tar(tmp_path / "many.tar", members), volume, "--size", "2Mi")
    assert code == 2 and "TooSmall" in stderr and "per-member" in stderr, stderr
    assert list(volume.iterdir()) == []


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    volume = _volume(tmp_path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", volume], check=True)
    try:
        yield volume
    finally:
        subprocess.run(["umount", volume], check=True)


def test_running_out_of_space_is_too_small(tmp_path: Path, tiny_volume: Path) -> None:
    archive = _tar(tmp_path / "big.tar", [("big", bytes(range(256)) * (16 * 1024))])  # 4 MiB
    code, stderr = _import(archive, tiny_volume)
    assert code == 2 and "TooSmall" in stderr and "no space left" in stderr, stderr
    assert list(tiny_volume.iterdir()) == []


def test_a_good_archive_still_unpacks(tmp_path: Path) -> None:
    members: list[Member] = [("d", None), ("d/a", b"alpha"), ("b", b"beta" * MiB)]
    volume = _volume(tmp_path)
    code, stderr = _import(_tar(tmp_path / "ok.tar", members), volume)
    assert code == 0, stderr
    assert (volume / "d" / "a").read_bytes() == b"alpha"
    assert (volume / "b").read_bytes() == b"beta" * MiB
    assert sorted(p.name for p in volume.iterdir()) == ["b", "d"]
