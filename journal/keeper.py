"""Plumbing: the lease keeper of a transaction begun by ``sop-begin`` (PostgreSQL store).

``sop-begin`` exits at once, but the transaction it opens belongs to another
process (``--owner-pid``, or its parent).  With the PostgreSQL store that
owner's liveness is a lease (:mod:`journal.pgstore`): so ``sop-begin``
starts this small process on the owner's host, detached from the terminal's
signals.  It takes the lease, says ``ok`` on stdout and waits for ``go`` on
stdin (the ``begin`` is journaled in between; without ``go`` it lets the
lease go, for the begin did not happen).  Then it holds the lease while the
owner pid runs (same pid, same start time) and the transaction is open,
checking every ``POLL`` seconds.  When the owner dies, or the whole host
does, the lease is free and every host sees the transaction abandoned.

    python -m journal.keeper ROOT TXID PID START
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

import msgspec

from . import pgstore
from .errors import Busy, SopError
from .owner import Owner, hostname, liveness
from .workspace import Workspace, open_workspace

POLL = pgstore.KEEPER_POLL


class Keeper:
    """A started keeper: it holds the lease; :meth:`go` once the begin is on record, :meth:`stop` if not."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def go(self) -> None:
        """The begin is on record.  A keeper that died meanwhile changes nothing here: the run is begun,
        its lease is free, and recovery rolls it back as abandoned (its txid is still printed)."""
        stdin: IO[bytes] | None = self.proc.stdin
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.write(b"go\n")
                stdin.close()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()               # EOF without "go": the keeper lets the lease go
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start(ws: Workspace, txid: str, owner: Owner) -> Keeper:
    """Start a keeper for ``txid`` and return once it holds the lease (Busy, exit 6, when it can't)."""
    flags = 0
    if sys.platform == "win32":
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
    # The keeper must import this very package (bin/ scripts put it on sys.path, not in $PYTHONPATH;
    # another sop installed elsewhere would be another version).
    here = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "SOP_JOURNAL_DSN": pgstore.dsn_of(ws), "PYTHONPATH": path}
    proc = subprocess.Popen([sys.executable, "-m", "journal.keeper", str(ws.root), txid, str(owner.pid),
                             owner.start], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=sys.platform != "win32",
                            creationflags=flags)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    if line.strip() != b"ok":
        proc.kill()
        proc.wait()
        if line.startswith(b"error "):                # the keeper's own error, as the keeper saw it
            raise msgspec.json.decode(line[6:], type=_Failure).error()
        raise Busy(f"the lease keeper of {txid} could not take its lease in {pgstore.shown(pgstore.dsn_of(ws))}",
                   detail="Action: check the PostgreSQL server, then run the command again.")
    return Keeper(proc)


def keep(ws: Workspace, txid: str, owner: Owner) -> None:
    """Hold ``txid``'s lease while ``owner`` lives and the transaction is open."""
    pgstore.take_lease(ws, txid)
    sys.stdout.write("ok\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return
    pgstore.keep_lease(ws, txid, alive=lambda: liveness(owner).alive is not False)


class _Failure(msgspec.Struct):
    code: int
    message: str
    detail: str | None = None

    def error(self) -> SopError:
        e = SopError(self.message, detail=self.detail)
        e.exit_code = self.code
        return e


def main(argv: list[str]) -> int:
    root, txid, pid, start_time = argv
    try:
        ws = open_workspace(root)
        keep(ws, txid, Owner(host=hostname(), pid=int(pid), start=start_time))
    except SopError as e:
        sys.stdout.write("error " + msgspec.json.encode(_Failure(e.exit_code, e.message, e.detail)).decode() + "\n")
        sys.stdout.flush()
        return 1
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
