"""Cuts, restarts and corruption: the clone resumes from the server's acknowledged offset,
and a write that does not match what the cloner read is caught.

Behaviours under test:
- a connection cut mid-clone (a relay that drops it after N bytes): the cloner asks the server
  where it is and sends from that offset, not from 0; the result is identical to the source;
- the cloner killed mid-clone and started again (a pod restart): the new process resumes from
  the acknowledged offset, superseding the dead connection the server still holds open;
  meanwhile the cloner served ``kubevirt_cdi_clone_progress_total{ownerUID}`` on HTTPS;
- a corrupted write on the target (one flipped byte) fails the segment's verification: the
  cloner exits 2 with ``ChecksumError``, the partial image is removed, the server stays up.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from importer import clonewire as wire
from importer.clonewire import SegmentHash
from importer.target import DiskTarget
from tests.cloner.conftest import ServerFactory
from tests.cloner.harness import (CLONER_NAME, MiB, ClonePki, cloner_env, finish_cloner, run_cloner, sparse_image,
                                  start_cloner)
from tests.cloner.test_clone import sha256
from tests.servers.ports import free_port
from tests.uploadproxy.cutter import UploadCutter
from tests.uploadproxy.harness import LoopThread, start_server
from uploadproxy.clonejobs import CloneResult, ImageJob
from uploadproxy.paths import CLONE
from uploadproxy.settings import ServerSettings

SIZE = 256 * MiB


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, int]:
    image = tmp_path / "source" / "disk.img"
    return image, sparse_image(image, SIZE, extents=1000, seed=21)


def test_cut_resumes_from_acknowledged_offset(source: tuple[Path, int], clone_pki: ClonePki,
                                              target_server: ServerFactory, tmp_path: Path) -> None:
    image, data = source
    target = tmp_path / "target" / "disk.img"
    target.parent.mkdir()
    server = target_server(target, size="256Mi")
    cutter = UploadCutter(server.port, at=data // 2)
    try:
        url = f"https://127.0.0.1:{cutter.port}{CLONE}"
        run = run_cloner(cloner_env(clone_pki, url, tmp_path, source=image.parent, CLONE_SEGMENT_BYTES="4Mi"),
                         tmp_path)
    finally:
        cutter.close()
    assert run.returncode == 0, run.log
    assert cutter.cuts == 1
    first, resumed = run.termination["resumedFrom"]
    assert first == 0 and 0 < resumed < SIZE
    assert run.termination["dataBytes"] < 2 * data - data // 4  # not everything again
    assert server.wait() == 0 and server.termination()["message"] == "Clone Complete"
    assert sha256(target) == sha256(image)


def test_killed_cloner_restarts_and_resumes(source: tuple[Path, int], clone_pki: ClonePki,
                                            target_server: ServerFactory, tmp_path: Path) -> None:
    image, data = source
    target = tmp_path / "target" / "disk.img"
    target.parent.mkdir()
    server = target_server(target, size="256Mi")
    metrics_port = free_port()
    scraped: list[str] = []
    process_box: list[Any] = []

    def kill_mid_way() -> None:
        scraped.append(requests.get(f"https://127.0.0.1:{metrics_port}/metrics", verify=False, timeout=10).text)
        process_box[0].kill()

    cutter = UploadCutter(server.port, at=data // 2, stall=60, on_cut=kill_mid_way)
    try:
        env = cloner_env(clone_pki, f"https://127.0.0.1:{cutter.port}{CLONE}", tmp_path, source=image.parent,
                         CLONE_SEGMENT_BYTES="4Mi", CLONE_METRICS_PORT=str(metrics_port))
        process_box.append(start_cloner(env, tmp_path))
        assert process_box[0].wait(120) == -9
        env["UPLOAD_URL"] = server.url  # the relay still holds the old connection open
        run = finish_cloner(start_cloner(env, tmp_path), tmp_path)
    finally:
        cutter.close()
    assert run.returncode == 0, run.log
    (resumed,) = run.termination["resumedFrom"]
    assert 0 < resumed < SIZE
    assert run.termination["dataBytes"] < data  # the second run sent only the rest
    assert server.wait() == 0 and server.termination()["message"] == "Clone Complete"
    assert sha256(target) == sha256(image)
    match = re.search(r'kubevirt_cdi_clone_progress_total\{ownerUID="([^"]+)"\} ([0-9.]+)', scraped[0])
    assert match and match.group(1) == env["OWNER_UID"]
    assert 0 < float(match.group(2)) < 100


def in_process_server(clone_pki: ClonePki, tmp_path: Path) -> ServerSettings:
    """An upload server's settings for a clone into ``tmp_path/target/disk.img``, on any port."""
    volume = tmp_path / "target"
    volume.mkdir()
    return ServerSettings(tls_cert=clone_pki.server.cert, tls_key=clone_pki.server.key,
                          client_ca=clone_pki.client_ca.cert, client_name=CLONER_NAME,
                          destination=volume / "disk.img", image_size=SIZE, address="127.0.0.1", port=0,
                          termination_message_path=tmp_path / "server.termination")


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


def test_corrupted_write_is_caught(source: tuple[Path, int], clone_pki: ClonePki, loop_thread: LoopThread,
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, _ = source
    settings = in_process_server(clone_pki, tmp_path)
    writes = [0]
    lock = threading.Lock()
    original = DiskTarget._pwrite

    def corrupting(self: DiskTarget, offset: int, data: bytes | memoryview) -> None:
        with lock:
            writes[0] += 1
            flip = writes[0] == 40  # one byte of one write, well into the clone
        if flip:
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 0x01
            data = bytes(damaged)
        original(self, offset, data)

    monkeypatch.setattr(DiskTarget, "_pwrite", corrupting)
    handle = start_server(loop_thread, settings)
    try:
        url = f"https://127.0.0.1:{handle.server.port}{CLONE}"
        run = run_cloner(cloner_env(clone_pki, url, tmp_path, source=image.parent, CLONE_SEGMENT_BYTES="4Mi"),
                         tmp_path)
        assert run.returncode == 2, run.log
        assert run.termination["reason"] == "ChecksumError" and run.termination["fatalError"] is True
        assert "does not verify" in run.termination["message"]
        assert writes[0] >= 40
        assert list(settings.destination.parent.iterdir()) == []  # the partial image is gone
        assert handle.server.outcome is not None and not handle.server.outcome.done()
    finally:
        loop_thread.run(handle.server.stop())


def test_archive_cut_resumes(clone_pki: ClonePki, target_server: ServerFactory, tmp_path: Path) -> None:
    """The tar is made again after the cut and the acknowledged part skipped: the extractor
    sees every byte once."""
    import random

    rng = random.Random(8)
    source = tmp_path / "source"
    files = {f"dir{i % 3}/file{i}.bin": rng.randbytes(rng.randrange(1, 3 * MiB)) for i in range(24)}
    for name, content in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(content)
    target = tmp_path / "target"
    target.mkdir()
    server = target_server(target / "disk.img", size="256Mi")
    total = sum(map(len, files.values()))
    cutter = UploadCutter(server.port, at=total // 2)
    try:
        url = f"https://127.0.0.1:{cutter.port}{CLONE}"
        run = run_cloner(cloner_env(clone_pki, url, tmp_path, content="archive", source=source,
                                    CLONE_SEGMENT_BYTES="2Mi"), tmp_path)
    finally:
        cutter.close()
    assert run.returncode == 0, run.log
    assert cutter.cuts == 1
    first, resumed = run.termination["resumedFrom"]
    assert first == 0 and resumed > 0
    assert run.termination["dataBytes"] < 2 * total - total // 4
    assert server.wait() == 0 and server.termination()["message"] == "Clone Complete"
    for name, content in files.items():
        assert (target / name).read_bytes() == content, name
    assert sorted(p.name for p in target.iterdir()) == ["dir0", "dir1", "dir2"]


def test_empty_archive(clone_pki: ClonePki, target_server: ServerFactory, tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "lost+found").mkdir(parents=True)
    target = tmp_path / "target"
    target.mkdir()
    server = target_server(target / "disk.img", size="16Mi")
    run = run_cloner(cloner_env(clone_pki, server.url, tmp_path, content="archive", source=source), tmp_path)
    assert run.returncode == 0, run.log
    assert server.wait() == 0 and server.termination()["message"] == "Clone Complete"
    assert list(target.iterdir()) == []


def test_answer_lost_after_completion(source: tuple[Path, int], clone_pki: ClonePki, loop_thread: LoopThread,
                                      tmp_path: Path) -> None:
    """A cloner that restarts after the server completed (its 200 lost with the connection)
    finds the clone done and exits 0 without sending again. (A pod's server exits at once;
    this one is kept running in-process to answer.)"""
    image, _ = source
    settings = in_process_server(clone_pki, tmp_path)
    handle = start_server(loop_thread, settings)
    try:
        env = cloner_env(clone_pki, f"https://127.0.0.1:{handle.server.port}{CLONE}", tmp_path,
                         source=image.parent)
        assert run_cloner(env, tmp_path).returncode == 0
        again = run_cloner(env, tmp_path)
        assert again.returncode == 0, again.log
        assert again.termination["bytesSent"] == 0 and again.termination["resumedFrom"] == []
        assert sha256(settings.destination) == sha256(image)
    finally:
        loop_thread.run(handle.server.stop())


def test_a_commit_cut_off_is_finished_by_the_request_that_supersedes_it(clone_pki: ClonePki, tmp_path: Path) -> None:
    """The request that committed was cancelled mid-commit (its cloner was cut off and came back):
    the next request, ending at the same offset, gets the same commit, not a second one on a
    closed target (which answered 500 "Bad file descriptor" on every retry)."""
    settings = in_process_server(clone_pki, tmp_path)
    data = bytes(range(256)) * 16  # 4 KiB at offset 0; the rest of the 256 MiB are holes
    digest = SegmentHash()
    digest.update(0, data)

    async def scenario() -> tuple[CloneResult, CloneResult]:
        job = await asyncio.get_running_loop().run_in_executor(None, ImageJob, settings, SIZE)
        await job.extents([(0, len(data), wire.RAW, data)])
        await job.segment(SIZE, digest.digest())
        first = asyncio.ensure_future(job.done(SIZE))
        await asyncio.sleep(0)  # the commit has started in its thread
        first.cancel()
        await job.rewind()  # what the superseding request does first
        second = await job.done(SIZE)
        third = await job.done(SIZE)  # and again: the same answer
        await job.abort(RuntimeError("the server stops"))  # nothing to undo once committed
        return second, third

    second, third = asyncio.run(scenario())
    assert second == third and second.size == SIZE
    assert settings.destination.read_bytes()[:len(data)] == data
    assert settings.destination.stat().st_size >= SIZE
