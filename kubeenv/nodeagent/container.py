"""One run of one container: the launcher process, its log, its exit and termination message.

Each run gets fresh ``rootfs``/``upper``/``work`` directories (a restarted container starts from a
clean writable layer, as with a real runtime) and its own log file ``<run>.log``, next to the
termination message file that is bind-mounted at the container's ``terminationMessagePath``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeenv.nodeagent.kube import now_rfc3339

LAUNCHER = Path(__file__).with_name("launch.py")
MESSAGE_LIMIT = 4096  # kubelet's per-container cap on termination messages
LOG_TAIL_LINES = 80


@dataclass(frozen=True)
class Exit:
    """How a run ended, in ContainerStateTerminated's terms."""

    code: int
    reason: str
    message: str
    started_at: str
    finished_at: str
    signal: int = 0


class ContainerProcess:
    """The launcher for one run; ``spec`` is the launcher's spec without the per-run paths."""

    def __init__(self, directory: Path, run: int, spec: dict[str, Any], *, fallback_to_logs: bool = False) -> None:
        self.dir = directory
        self.run = run
        self.run_dir = directory / f"run-{run}"
        self.log = directory / f"{run}.log"
        self.message_file = directory / "termination-log"
        self.error_file = self.run_dir / "start-error"
        self.pid_file = self.run_dir / "pid"
        self.spec = spec
        self.fallback_to_logs = fallback_to_logs
        self.started_at = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for name in ("rootfs", "upper", "work"):
            (self.run_dir / name).mkdir(parents=True, exist_ok=True)
        self.message_file.write_bytes(b"")
        spec = dict(self.spec, root=str(self.run_dir / "rootfs"), upper=str(self.run_dir / "upper"),
                    work=str(self.run_dir / "work"), error_file=str(self.error_file), pid_file=str(self.pid_file))
        spec["mounts"] = [*spec["mounts"], {"source": str(self.message_file),
                                            "target": spec.pop("termination_message_path")}]
        (self.run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-I", str(LAUNCHER), str(self.run_dir / "spec.json")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        self.started_at = now_rfc3339()

    @property
    def pid(self) -> int | None:
        """The container's PID 1 as the host sees it (for nsenter), once the launcher has forked."""
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def wait(self) -> Exit:
        assert self._process is not None
        code = self._process.wait()
        finished = now_rfc3339()
        code = 128 - code if code < 0 else code  # the launcher itself was killed by signal -code
        error = self.error_file.read_text() if self.error_file.exists() else ""
        self._cleanup()
        if error:
            return Exit(128, "StartError", error[:MESSAGE_LIMIT], self.started_at, finished)
        return Exit(code, "Completed" if code == 0 else "Error", self._message(code), self.started_at, finished,
                    signal=code - 128 if code > 128 else 0)

    def terminate(self, grace: float) -> None:
        """SIGTERM (forwarded to the command), then SIGKILL after ``grace`` seconds if it is still there."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=max(grace, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _message(self, code: int) -> str:
        try:
            message = self.message_file.read_bytes()[:MESSAGE_LIMIT].decode("utf-8", "replace")
        except OSError:
            message = ""
        if not message and code != 0 and self.fallback_to_logs:
            lines = self.log.read_bytes().decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]
            message = "\n".join(lines)[-MESSAGE_LIMIT:]
        return message

    def _cleanup(self) -> None:
        """The run's mounts died with its namespaces; its writable layer goes too (logs stay)."""
        for name in ("rootfs", "upper", "work"):
            shutil.rmtree(self.run_dir / name, ignore_errors=True)
