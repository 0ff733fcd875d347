"""The agent of a test host (tests/cluster/hosts.py): pid 1 of the host's namespaces.

Started by ``unshare --pid --uts --mount --fork --mount-proc`` with the host's
name as its argument; standard library only, run with ``python3 -I -S``.  It
sets the hostname, then reads one JSON command per line on stdin and writes
one JSON event per line on stdout:

    {"op": "spawn", "id": N, "argv": [...], "env": {...} or null, "cwd": str or null,
     "stdin": path or null, "stdout": path, "stderr": path}
        -> {"id": N, "pid": PID}  (the pid inside the host)  or  {"id": N, "error": "..."}
        -> later {"id": N, "exit": RETURNCODE}  (negative: killed by that signal)
    {"op": "signal", "id": N, "sig": SIGNUM}          (no answer; ignored once it has exited)

Its first line is {"ready": true, "pid": 1, "hostname": NAME}.  As every pid
1, it reaps the orphans that the host's processes leave (without stealing the
exit status of a process it spawned).  End of stdin ends the host.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys


def main() -> None:
    socket.sethostname(sys.argv[1])
    procs: dict[int, subprocess.Popen[bytes]] = {}     # id -> process
    by_pid: dict[int, int] = {}                         # pid -> id
    out = sys.stdout

    def emit(ev: dict[str, object]) -> None:
        out.write(json.dumps(ev) + "\n")
        out.flush()

    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    os.set_blocking(rfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)     # a handler, so that SIGCHLD wakes select()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)

    def reap() -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            n = by_pid.pop(pid, None)
            if n is None:
                os.waitpid(pid, 0)                      # an orphan: just reap it
                continue
            rc = procs.pop(n).wait()
            emit({"id": n, "exit": rc})

    emit({"ready": True, "pid": os.getpid(), "hostname": socket.gethostname()})
    stdin = sys.stdin.buffer.raw                        # type: ignore[attr-defined]
    buf = b""
    while True:
        r, _, _ = select.select([stdin, rfd], [], [])
        if rfd in r:
            try:
                while os.read(rfd, 512):
                    pass
            except BlockingIOError:
                pass
        reap()
        if stdin not in r:
            continue
        chunk = os.read(stdin.fileno(), 65536)
        if not chunk:
            return                                      # the harness went away: the host ends (pid 1 exits)
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            cmd = json.loads(line)
            n = cmd["id"]
            if cmd["op"] == "spawn":
                try:
                    with open(cmd["stdin"] or os.devnull, "rb") as i, open(cmd["stdout"], "wb") as o, \
                            open(cmd["stderr"], "wb") as e:
                        p = subprocess.Popen(cmd["argv"], env=cmd["env"], cwd=cmd["cwd"], stdin=i, stdout=o,
                                             stderr=e, start_new_session=cmd.get("session", False))
                except OSError as exc:
                    emit({"id": n, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                procs[n] = p
                by_pid[p.pid] = n
                emit({"id": n, "pid": p.pid})
            elif cmd["op"] == "signal":
                p2 = procs.get(n)
                if p2 is not None and p2.returncode is None:
                    try:
                        os.kill(p2.pid, cmd["sig"])
                    except ProcessLookupError:
                        pass
        reap()


if __name__ == "__main__":
    main()
