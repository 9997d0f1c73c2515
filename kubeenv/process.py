"""Background processes that can be stopped by whoever holds their record, not only their parent.

The test fixture starts and stops the control plane in one Python process, but ``scripts/kube-up``
starts it and exits, and ``scripts/kube-down`` (another process) stops it later. So a process is
identified by its pid *and* its start time (from ``/proc``), which is saved to JSON: a recycled
pid is never mistaken for ours and killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child (dlopen there may deadlock)


@dataclass
class Process:
    """One started process: its name, pid, start time and log file."""

    name: str
    pid: int
    start_time: int
    log: Path
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def spawn(cls, name: str, argv: list[str], log: Path, *, die_with_parent: bool,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> Process:
        """Start ``argv`` in its own session with stdout and stderr appended to ``log``.

        Its own session keeps a terminal's Ctrl-C away from it. ``die_with_parent`` makes the
        kernel kill it if the starting process dies without cleaning up (a killed pytest must
        not leave an apiserver behind); kube-up turns that off because it exits on purpose.
        The kernel ties this to the starting *thread*: start from a thread that outlives it.
        """
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env, cwd=cwd,
                                     # the hook only calls prctl through libc loaded beforehand
                                     preexec_fn=_die_with_parent if die_with_parent else None)  # noqa: PLW1509
        return cls(name, popen.pid, _start_time(popen.pid) or 0, log, popen)

    def alive(self) -> bool:
        """True while the process runs (a zombie counts as dead)."""
        if self._popen is not None:
            return self._popen.poll() is None
        return _start_time(self.pid) == self.start_time and not _is_zombie(self.pid)

    def exit_code(self) -> int | None:
        """The exit status when we are its parent and it has ended, else None."""
        return self._popen.poll() if self._popen is not None else None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once it is gone."""
        if not self.alive():
            self._reap()
            return
        self._signal(signal.SIGTERM)
        if not _wait(self.alive, grace):
            self._signal(signal.SIGKILL)
            _wait(self.alive, 10.0)
        self._reap()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the log, for error messages that say why a component failed."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time, "log": str(self.log)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Process:
        return cls(data["name"], int(data["pid"]), int(data["start_time"]), Path(data["log"]))

    def _signal(self, sig: signal.Signals) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        if self._popen is not None:
            try:
                self._popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _die_with_parent() -> None:
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after its last ')'
    return raw[raw.rindex(")") + 2:].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 of stat, counted from the state field


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] in ("Z", "X")


def _wait(still_running: Callable[[], bool], timeout: float) -> bool:
    """Poll until ``still_running()`` is false; True if that happened within ``timeout``."""
    deadline = time.monotonic() + timeout
    while still_running():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_for_components(ready: Callable[[], bool], what: str, deadline: float, processes: list[Process],
                        error: type[Exception], interval: float = 0.2) -> None:
    """Poll ``ready`` until true; fail fast, with its log, when one of ``processes`` dies meanwhile,
    and on the deadline with every component's log tail (raised as ``error``)."""
    while True:
        dead = [p for p in processes if not p.alive()]
        if dead:
            raise error("\n\n".join(f"{p.name} exited while waiting for {what}:\n{p.log_tail()}" for p in dead))
        if ready():
            return
        if time.monotonic() > deadline:
            logs = "\n\n".join(f"== {p.name}:\n{p.log_tail(15)}" for p in processes)
            raise error(f"timed out waiting for {what}\n{logs}")
        time.sleep(interval)
