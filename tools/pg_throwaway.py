"""A throwaway PostgreSQL cluster in a temporary folder, for the cluster tests (tests/cluster/).

It uses the server binaries of the machine's PostgreSQL (Debian's packages:
``pg_config --bindir``, else the newest ``/usr/lib/postgresql/*/bin``, else
``initdb`` on PATH), never a system service.  The folder holds everything::

    BASE/                 the cluster's folder (mode 0755, owned by the server's user)
      data/               initdb's data directory
      .s.PGSQL.PORT       the Unix socket the server listens on (clients: host=BASE)
      server.log          the server's log
      dsn                 the libpq DSN of the database made for the tests, one line

The server keeps ``fsync`` and ``synchronous_commit`` on (the tests check
durability), allows 300 connections (tests run hundreds of processes), trusts
local connections (a throwaway cluster) and listens on loopback TCP only when
asked.  initdb refuses to run as root, so under root the server runs as the
``postgres`` user that Debian's package creates (``nobody`` when there is
none); the socket folder stays usable by root and by processes in other
namespaces, since a socket path in a shared folder needs no network.

From Python::

    with Throwaway.start() as pg:          # or pg = Throwaway.start(); ...; pg.stop()
        pg.dsn                             # 'host=/tmp/sop-pg-xxxx port=5432 dbname=sop user=postgres'

From a shell: ``python3 tools/pg_throwaway.py start [--dir DIR] [--tcp]`` prints
the DSN (starting again on the same DIR reuses the running server);
``python3 tools/pg_throwaway.py stop DIR`` stops it and removes DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

DBNAME = "sop"
SUPERUSER = "postgres"
SETTINGS = {
    "max_connections": "300",          # hundreds of concurrent test processes, a connection or two each
    "shared_buffers": "16MB",
    "fsync": "on",                     # the tests check durability: never turn these off
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_wal_size": "256MB",
    "log_min_messages": "warning",
    "log_connections": "off",
    "unix_socket_permissions": "0777",
}


class Unavailable(RuntimeError):
    """No PostgreSQL server binaries, or no way to run them here; the message says what to install."""


def find_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))

    def version(p: str) -> tuple[int, ...]:
        v = Path(p).parent.name
        return tuple(int(x) for x in v.split(".") if x.isdigit())
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for c in candidates:
        if all((c / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return c
    return None


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: None (this user) unless we are root, whom initdb refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise Unavailable("running as root and there is neither a postgres nor a nobody user to run the server as")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Throwaway:
    """One throwaway cluster in ``base``: :meth:`start` makes or reuses it, :meth:`stop` removes it."""

    def __init__(self, base: Path, bindir: Path, port: int, tcp: bool) -> None:
        self.base = base
        self.bindir = bindir
        self.port = port
        self.tcp = tcp

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def dsn(self) -> str:
        """The libpq DSN of the tests' database over the Unix socket (works across network namespaces)."""
        return self.dsn_for(DBNAME)

    def dsn_for(self, dbname: str, *, tcp: bool = False) -> str:
        host = "127.0.0.1" if tcp else str(self.base)
        return f"host={host} port={self.port} dbname={dbname} user={SUPERUSER}"

    # ---------------------------------------------------------------- start and stop

    @classmethod
    def start(cls, base: Path | str | None = None, *, tcp: bool = False, dbname: str = DBNAME) -> Throwaway:
        """Start the cluster in ``base`` (a new folder under /tmp when None) and make the database ``dbname``.

        Idempotent: on a folder whose server runs, it returns that server; on one whose server stopped,
        it starts it again.  ``tcp=True`` also listens on 127.0.0.1 on a free port (the socket uses the
        same port number).  Raises :class:`Unavailable` when there are no server binaries.
        """
        bindir = find_bindir()
        if bindir is None:
            raise Unavailable("no PostgreSQL server binaries (initdb, pg_ctl, postgres): "
                              "apt-get install postgresql, or set $SOP_TEST_PG_DSN to a server's DSN")
        user = _server_user()
        # A short path: a Unix socket's path must fit in 107 bytes, and pytest's tmp_path may not.
        b = Path(tempfile.mkdtemp(prefix="sop-pg-", dir="/tmp")) if base is None else Path(base)
        b.mkdir(parents=True, exist_ok=True)
        if len(str(b / ".s.PGSQL.65535")) > 107:
            raise ValueError(f"{b}: too long for a Unix socket path (107 bytes at most)")
        os.chmod(b, 0o755)
        if user is not None:
            os.chown(b, user.pw_uid, user.pw_gid)
        port_file = b / "port"
        if port_file.exists():
            port, tcp = int(port_file.read_text().split()[0]), "tcp" in port_file.read_text()
        else:
            port = _free_port() if tcp else 5432
        pg = cls(b, bindir, port, tcp)
        if not (pg.data / "PG_VERSION").exists():
            pg._initdb()
            port_file.write_text(f"{port}{' tcp' if tcp else ''}\n")
        if not pg.running():
            pg._as_server(["pg_ctl", "start", "-w", "-t", "60", "-s", "-D", str(pg.data),
                           "-l", str(b / "server.log")], what="pg_ctl start")
        pg._createdb(dbname)
        (b / "dsn").write_text(pg.dsn_for(dbname) + "\n")
        return pg

    def running(self) -> bool:
        return self._as_server(["pg_ctl", "status", "-D", str(self.data)], what="", check=False).returncode == 0

    def stop(self) -> None:
        """Stop the server (immediately: nothing here is kept) and remove the folder."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self._as_server(["pg_ctl", "stop", "-w", "-t", "60", "-s", "-m", "immediate", "-D", str(self.data)],
                                what="pg_ctl stop")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Throwaway:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers

    def _initdb(self) -> None:
        self._as_server(["initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-sync",
                         "--locale=C", "-E", "UTF8", "--no-instructions"], what="initdb")
        settings = dict(SETTINGS, port=str(self.port), unix_socket_directories=f"'{self.base}'",
                        listen_addresses="'127.0.0.1'" if self.tcp else "''")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# tools/pg_throwaway.py\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def _as_server(self, argv: Sequence[str], *, what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one of the server's programs as the server's user; RuntimeError with its output on failure."""
        user = _server_user()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(self.base),
               "TZ": "UTC"}
        kw: dict[str, object] = {}
        if user is not None:
            kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        p = subprocess.run([str(self.bindir / argv[0]), *argv[1:]], cwd=self.base, env=env, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=120, **kw)  # type: ignore[call-overload]
        if check and p.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} failed (exit {p.returncode}): {p.stdout}{p.stderr}{tail}")
        return p

    def _createdb(self, dbname: str) -> None:
        """CREATE DATABASE dbname unless it exists (with psql, the client shipped next to the server)."""
        psql = self.bindir / "psql" if (self.bindir / "psql").exists() else shutil.which("psql")
        if psql is None:
            raise Unavailable("psql not found next to the server binaries")

        def q(sql: str, db: str = "postgres") -> str:
            p = subprocess.run([str(psql), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", self.dsn_for(db),
                                "-c", sql], capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                raise RuntimeError(f"psql {sql!r}: {p.stderr}")
            return p.stdout.strip()
        if q(f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'") != "1":
            q(f'CREATE DATABASE "{dbname}"')


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="start (or reuse) a cluster; prints its DSN")
    st.add_argument("--dir", type=Path, help="the cluster's folder (default: a new one under /tmp)")
    st.add_argument("--tcp", action="store_true", help="also listen on 127.0.0.1 on a free port")
    sp = sub.add_parser("stop", help="stop a cluster and remove its folder")
    sp.add_argument("dir", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "start":
            print(Throwaway.start(a.dir, tcp=a.tcp).dsn)
        else:
            bindir = find_bindir()
            if bindir is None:
                raise Unavailable("no PostgreSQL server binaries")
            Throwaway(a.dir, bindir, 0, False).stop()
    except (Unavailable, RuntimeError, ValueError) as e:
        print(f"pg_throwaway: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
