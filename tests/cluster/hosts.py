"""Hosts for the cluster tests: each a separate machine made of Linux namespaces, one filesystem for all.

A :class:`Host` is ``unshare --pid --uts --mount --fork --mount-proc`` (plus
``--net`` on request) around a small agent (``host_agent.py``) that is the
host's pid 1.  Inside, processes see only the host's pids in ``/proc`` and
the host's name from ``hostname``; the filesystem is the same as outside (the
mount namespace is a copy), so a workspace under pytest's ``tmp_path`` and the
throwaway PostgreSQL's Unix socket are shared by every host.  With
``net=True`` the host has no network at all (not even loopback TCP to the
outside), but the Unix socket still works: prefer the Unix-socket DSN.

:meth:`Host.kill` is a power cut: SIGKILL to the host's init, and the kernel
kills everything in the pid namespace with it; it returns once nothing of
the host is left.

    h = Host("a")
    p = h.run(["hostname"])                       # Result(returncode=0, stdout='a\\n', stderr='')
    s = h.spawn(["sleep", "60"])                  # Proc: .pid (inside), .outer_pid(), .wait(), .returncode
    h.kill()                                      # s is dead, and so is everything else inside

Needs root (or CAP_SYS_ADMIN) and util-linux's ``unshare``; :func:`unavailable`
says why not, or None.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

AGENT = Path(__file__).resolve().parent / "host_agent.py"


@dataclass(frozen=True)
class Result:
    """What :meth:`Host.run` returns: like ``subprocess.CompletedProcess`` (text output)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check_returncode(self) -> None:
        if self.returncode != 0:
            raise subprocess.CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)


@functools.cache
def unavailable() -> str | None:
    """Why hosts cannot be made on this machine, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "hosts are Linux namespaces: not on " + sys.platform
    if shutil.which("unshare") is None:
        return "util-linux's unshare is not installed"
    p = subprocess.run(["unshare", "--pid", "--uts", "--mount", "--fork", "--mount-proc", "true"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return f"cannot make pid/uts/mount namespaces (root or CAP_SYS_ADMIN needed): {p.stderr.strip()}"
    return None


def pid_namespace(pid: int) -> str | None:
    """The pid namespace of a process as seen from here ('pid:[4026...]'), or None once it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:                        # gone, or not ours to look at
        return None


def pids_in_namespace(ns: str) -> list[int]:
    """Every live process (outside pids) in the pid namespace ``ns`` or in one nested in it."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and pid_namespace(int(d)) == ns:
            out.append(int(d))
    return out


class Proc:
    """A process spawned in a host: like ``subprocess.Popen`` with its output captured to files."""

    def __init__(self, host: Host, n: int, args: list[str], out: Path, err: Path) -> None:
        self.host = host
        self.id = n
        self.args = args
        self.pid = 0                       # inside the host
        self._out, self._err = out, err
        self._started = threading.Event()
        self._done = threading.Event()
        self._error: str | None = None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.host._send({"op": "signal", "id": self.id, "sig": int(sig)})

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    @property
    def stdout(self) -> str:
        """What it wrote to stdout so far (all of it once it has exited)."""
        return self._out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err.read_text(errors="replace")

    def outer_pid(self) -> int | None:
        """Its pid as seen from outside the host (None once it is gone)."""
        ns = self.host.pid_namespace
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                status = Path(f"/proc/{d}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    if len(ids) >= 2 and int(ids[-1]) == self.pid and pid_namespace(int(d)) == ns:
                        return int(d)
        return None

    def result(self) -> Result:
        return Result(self.args, self.wait(), self.stdout, self.stderr)


class Host:
    """A separate host: its own pids, hostname and mounts (and network with ``net=True``); the same files.

    Starts at once; :meth:`close` (or the ``with`` block's end) or :meth:`kill` ends it.
    ``env`` is the default environment of its commands (this process's at start when None).
    """

    def __init__(self, name: str, *, net: bool = False, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.net = net
        self.env = dict(os.environ if env is None else env)
        self._dir = Path(tempfile.mkdtemp(prefix=f"sop-host-{name}-"))
        self._lock = threading.Lock()
        self._procs: dict[int, Proc] = {}
        self._next = 0
        self._dead = threading.Event()
        argv = ["unshare", "--pid", "--uts", "--mount", "--fork", "--mount-proc", *(["--net"] if net else []),
                sys.executable, "-I", "-S", str(AGENT), name]
        with open(self._dir / "agent.err", "wb") as err:
            self._unshare = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd="/")
        assert self._unshare.stdout is not None and self._unshare.stdin is not None
        self._stdin = self._unshare.stdin
        line = self._unshare.stdout.readline()
        if not line:
            self._unshare.wait()
            raise RuntimeError(f"host {name}: the agent did not start: {(self._dir / 'agent.err').read_text()}")
        hello = json.loads(line)
        assert hello["pid"] == 1 and hello["hostname"] == name, hello
        self._init = self._find_init()
        self.pid_namespace = pid_namespace(self._init)
        self._reader = threading.Thread(target=self._read_events, name=f"host-{name}", daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"<Host {self.name} init={self._init}{' dead' if self._dead.is_set() else ''}>"

    # ---------------------------------------------------------------- the agent's protocol

    def _find_init(self) -> int:
        """The agent's pid outside: the only child of unshare."""
        pid = self._unshare.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
        assert len(kids) == 1, kids
        return kids[0]

    def _send(self, cmd: dict[str, object]) -> None:
        data = (json.dumps(cmd) + "\n").encode()
        with self._lock:
            if self._dead.is_set():
                raise RuntimeError(f"host {self.name} is dead")
            try:
                self._stdin.write(data)
                self._stdin.flush()
            except BrokenPipeError:
                raise RuntimeError(f"host {self.name} is dead") from None

    def _read_events(self) -> None:
        assert self._unshare.stdout is not None
        for line in self._unshare.stdout:
            ev = json.loads(line)
            p = self._procs.get(ev["id"])
            if p is None:
                continue
            if "pid" in ev:
                p.pid = ev["pid"]
                p._started.set()
            elif "error" in ev:
                p._error = ev["error"]
                p.returncode = 127
                p._started.set()
                p._done.set()
                del self._procs[p.id]
            elif "exit" in ev:
                p.returncode = ev["exit"]
                p._done.set()
                del self._procs[p.id]
        # The host is gone (killed, or its agent ended): whatever ran there died with it.
        self._dead.set()
        for p in list(self._procs.values()):
            p.returncode = -signal.SIGKILL
            p._started.set()
            p._done.set()
        self._procs.clear()

    # ---------------------------------------------------------------- running things

    def spawn(self, argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None, input: str | None = None,
              new_session: bool = False) -> Proc:
        """Start ``argv`` in the host in the background; stdout and stderr are kept in files.

        ``env`` replaces the host's environment (as subprocess does); ``input`` is its stdin (else /dev/null).
        Raises OSError's message as RuntimeError when the program cannot be started.
        """
        args = [os.fspath(a) for a in argv]
        with self._lock:
            n = self._next
            self._next += 1
        base = self._dir / str(n)
        stdin = None
        if input is not None:
            stdin = base.with_suffix(".in")
            stdin.write_text(input)
        p = Proc(self, n, args, base.with_suffix(".out"), base.with_suffix(".err"))
        self._procs[n] = p
        self._send({"op": "spawn", "id": n, "argv": args, "env": dict(self.env if env is None else env),
                    "cwd": None if cwd is None else os.fspath(cwd), "stdin": None if stdin is None else str(stdin),
                    "stdout": str(p._out), "stderr": str(p._err), "session": new_session})
        p._started.wait()
        if p._error is not None:
            raise RuntimeError(f"host {self.name}: cannot run {args}: {p._error}")
        return p

    def run(self, argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
            cwd: str | os.PathLike[str] | None = None, input: str | None = None, timeout: float | None = 120,
            check: bool = False) -> Result:
        """Run ``argv`` in the host and wait for it, like ``subprocess.run(..., capture_output=True, text=True)``.

        On timeout the process is killed and ``subprocess.TimeoutExpired`` raised.
        """
        p = self.spawn(argv, env=env, cwd=cwd, input=input)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            raise
        r = p.result()
        if check:
            r.check_returncode()
        return r

    def pid_of_init(self) -> int:
        """The host's pid 1 as seen from outside."""
        return self._init

    def pids(self) -> list[int]:
        """The outside pids of every process left in the host (its init included)."""
        return pids_in_namespace(self.pid_namespace) if self.pid_namespace else []

    @property
    def alive(self) -> bool:
        return not self._dead.is_set() and self._unshare.poll() is None

    # ---------------------------------------------------------------- the end

    def kill(self, timeout: float = 10) -> None:
        """Power cut: SIGKILL the host's init; every process inside dies with it.  Returns once all are gone."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._init, signal.SIGKILL)
        self._unshare.wait(timeout)
        self._reader.join(timeout)
        deadline = time.monotonic() + timeout
        while self.pids():                     # the kernel has reaped them all by now; make sure
            if time.monotonic() > deadline:
                raise AssertionError(f"host {self.name}: processes survived the kill: {self.pids()}")
            time.sleep(0.005)
        self._close_files()

    def close(self) -> None:
        """End the host (a kill: nothing inside is worth a clean shutdown) and remove its output files."""
        if self._unshare.poll() is None:
            self.kill()
        self._close_files()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _close_files(self) -> None:
        for f in (self._unshare.stdin, self._unshare.stdout):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
