"""Plumbing: who owns a transaction, and whether that owner is still alive.

An owner is a process: host, pid, the pid's start time and the boot id
(SPEC §4), the user, and where the pid means something: the machine id and
the PID namespace.  A pid is reused after its process dies, so the start
time tells a new process from the old one; the boot id tells this boot from
the last.

A pid is looked up in this process table only when the owner ran *here*
(:func:`where`): the same host name, the same machine id and the same PID
namespace (each of the last two compared only when both sides know it, so
records written before they were kept compare by host name alone).  Two
containers (or ``unshare --pid --uts``) may carry one host name and see
different processes under one pid; without this each would look up the
other's pid in its own table, find it gone (or some other process), and
roll back a live run.  An owner elsewhere is "on another host": its
liveness cannot be checked here, and it is abandoned only when older than
``--older-than``.

* machine id: ``/etc/machine-id``, else ``/var/lib/dbus/machine-id``
  (Linux, the BSDs with D-Bus); the registry's ``MachineGuid`` (Windows);
  "" elsewhere (macOS: ``ioreg`` costs a process per command).
* PID namespace: the link ``/proc/self/ns/pid`` (``pid:[4026531836]``,
  Linux); "" elsewhere.

Two probes give (state, start time) of a pid:

* Linux: ``/proc/<pid>/stat`` — the start time is the process's start in
  clock ticks since boot (as text, the format journals have always held),
  and the boot id is ``/proc/sys/kernel/random/boot_id``.
* everywhere else (Windows, macOS, the BSDs): psutil — the start time is
  the process's creation time in seconds since the epoch (``"%.6f"``), which
  already differs across a reboot, so the boot id is left empty.

Never ``os.kill(pid, 0)``: on Windows signal 0 is ``CTRL_C_EVENT``, not a
probe.

The default owner is the process that called the command.  On Windows a
console script is a launcher (pip's ``sop-begin.exe``, a venv's
``python.exe`` redirector) that starts the real interpreter as its child and
exits with it, so the parent of the interpreter is gone when the command
returns; the owner is the nearest ancestor that is not such a launcher
(:func:`default_owner_pid`).
"""

from __future__ import annotations

import functools
import getpass
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from .errors import Refused


class Owner(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    pid: int
    start: str = ""        # the pid's start time (see the module docstring); "" when unknown
    boot: str = ""         # the boot id; "" when unknown
    user: str = ""
    machine: str = ""      # the machine id; "" when unknown (and in records written before it was kept)
    pidns: str = ""        # the PID namespace the pid belongs to, "pid:[N]" (Linux); "" when unknown


@dataclass(frozen=True)
class Host:
    """Where a pid means something: what an owner must share with this process to be looked up here."""

    name: str
    machine: str = ""
    pidns: str = ""


def hostname() -> str:
    """This host's name (gethostname(3)); uname gives the same without importing socket (~2 ms)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket
    return socket.gethostname()


def username() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


@functools.cache
def machine_id() -> str:
    """This machine's id (see the module docstring), or "" when unknown.  Read once per process."""
    if sys.platform == "win32":
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SOFTWARE\Microsoft\Cryptography", 0,
                                winreg.KEY_READ | winreg.KEY_WOW64_64KEY) as key:
                value = winreg.QueryValueEx(key, "MachineGuid")[0]
        except OSError:
            return ""
        return value.strip() if isinstance(value, str) else ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                value = f.read(256).strip()
        except OSError:
            continue
        if value and value != "uninitialized":
            return value
    return ""


@functools.cache
def pid_namespace() -> str:
    """This process's PID namespace, ``pid:[N]`` (Linux), or "" when unknown.  Read once per process."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError, NotImplementedError):
        return ""


def this_host() -> Host:
    """Where this process runs (see :class:`Host`)."""
    return Host(hostname(), machine_id(), pid_namespace())


def where(owner: Owner, here: Host | None = None) -> str:
    """"" when the owner's pid can be looked up in this process table, else why not (it is elsewhere).

    Here means the same host name, machine id and PID namespace; the last
    two are compared only when both sides know them.
    """
    here = here or this_host()
    if owner.host != here.name:
        return f"runs on another host ({owner.host})"
    if owner.machine and here.machine and owner.machine != here.machine:
        return f"runs on another machine with the same host name ({owner.host}, machine id {owner.machine[:12]})"
    if owner.pidns and here.pidns and owner.pidns != here.pidns:
        return f"runs in another PID namespace ({owner.host}, {owner.pidns}: a container)"
    return ""


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


Probe = Callable[[int], "tuple[str, str] | None"]


def _probe_proc(pid: int) -> tuple[str, str] | None:
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


def _probe_psutil(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a pid from psutil, or None when there is no such process.

    The state is ``Z`` for a zombie (as /proc says), else ``R``; the start time
    is the creation time, which psutil reads without extra rights on all
    three platforms (on Windows even for other users' processes).
    """
    import psutil

    try:
        p = psutil.Process(pid)
        start = f"{p.create_time():.6f}"
    except psutil.ZombieProcess:                    # a subclass of NoSuchProcess: first
        return ("Z", "")
    except (psutil.NoSuchProcess, ValueError):
        return None
    except (psutil.AccessDenied, OSError):
        return ("?", "") if psutil.pid_exists(pid) else None
    try:
        state = "Z" if p.status() == psutil.STATUS_ZOMBIE else "R"
    except psutil.NoSuchProcess:
        return None
    except (psutil.Error, OSError):
        state = "R"
    return state, start


def _default_probe() -> Probe:
    return _probe_proc if sys.platform.startswith("linux") and os.path.isdir("/proc/self") else _probe_psutil


def _boot_id(probe: Probe) -> str:
    return boot_id() if probe is _probe_proc else ""


def pid_running(pid: int, probe: Probe | None = None) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    if pid <= 0:
        return False
    st = (probe or _default_probe())(pid)
    return st is not None and st[0] not in ("Z", "X")


def owner_of(pid: int, probe: Probe | None = None) -> Owner:
    """Describe a running process as an owner; refuse (exit 1) a pid that is not running."""
    probe = probe or _default_probe()
    st = probe(pid) if pid > 0 else None
    if st is None or st[0] in ("Z", "X"):
        raise Refused(f"owner pid {pid} is not running.",
                      detail="Action: pass --owner-pid of a live process (scripts: --owner-pid $$; "
                             "PowerShell: --owner-pid $PID).")
    return Owner(host=hostname(), pid=pid, start=st[1], boot=_boot_id(probe), user=username(),
                 machine=machine_id(), pidns=pid_namespace())


# ---------------------------------------------------------------- the default owner

@dataclass(frozen=True)
class Proc:
    """What the launcher test needs to know of one process."""

    pid: int
    ppid: int
    exe: str
    cmdline: tuple[str, ...]


def _proc_info(pid: int) -> Proc | None:
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            ppid = p.ppid()
            try:
                exe = p.exe()
            except (psutil.AccessDenied, OSError):
                exe = _image_name(pid)
            try:
                cmdline = tuple(p.cmdline())
            except (psutil.AccessDenied, OSError):
                cmdline = ()
        return Proc(pid, ppid, exe, cmdline)
    except (psutil.Error, OSError):
        return None


def _image_name(pid: int) -> str:
    """The executable of a process through QueryFullProcessImageNameW (Windows), where psutil cannot say.

    psutil reads it with NtQuerySystemInformation, which Wine lacks; this
    needs only PROCESS_QUERY_LIMITED_INFORMATION.
    """
    if os.name != "nt":
        return ""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    handle = kernel32.OpenProcess(0x1000, False, pid)
    if not handle:
        return ""
    try:
        buf = ctypes.create_unicode_buffer(32768)
        size = wintypes.DWORD(len(buf))
        ok = kernel32.QueryFullProcessImageNameW(wintypes.HANDLE(handle), 0, buf, ctypes.byref(size))
        return buf.value if ok else ""
    finally:
        kernel32.CloseHandle(wintypes.HANDLE(handle))


def _same_path(a: str, b: str) -> bool:
    if not a or not b:
        return False
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def is_launcher_of(parent: Proc, script: str, args: Sequence[str]) -> bool:
    """Whether ``parent`` only launched this interpreter and exits with it.

    ``script`` is this interpreter's ``sys.argv[0]`` and ``args`` its
    arguments after the interpreter (``sys.orig_argv[1:]``).  A console-script
    launcher (pip's ``sop-begin.exe``) is itself the script the interpreter
    runs; a redirector (a venv's ``python.exe``, ``py.exe``) ran with the same
    arguments that it passed on.
    """
    if _same_path(parent.exe, script) or _same_path(parent.exe, script + ".exe"):   # pip's drops the .exe
        return True
    return bool(args) and len(parent.cmdline) > 1 and list(parent.cmdline[1:]) == list(args)


def owner_ancestor(ppid: int, script: str, args: Sequence[str],
                   info: Callable[[int], Proc | None] = _proc_info, limit: int = 4) -> int:
    """The nearest ancestor, from ``ppid`` up, that is not a launcher of this interpreter."""
    pid = ppid
    for _ in range(limit):
        p = info(pid)
        if p is None or p.ppid <= 0 or not is_launcher_of(p, script, args):
            return pid
        pid = p.ppid
    return pid


def default_owner_pid(env: Mapping[str, str] | None = None, *, launchers: bool | None = None) -> int:
    """``$SOP_OWNER_PID`` when set, else the calling process: the parent, past any launcher.

    ``launchers`` (default: on Windows) looks past console-script launchers;
    on POSIX a console script is a plain script, so the parent is the caller.
    """
    env = os.environ if env is None else env
    value = env.get("SOP_OWNER_PID", "").strip()
    if value:
        try:
            return int(value)
        except ValueError:
            raise Refused(f"SOP_OWNER_PID={value!r} is not a pid.") from None
    ppid = os.getppid()
    if launchers is None:
        launchers = os.name == "nt"
    if not launchers:
        return ppid
    return owner_ancestor(ppid, sys.argv[0], getattr(sys, "orig_argv", sys.argv)[1:])


# ---------------------------------------------------------------- liveness

@dataclass(frozen=True)
class Liveness:
    alive: bool | None     # True: verified alive here; False: verified gone; None: cannot tell (other host)
    why: str


def liveness(owner: Owner, probe: Probe | None = None, here: Host | None = None) -> Liveness:
    """Whether an owner still runs, as far as this host can tell (never when it ran elsewhere: :func:`where`)."""
    elsewhere = where(owner, here)
    if elsewhere:
        return Liveness(None, f"{elsewhere}; cannot check")
    probe = probe or _default_probe()
    boot = _boot_id(probe)
    if owner.boot and boot and owner.boot != boot:
        return Liveness(False, "the machine has rebooted since")
    st = probe(owner.pid) if owner.pid > 0 else None
    if st is None:
        return Liveness(False, f"pid {owner.pid} is gone")
    if st[0] in ("Z", "X"):
        return Liveness(False, f"pid {owner.pid} is a zombie")
    if owner.start and st[1] and st[1] != owner.start:
        return Liveness(False, f"pid {owner.pid} is another process now")
    return Liveness(True, f"pid {owner.pid} is alive")


def is_abandoned(owner: Owner, begun: datetime, now: datetime, older_than: timedelta, *,
                 probe: Probe | None = None, here: Host | None = None, live: Liveness | None = None) -> bool:
    """Abandoned: gone from this host, or on another host and older than ``older_than`` (SPEC §4).

    ``live`` is the owner's liveness when the caller already has it.
    """
    live = live if live is not None else liveness(owner, probe, here)
    if live.alive is None:
        return now - begun > older_than
    return not live.alive
