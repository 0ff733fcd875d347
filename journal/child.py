"""Plumbing: run ``sop-run``'s command as a child, and stop it the platform's way.

POSIX: the child shares sop-run's process group, so Ctrl-C in a terminal
reaches both; SIGINT and SIGTERM that reach only sop-run are forwarded as
they are.

Windows has no signals to forward (``send_signal(SIGINT)`` raises
"Unsupported signal").  The child starts in a new process group, so that
``CTRL_BREAK_EVENT`` can be sent to it alone, and in a Job Object that kills
it when sop-run's last handle closes: killing sop-run (Task Manager,
``taskkill``, a closed console) never orphans the backtest.  Ctrl-C or
Ctrl-Break reaching sop-run is passed on as ``CTRL_BREAK_EVENT``; where that
cannot be delivered (no shared console) the child is terminated.  Either
way the command ends, and sop-run rolls the transaction back.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

WINDOWS = os.name == "nt"


def spawn(cmd: Sequence[str], env: dict[str, str], stdout: int | None) -> subprocess.Popen[bytes]:
    """Start the command; on Windows in its own process group and in a kill-on-close job."""
    # only sop-run starts a command: not on a commit's path
    import subprocess

    if not WINDOWS:
        return subprocess.Popen(list(cmd), env=env, stdout=stdout)
    proc = subprocess.Popen(list(cmd), env=env, stdout=stdout,
                            creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)  # type: ignore[attr-defined,unused-ignore]
    _contain(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Pass a stop request (``signum`` received by sop-run) on to the child."""
    if proc.poll() is not None:
        return
    if not WINDOWS:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        return
    try:
        proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined,unused-ignore]
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            proc.terminate()


def stop_signals() -> tuple[int, ...]:
    """The signals sop-run catches and passes on while its command runs."""
    if WINDOWS:
        return (signal.SIGINT, signal.SIGBREAK)  # type: ignore[attr-defined,unused-ignore]
    return (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def forwarding(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """While the block runs, the stop signals sop-run receives are passed on to ``proc``."""
    def forward(signum: int, _frame: Any) -> None:
        stop(proc, signum)

    old = {s: signal.signal(s, forward) for s in stop_signals()}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


_jobs: list[Any] = []          # job handles live as long as this process: closing one kills its children


def _contain(proc: subprocess.Popen[bytes]) -> None:
    """Put ``proc`` in a Job Object with JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE (best effort)."""
    import ctypes
    from ctypes import wintypes

    class IO_COUNTERS(ctypes.Structure):
        _fields_ = [(n, ctypes.c_ulonglong) for n in ("ReadOperationCount", "WriteOperationCount",
                                                      "OtherOperationCount", "ReadTransferCount",
                                                      "WriteTransferCount", "OtherTransferCount")]

    class BASIC(ctypes.Structure):
        _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                    ("LimitFlags", wintypes.DWORD), ("MinimumWorkingSetSize", ctypes.c_size_t),
                    ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", wintypes.DWORD),
                    ("Affinity", ctypes.c_size_t), ("PriorityClass", wintypes.DWORD),
                    ("SchedulingClass", wintypes.DWORD)]

    class EXTENDED(ctypes.Structure):
        _fields_ = [("BasicLimitInformation", BASIC), ("IoInfo", IO_COUNTERS),
                    ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                    ("PeakProcessMemoryUsed", ctypes.c_size_t), ("PeakJobMemoryUsed", ctypes.c_size_t)]

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
    kernel32.CreateJobObjectW.restype = wintypes.HANDLE
    kernel32.SetInformationJobObject.argtypes = [wintypes.HANDLE, ctypes.c_int, ctypes.c_void_p, wintypes.DWORD]
    kernel32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
    job = kernel32.CreateJobObjectW(None, None)
    if not job:
        return
    info = EXTENDED()
    info.BasicLimitInformation.LimitFlags = 0x2000           # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    if kernel32.SetInformationJobObject(job, 9, ctypes.byref(info), ctypes.sizeof(info)) and \
            kernel32.AssignProcessToJobObject(job, int(proc._handle)):  # type: ignore[attr-defined]
        _jobs.append(job)
    else:
        kernel32.CloseHandle(job)
