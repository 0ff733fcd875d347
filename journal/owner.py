"""Plumbing: who owns a transaction, and whether that owner is still alive.

An owner is a process: host, pid, the pid's start time and the boot id
(SPEC §4).  A pid is reused after its process dies, so the start time tells
a new process from the old one; the boot id tells this boot from the last.
On Linux both come from ``/proc``; elsewhere only ``kill(pid, 0)`` is used.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from .errors import Refused


class Owner(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    pid: int
    start: str = ""        # the pid's start time (clock ticks since boot, as text); "" when unknown
    boot: str = ""         # the boot id; "" when unknown
    user: str = ""


def hostname() -> str:
    return socket.gethostname()


def username() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a pid from /proc, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ("?", "")
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], rest[19]


def pid_running(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    if pid <= 0:
        return False
    if os.path.isdir("/proc/self"):
        st = _proc_stat(pid)
        return st is not None and st[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_of(pid: int) -> Owner:
    """Describe a running process as an owner; refuse (exit 1) a pid that is not running."""
    if not pid_running(pid):
        raise Refused(f"owner pid {pid} is not running.",
                      detail="Action: pass --owner-pid of a live process (scripts: --owner-pid $$).")
    st = _proc_stat(pid) if os.path.isdir("/proc/self") else None
    return Owner(host=hostname(), pid=pid, start=st[1] if st else "", boot=boot_id(), user=username())


def default_owner_pid(env: Mapping[str, str] | None = None) -> int:
    """``$SOP_OWNER_PID`` when set, else the calling process's parent."""
    env = os.environ if env is None else env
    value = env.get("SOP_OWNER_PID", "").strip()
    if value:
        try:
            return int(value)
        except ValueError:
            raise Refused(f"SOP_OWNER_PID={value!r} is not a pid.") from None
    return os.getppid()


@dataclass(frozen=True)
class Liveness:
    alive: bool | None     # True: verified alive here; False: verified gone; None: cannot tell (other host)
    why: str


def liveness(owner: Owner) -> Liveness:
    """Whether an owner still runs, as far as this host can tell."""
    if owner.host != hostname():
        return Liveness(None, f"runs on another host ({owner.host}); cannot check")
    if owner.boot and boot_id() and owner.boot != boot_id():
        return Liveness(False, "the machine has rebooted since")
    if os.path.isdir("/proc/self"):
        st = _proc_stat(owner.pid)
        if st is None:
            return Liveness(False, f"pid {owner.pid} is gone")
        if st[0] in ("Z", "X"):
            return Liveness(False, f"pid {owner.pid} is a zombie")
        if owner.start and st[1] and st[1] != owner.start:
            return Liveness(False, f"pid {owner.pid} is another process now")
        return Liveness(True, f"pid {owner.pid} is alive")
    return Liveness(pid_running(owner.pid), f"pid {owner.pid}")


def is_abandoned(owner: Owner, begun: datetime, now: datetime, older_than: timedelta) -> bool:
    """Abandoned: gone from this host, or on another host and older than ``older_than``."""
    live = liveness(owner)
    if live.alive is None:
        return now - begun > older_than
    return not live.alive
