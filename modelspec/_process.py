"""The writing process: how it reacts to SIGINT/SIGTERM, how to tell whether another
writer still runs, and a hook that lets tests stop a writer at a named point."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from ._errors import BuildDirError

__all__ = ["SignalGuard", "alive", "fault_point", "start_time"]

_FAULT_ENV = "MODELSPEC_TEST_FAULT"


def fault_point(name: str) -> None:
    """Test hook: ``MODELSPEC_TEST_FAULT=ACTION@POINT`` makes a writer misbehave at a named point.

    ACTION is ``kill`` (SIGKILL itself: a crash that runs no cleanup), ``pause`` (say so on
    stderr and sleep, so that a test can signal it) or ``trace`` (say every point on stderr).
    """
    spec = os.environ.get(_FAULT_ENV)
    if not spec:
        return
    action, _, point = spec.partition("@")
    if action == "trace":
        os.write(2, f"modelspec-fault: at {name}\n".encode())
    if point != name:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "pause":
        os.write(2, f"modelspec-fault: paused at {name}\n".encode())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and SignalGuard.noted is None:  # a deferred signal ends the pause
            time.sleep(0.02)


class _Interrupted(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM while a folder is being written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalGuard:
    """While writing, SIGINT/SIGTERM raise _Interrupted so that the cleanup runs; during
    the swap and the cleanup they are only noted. On exit the previous handlers come back
    and a noted signal is delivered to them (a default SIGTERM then ends the process)."""

    noted: int | None = None  # the signal the writer now running got, for fault_point's pause

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.pending: int | None = None
        self.deferring = False

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                prev = signal.getsignal(sig)
                if prev is not signal.SIG_IGN and prev is not None:  # ignored stays ignored
                    self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pending is None:
            self.pending = SignalGuard.noted = signum
            if not self.deferring:
                raise _Interrupted(signum)

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        SignalGuard.noted = None
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)
        if self.pending is not None:
            signal.raise_signal(self.pending)  # the previous handler decides: exit, KeyboardInterrupt, ...
        if isinstance(exc, _Interrupted):  # ... or it returned: the write was still abandoned
            name = signal.Signals(exc.signum).name
            raise BuildDirError(f"interrupted by {name}; nothing was written", code="interrupted") from None


def start_time(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a process, from /proc; None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int, started: int | None) -> bool:
    """Whether the writer ``pid`` may still run; True whenever that is not certain."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, as another user
    now = start_time(pid)
    if now is None:
        return True
    state, start = now
    return state != "Z" and (started is None or start == started)
