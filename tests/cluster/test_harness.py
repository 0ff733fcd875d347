"""The cluster harness itself: hosts are separate machines on one filesystem, and PostgreSQL serves them all.

What the store and lease tests will rely on: a host sees only its own
processes and has its own name; a file written on one host is read on
another; killing a host kills everything in it at once; the server is
reached from inside any host over its Unix socket (even a host without a
network); and the server drops a dead host's sessions, and so its advisory
locks, as soon as the host dies.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.conftest import pg_throwaway, psycopg, unavailable
from cluster.hosts import Host

HostFactory = Callable[..., Host]

# A client that takes a session-level advisory lock, says so, and holds it (and its connection) until killed.
LOCKER = """\
import sys, time, psycopg
c = psycopg.connect(sys.argv[1], autocommit=True)
c.execute("SELECT pg_advisory_lock(%s)", (int(sys.argv[2]),))
print("locked", c.info.backend_pid, flush=True)
time.sleep(600)
"""

# A client that reports where it is and how it reached the server.
WHOAMI = """\
import socket, sys, psycopg
with psycopg.connect(sys.argv[1]) as c:
    addr, db = c.execute("SELECT inet_client_addr(), current_database()").fetchone()
print(socket.gethostname(), addr, db)
"""


def wait_for(pred: Callable[[], object], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        time.sleep(0.002)


def alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return st.rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------- hosts

def test_a_host_starts_well_under_a_second_and_its_commands_cost_little_more(hosts: HostFactory) -> None:
    t0 = time.perf_counter()
    h = hosts("quick")
    start = time.perf_counter() - t0
    h.run(["true"], check=True)
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        h.run(["true"], check=True)
    via_host = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(["true"], check=True)
    plain = (time.perf_counter() - t0) / n
    print(f"host start {start * 1e3:.0f} ms; `true` via the host {via_host * 1e3:.2f} ms, plain {plain * 1e3:.2f} ms")
    assert start < 1.0
    assert via_host < plain + 0.050


def test_each_host_has_its_own_name_and_sees_only_its_own_processes(hosts: HostFactory) -> None:
    a, b = hosts("alpha"), hosts("beta")
    assert a.run(["hostname"]).stdout == "alpha\n"
    assert b.run(["hostname"]).stdout == "beta\n"
    assert socket.gethostname() not in ("alpha", "beta")          # the host's name stayed inside it
    sleeper = a.spawn(["sleep", "600"])
    outer = sleeper.outer_pid()
    assert outer is not None and outer != sleeper.pid and alive(outer)

    def proc_pids(h: Host) -> set[int]:
        return {int(x) for x in h.run(["ls", "/proc"], check=True).stdout.split() if x.isdigit()}
    in_a, in_b = proc_pids(a), proc_pids(b)
    assert sleeper.pid in in_a and outer not in in_a           # A sees its process under its own pid only
    assert outer not in in_b and a.pid_of_init() not in in_b   # B sees nothing of A ...
    assert os.getpid() not in in_b and os.getpid() not in in_a  # ... nor of the test's own machine
    assert len(in_b) <= 3, in_b                                # B: its init and the ls (and a zombie at most)
    assert "host_agent.py" in b.run(["cat", "/proc/1/cmdline"]).stdout
    assert b.run(["kill", "-0", str(outer)]).returncode != 0   # and cannot signal it
    assert alive(outer)


def test_hosts_share_the_filesystem(hosts: HostFactory, tmp_path: Path) -> None:
    a, b = hosts("alpha"), hosts("beta")
    ws = tmp_path / "ws"
    ws.mkdir()
    a.run(["sh", "-c", "hostname > from-a"], cwd=ws, check=True)
    assert b.run(["cat", str(ws / "from-a")], check=True).stdout == "alpha\n"
    assert (ws / "from-a").read_text() == "alpha\n"


def test_run_returns_exit_status_output_and_environment(hosts: HostFactory, tmp_path: Path) -> None:
    h = hosts("alpha")
    r = h.run(["sh", "-c", 'echo "$GREETING"; pwd; echo oops >&2; exit 7'], env={"GREETING": "hi", "PATH": "/bin"},
              cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (7, f"hi\n{tmp_path}\n", "oops\n")
    assert h.run(["cat"], input="fed\n").stdout == "fed\n"
    with pytest.raises(subprocess.CalledProcessError):
        h.run(["false"], check=True)
    with pytest.raises(subprocess.TimeoutExpired):
        h.run(["sleep", "60"], timeout=0.2)
    with pytest.raises(RuntimeError, match="cannot run"):
        h.run(["/no/such/program"])
    p = h.spawn(["sh", "-c", "read x; echo got $x"], input="it\n")
    assert p.wait(10) == 0 and p.stdout == "got it\n"
    s = h.spawn(["sleep", "600"])
    s.terminate()
    assert s.wait(10) == -15


def test_killing_a_host_kills_everything_in_it_at_once(hosts: HostFactory, tmp_path: Path) -> None:
    h = hosts("doomed")
    other = hosts("bystander")
    survivor = other.spawn(["sleep", "600"])
    direct = h.spawn(["sleep", "600"])
    stubborn = h.spawn(["sh", "-c", "trap '' TERM HUP INT; sleep 600"])
    # daemons: double-forked into new sessions, orphans reparented to the host's init
    h.run(["sh", "-c", "setsid sh -c 'sleep 600 & sleep 600' >/dev/null 2>&1 & (nohup sleep 600 >/dev/null &)"],
          check=True)
    wait_for(lambda: len(h.pids()) >= 7, what="the host's processes")   # init, 2 spawned (+sleep), 4 daemons
    outer = h.pids()
    assert h.pid_of_init() in outer
    t0 = time.perf_counter()
    h.kill()
    took = time.perf_counter() - t0
    print(f"host.kill(): {len(outer)} processes gone in {took * 1e3:.1f} ms")
    assert h.pids() == [] and not h.alive
    assert not any(alive(p) for p in outer), [p for p in outer if alive(p)]
    assert direct.returncode == -9 and stubborn.returncode == -9
    assert other.alive and survivor.returncode is None and other.run(["true"]).returncode == 0
    with pytest.raises(RuntimeError, match="dead"):
        h.run(["true"])


# ---------------------------------------------------------------- PostgreSQL from the hosts

def test_the_server_serves_two_hosts_over_its_unix_socket(hosts: HostFactory, pg_db: str) -> None:
    pg = psycopg()
    host = pg.conninfo.conninfo_to_dict(pg_db).get("host", "")
    if not str(host).startswith("/"):
        unavailable(f"these tests want a Unix-socket DSN (host=/folder); $SOP_TEST_PG_DSN has host={host}")
    dbname = pg.conninfo.conninfo_to_dict(pg_db)["dbname"]
    for h in (hosts("alpha"), hosts("beta")):
        r = h.run([sys.executable, "-c", WHOAMI, pg_db])
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [h.name, "None", dbname]     # no client address: the Unix socket


def test_a_throwaway_cluster_under_tmp_serves_a_host_without_network(hosts: HostFactory) -> None:
    """The DSN works inside a host's own network namespace (no loopback to the outside): the socket is a file."""
    pt = pg_throwaway()
    try:
        pg = pt.Throwaway.start(tcp=True)
    except pt.Unavailable as e:
        unavailable(str(e))
    try:
        assert pg.dsn.startswith("host=/tmp/")
        assert pt.Throwaway.start(pg.base).dsn == pg.dsn                # starting again: the same server
        offline, online = hosts("offline", net=True), hosts("online")
        r = offline.run([sys.executable, "-c", WHOAMI, pg.dsn])
        assert r.returncode == 0 and r.stdout.split() == ["offline", "None", "sop"], r.stderr
        tcp = pg.dsn_for("sop", tcp=True)
        r = online.run([sys.executable, "-c", WHOAMI, tcp])
        assert r.returncode == 0 and r.stdout.split() == ["online", "127.0.0.1", "sop"], r.stderr
        r = offline.run([sys.executable, "-c", WHOAMI, tcp + " connect_timeout=2"])
        assert r.returncode != 0                                       # no network: TCP cannot get out
        with psycopg().connect(pg.dsn) as c:
            assert int(c.execute("SHOW max_connections").fetchone()[0]) >= 300
            assert c.execute("SHOW fsync").fetchone()[0] == "on"
    finally:
        pg.stop()
    assert not pg.base.exists()


def test_a_dead_hosts_advisory_lock_is_released_at_once(hosts: HostFactory, pg_db: str) -> None:
    pg = psycopg()
    a = hosts("alpha")
    locker = a.spawn([sys.executable, "-c", LOCKER, pg_db, "42"])
    wait_for(lambda: "locked" in locker.stdout or locker.returncode is not None, what="the lock")
    m = re.match(r"locked (\d+)", locker.stdout)
    assert m, locker.stderr
    backend = int(m.group(1))
    with pg.connect(pg_db, autocommit=True) as c:
        def free() -> bool:
            got = c.execute("SELECT pg_try_advisory_lock(42)").fetchone()[0]
            if got:
                c.execute("SELECT pg_advisory_unlock(42)")
            return bool(got)
        assert not free()                                          # held by the process on host alpha
        t0 = time.perf_counter()
        a.kill()
        wait_for(free, timeout=10, what="the server to release the dead host's lock")
        took = time.perf_counter() - t0
        gone = not c.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()
    print(f"advisory lock released {took * 1e3:.1f} ms after host.kill() began")
    assert gone
    assert took < 2.0


def test_the_server_takes_hundreds_of_connections_at_once(pg_db: str) -> None:
    """The store's tests run hundreds of processes, each holding a connection or two."""
    pg = psycopg()
    conns = []
    try:
        for _ in range(250):
            conns.append(pg.connect(pg_db, autocommit=True))
        with pg.connect(pg_db) as c:
            n = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()[0]
        assert n >= 251
    finally:
        for c in conns:
            c.close()
