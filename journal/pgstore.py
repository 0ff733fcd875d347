r"""Plumbing: the PostgreSQL journal store (``[journal] store = "postgresql"``).

For many hosts sharing one workspace.  The file store's locks (``flock``)
and its view of a segment's end can't be trusted on a network file system;
here the database serializes appends and holds the locks, and the server
releases a dead process's locks itself.

Records
=======
Each record is the exact line the file store would write (without its
``\n``): the same checksum and hash chain, so ``sop-log``, ``sop-fsck`` and
sop-journal(5) hold for both stores.  Tables (``sop init --store
postgresql`` creates them; one database per workspace)::

    sop_meta(key text PRIMARY KEY, value text)          -- "schema" = "1", "workspace" = its id
    sop_journal(seq bigint PRIMARY KEY, txid text, type text,
                names text[],                            -- "s:<strategy key>", "r:<run key>" (wal.named)
                line bytea)
    sop_open(name text PRIMARY KEY, txid text)          -- the names an open run holds
    sop_checkpoint(seq bigint PRIMARY KEY, hash text,
                   body bytea,                           -- wal.Checkpoint as JSON (open transactions)
                   ledger bytea)                         -- the committed rows as of seq (journal.ledger)

An append is one call of ``sop_append(seq, txid, type, names, line, open,
close)``, one database transaction: it takes a transaction-scoped advisory
lock, checks that ``seq`` comes next, inserts the record (``seq`` is the
primary key: two writers can never both write record N), and maintains
``sop_open``: a ``begin`` inserts its strategy and run-id keys there (a
unique key, so racing begins collide even if the locks failed), a record
that ends a transaction deletes them.  The commit is durable when the call
returns (``synchronous_commit`` is left on).

A writer refreshes its view by reading the records after the last one it
knows, verifying each line's sum and chain.  Every
``$SOP_PG_CHECKPOINT_RECORDS`` records (10,000) the writer adds a
checkpoint row, so loading reads one checkpoint and the records after it.
Only the two newest checkpoints keep their ledger (the committed rows); an
older one's is emptied, and a reader that needs it replays the records.

Locks
=====
The workspace lock and the sheet writer's lock are session-level advisory
locks, ``pg_advisory_lock(0x736f70, 1)`` and ``(0x736f70, 2)``, taken with
``lock_timeout`` set to ``[lock] timeout_seconds`` (exit 6 after it).  The
server releases them when the holding process dies or its connection is
cut.  A command never reconnects while it holds one: a lost session fails
the command (exit 5, :class:`StoreLost`), and ``sop-recover`` finishes what
it journaled.  Each thread has its own connection, so threads of one
process exclude each other as processes do.

Leases
======
The process that owns a transaction holds the session-level advisory lock
``pg_advisory_lock(<first 8 bytes of SHA-256(txid)>)`` for the
transaction's life, taken *before* its ``begin`` is journaled (the record
says ``"lease": true``).  Any host tells a leased transaction's owner is
gone by trying that lock (:func:`lease_free`): free means abandoned, at
once and with no age limit; held means alive, whatever the host.  ``sop-run``
and the Python API hold their own lease; for ``sop-begin``, a small keeper
process (:mod:`journal.keeper`) holds it while the owner pid lives on the
owner's host and the transaction is open.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from . import fsops, ledger, names
from .errors import Busy, ConfigError, IOFailure, JournalDamaged, Refused, UsageError
from .records import GENESIS, Checkpoint, Loaded, Record, TxState, apply, line_hash, verify_line
from .states import OPEN_STATES
from .workspace import Workspace

SCHEMA = "1"
NS = 0x736F70                     # "sop": the first key of sop's two-key advisory locks
LOCK_KEYS = {"workspace": 1, "Master Sheet writer": 2}
CHECKPOINT_RECORDS = int(os.environ.get("SOP_PG_CHECKPOINT_RECORDS", "10000"))

DDL = """
CREATE TABLE IF NOT EXISTS sop_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS sop_journal (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    txid text NOT NULL,
    type text NOT NULL,
    names text[] NOT NULL,
    line bytea NOT NULL);
CREATE INDEX IF NOT EXISTS sop_journal_txid ON sop_journal (txid);
CREATE INDEX IF NOT EXISTS sop_journal_names ON sop_journal USING gin (names);
CREATE TABLE IF NOT EXISTS sop_open (name text PRIMARY KEY, txid text NOT NULL);
CREATE INDEX IF NOT EXISTS sop_open_txid ON sop_open (txid);
CREATE TABLE IF NOT EXISTS sop_checkpoint (
    seq bigint PRIMARY KEY, hash text NOT NULL, body bytea NOT NULL, ledger bytea NOT NULL);
CREATE OR REPLACE FUNCTION sop_append(p_seq bigint, p_txid text, p_type text, p_names text[], p_line bytea,
                                      p_open text[], p_close boolean) RETURNS void AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7565168, 3);
    IF EXISTS (SELECT 1 FROM sop_journal WHERE seq >= p_seq) THEN
        RAISE EXCEPTION 'sop: record % is already written', p_seq USING ERRCODE = 'SP001';
    END IF;
    IF p_seq > 1 AND NOT EXISTS (SELECT 1 FROM sop_journal WHERE seq = p_seq - 1) THEN
        RAISE EXCEPTION 'sop: record % is missing', p_seq - 1 USING ERRCODE = 'SP002';
    END IF;
    INSERT INTO sop_journal (seq, txid, type, names, line) VALUES (p_seq, p_txid, p_type, p_names, p_line);
    IF cardinality(p_open) > 0 THEN
        INSERT INTO sop_open (name, txid) SELECT unnest(p_open), p_txid;
    END IF;
    IF p_close THEN
        DELETE FROM sop_open WHERE txid = p_txid;
    END IF;
END $$ LANGUAGE plpgsql;
"""


class StoreLost(IOFailure):
    """The database session was lost while the command held its locks (exit 5; sop-recover finishes)."""


class _Local(threading.local):
    def __init__(self) -> None:
        self.conns: dict[str, Any] = {}
        self.leases: set[str] = set()
        self.held = 0                      # locks this thread holds now: its session must not change


_local = _Local()
_appends = 0
_ledgers: dict[tuple[str, int], dict[str, ledger.Entry]] = {}


def dsn_of(ws: Workspace) -> str:
    """The connection string: ``$SOP_JOURNAL_DSN``, else ``[journal] dsn``."""
    dsn = os.environ.get("SOP_JOURNAL_DSN") or ws.config.dsn
    if not dsn:
        raise ConfigError('[journal] store = "postgresql" needs a connection string',
                          detail="Set [journal] dsn in .sop/config.toml, or $SOP_JOURNAL_DSN (see sop-config(5)).")
    return dsn


def shown(dsn: str) -> str:
    """A DSN fit for a message: any password masked."""
    dsn = re.sub(r"(password\s*=\s*)(\S+)", r"\1***", dsn)
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise UsageError('[journal] store = "postgresql" needs psycopg',
                         detail="Install it: pip install 'sop-journal[postgresql]'.") from None
    return psycopg


# TCP keepalives, both ways: the server ends the session of a host that lost power within about
# idle + interval x count seconds (its leases and locks with it), where Linux's defaults wait
# over two hours; the client notices a dead server as soon.  Ignored on a Unix socket.
KEEPALIVE = (5, 2, 3)          # idle, interval (seconds), count


def connect(dsn: str) -> Any:
    """A new autocommit connection, or Busy (exit 6) naming the server when it can't be reached."""
    psycopg = _psycopg()
    idle, interval, count = KEEPALIVE
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, application_name="sop", keepalives=1,
                               keepalives_idle=idle, keepalives_interval=interval, keepalives_count=count)
        conn.execute(f"SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; "
                     f"SET tcp_keepalives_count = {count}")
        return conn
    except psycopg.Error as e:
        raise Busy(f"the journal store cannot be reached: {shown(dsn)}: {str(e).strip().splitlines()[0]}",
                   detail="Action: check that the PostgreSQL server runs and [journal] dsn is right, "
                          "then run the command again.") from None


def connection(ws: Workspace) -> Any:
    """This thread's connection to the workspace's database (made on first use, remade when broken)."""
    dsn = dsn_of(ws)
    conn = _local.conns.get(dsn)
    if conn is None or conn.closed or conn.broken:
        if conn is not None and _local.held:
            raise _lost("while this command held its lock")
        if conn is not None and _local.leases:
            _local.leases.clear()                   # the server let them go with the session
        conn = connect(dsn)
        _local.conns[dsn] = conn
        _check_schema(ws, conn, dsn)
    return conn


def close_all() -> None:
    """Close this thread's connections (their locks and leases go with them)."""
    for c in _local.conns.values():
        with contextlib.suppress(Exception):
            c.close()
    _local.conns.clear()
    _local.leases.clear()


def _check_schema(ws: Workspace, conn: Any, dsn: str) -> None:
    row = _query(conn, "SELECT to_regclass('sop_meta') IS NOT NULL").fetchone()
    meta = dict(_query(conn, "SELECT key, value FROM sop_meta WHERE key IN ('schema', 'workspace')").fetchall()) \
        if row[0] else {}
    version = meta.get("schema")
    if version is None:
        if _anchored(ws):
            raise JournalDamaged(f"journal damaged: the PostgreSQL store {shown(dsn)} holds no sop journal, but "
                                 "this workspace's anchor (.sop/anchor.json) says records were written there",
                                 detail="Restore the database from a backup at least as new as the anchor, or fix "
                                        "[journal] dsn. Do not start a new journal: the committed history would "
                                        "be lost.")
        raise JournalDamaged(f"journal damaged: the PostgreSQL store {shown(dsn)} holds no sop journal",
                             detail="Create it with 'sop init --store postgresql' (which also moves a file "
                                    "journal into it), or fix [journal] dsn.")
    if version != SCHEMA:
        raise JournalDamaged(f"journal damaged: the PostgreSQL store {shown(dsn)} has schema {version!r}, "
                             f"this sop knows {SCHEMA!r}", detail="Use the sop version that made it.")
    mine = local_id(ws)
    theirs = meta.get("workspace")
    if mine is not None and theirs != mine:
        raise JournalDamaged(f"journal damaged: the PostgreSQL store {shown(dsn)} is not this workspace's "
                             f"(.sop/store-id says {mine}, the database {theirs or 'nothing'})",
                             detail="[journal] dsn points at another workspace's database, or the database was "
                                    "replaced: fix dsn, or restore the database from a backup.")


def _anchored(ws: Workspace) -> bool:
    """Whether ``.sop/anchor.json`` says the journal holds records (see journal.wal, *Anchor*)."""
    try:
        return int(msgspec.json.decode(ws.anchor_path.read_bytes()).get("seq", 0)) > 0
    except (OSError, msgspec.DecodeError, AttributeError, TypeError, ValueError):
        return False


def _query(conn: Any, sql: str, params: Sequence[Any] | None = None) -> Any:
    """Run one statement; a lost session is StoreLost (exit 5), never a silent reconnect."""
    psycopg = _psycopg()
    try:
        return conn.execute(sql, params)
    except psycopg.OperationalError as e:
        raise _lost(f"({str(e).strip().splitlines()[0]})") from None


def _lost(why: str) -> StoreLost:
    """A session lost (exit 5): nothing after the last journaled record happened."""
    return StoreLost(f"the journal store's session was lost {why}",
                     detail="Nothing after the last journaled record happened. Run 'sop-recover' "
                            "when the server is back.")


# ---------------------------------------------------------------- schema

def id_path(ws: Workspace) -> Path:
    """``.sop/store-id``: which database's journal is this workspace's (one database, one workspace)."""
    return ws.sop_dir / "store-id"


def local_id(ws: Workspace) -> str | None:
    try:
        return id_path(ws).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def create(ws: Workspace) -> None:
    """Create the tables (idempotent) and bind the database to this workspace (``.sop/store-id``).

    A database that holds another workspace's journal is refused (exit 1):
    two workspaces must never share one history.
    """
    dsn = dsn_of(ws)
    conn = connect(dsn)
    mine = local_id(ws)
    try:
        with conn.transaction():
            _query(conn, "SELECT pg_advisory_xact_lock(%s, 4)", (NS,))
            _query(conn, DDL)
            _query(conn, "INSERT INTO sop_meta VALUES ('schema', %s) ON CONFLICT DO NOTHING", (SCHEMA,))
            got = _query(conn, "SELECT value FROM sop_meta WHERE key = 'workspace'").fetchone()
            used = _query(conn, "SELECT EXISTS (SELECT 1 FROM sop_journal)").fetchone()[0]
            if got is not None and got[0] != mine and used:
                raise Refused(f"the PostgreSQL store {shown(dsn)} holds another workspace's journal",
                              detail="Give each workspace its own database (createdb), and set [journal] dsn.")
            wid = mine or (got[0] if got is not None and not used else os.urandom(8).hex())
            _query(conn, "INSERT INTO sop_meta VALUES ('workspace', %s) ON CONFLICT (key) DO UPDATE "
                         "SET value = EXCLUDED.value", (wid,))
        if mine != wid:
            fsops.atomic_write(id_path(ws), (wid + "\n").encode())
    finally:
        conn.close()


def import_records(ws: Workspace, records: Iterator[tuple[Record, bytes, list[str]]]) -> int:
    """Copy a verified history (record, line without ``\\n``, names) into an empty store, in one transaction."""
    conn = connection(ws)
    n = 0
    with conn.transaction():
        if _query(conn, "SELECT EXISTS (SELECT 1 FROM sop_journal)").fetchone()[0]:
            raise Refused(f"the PostgreSQL store {shown(dsn_of(ws))} already holds a journal",
                          detail="Moving a file journal needs an empty database.")
        states: dict[str, TxState] = {}
        with conn.cursor().copy("COPY sop_journal (seq, txid, type, names, line) FROM STDIN") as cp:
            for rec, line, names_ in records:
                cp.write_row((rec.seq, rec.txid, rec.type, names_, line))
                apply(states, rec)
                n += 1
        for tx in states.values():
            if tx.state in OPEN_STATES and tx.kind == "run":
                for name in open_names(tx.strategy, tx.run_id):
                    _query(conn, "INSERT INTO sop_open VALUES (%s, %s) ON CONFLICT DO NOTHING", (name, tx.txid))
    return n


def open_names(strategy: str, run_id: str) -> list[str]:
    out = [f"s:{names.key(strategy)}"]
    if run_id:
        out.append(f"r:{names.key(run_id)}")
    return out


# ---------------------------------------------------------------- locks

@contextlib.contextmanager
def hold(ws: Workspace, what: str, timeout: float) -> Iterator[None]:
    """Hold one of the workspace's advisory locks, or raise Busy (exit 6) after ``timeout`` seconds."""
    key = LOCK_KEYS[what]
    try:
        conn, got = _acquire(ws, key, timeout)
    except StoreLost:
        if _local.held:
            raise
        # Nothing held on this thread: a session that died while idle (a server restart, an idle
        # connection cut) is not a lost lock. Start over once on a new session.
        _forget(ws)
        conn, got = _acquire(ws, key, timeout)
    if not got:
        raise Busy(f"the {what} is busy: another sop process (on this host or another) held its lock in "
                   f"{shown(dsn_of(ws))} for {timeout:g} s",
                   detail="Action: wait for it to finish and try again, or raise [lock] timeout_seconds.")
    _local.held += 1
    try:
        yield
    finally:
        _local.held -= 1
        if not (conn.closed or conn.broken):
            with contextlib.suppress(Exception):
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (NS, key))


def _acquire(ws: Workspace, key: int, timeout: float) -> tuple[Any, bool]:
    """(this thread's connection, whether it now holds lock ``(NS, key)``), waiting up to ``timeout`` s."""
    conn = connection(ws)
    psycopg = _psycopg()
    if timeout <= 0:
        return conn, bool(_query(conn, "SELECT pg_try_advisory_lock(%s, %s)", (NS, key)).fetchone()[0])
    _query(conn, f"SET lock_timeout = {int(timeout * 1000)}")
    try:
        try:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (NS, key))
        except psycopg.errors.LockNotAvailable:     # an OperationalError, but the answer "busy", not a lost session
            return conn, False
        except psycopg.errors.QueryCanceled:
            raise KeyboardInterrupt from None
        except psycopg.OperationalError as e:
            raise _lost(f"({str(e).strip().splitlines()[0]})") from None
        return conn, True
    finally:
        if not (conn.closed or conn.broken):
            _query(conn, "SET lock_timeout = 0")


def _forget(ws: Workspace) -> None:
    """Drop this thread's (dead) connection to the workspace's database, so the next use makes a new one."""
    conn = _local.conns.pop(dsn_of(ws), None)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()
    _local.leases.clear()                           # the server let them go with the session


def lease_key(txid: str) -> int:
    return int.from_bytes(hashlib.sha256(txid.encode()).digest()[:8], "big", signed=True)


def take_lease(ws: Workspace, txid: str) -> None:
    """Hold ``txid``'s lease on this thread's session until :func:`drop_lease` or the process ends."""
    conn = connection(ws)
    if txid in _local.leases:
        return
    _query(conn, "SELECT pg_advisory_lock(%s)", (lease_key(txid),))
    _local.leases.add(txid)


KEEPER_POLL = float(os.environ.get("SOP_KEEPER_POLL", "1.0"))
LEASE_GRACE = float(os.environ.get("SOP_LEASE_GRACE", "3.0"))


def keep_lease(ws: Workspace, txid: str, *, alive: Any, stop: threading.Event | None = None,
               begun: threading.Event | None = None) -> None:
    """Hold ``txid``'s lease (taken already, on this thread) while ``alive()`` and the transaction is open.

    A session that dies (a server restart, a fail-over, an idle connection
    cut by a firewall) takes the lease with it: this loop reconnects and
    takes it again, so a live owner is seen alive again within a poll or
    two, and recovery, which waits :data:`LEASE_GRACE` before it believes a
    free lease, does not roll a live run back.  Returns when the owner is
    gone, the transaction is closed, or ``stop`` is set.  ``begun``: set once
    the ``begin`` is on record (until then the transaction is not open yet).
    """
    while True:
        if stop is not None:
            if stop.wait(KEEPER_POLL):
                return
        else:
            time.sleep(KEEPER_POLL)
        if not alive():
            return
        try:
            if txid not in _local.leases:
                _forget(ws)
                take_lease(ws, txid)
            if (begun is None or begun.is_set()) and not is_open(ws, txid):
                return
        except (StoreLost, Busy):
            _forget(ws)                              # the server is away: try again at the next poll


class _LeaseThread(threading.Thread):
    """This process's lease on one transaction, held on a session of its own (see :func:`hold_lease`)."""

    def __init__(self, ws: Workspace, txid: str) -> None:
        super().__init__(name=f"sop-lease-{txid}", daemon=True)
        self.ws, self.txid = ws, txid
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.begun = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            try:
                take_lease(self.ws, self.txid)
            except BaseException as e:  # noqa: BLE001 - handed to the starting thread
                self.error = e
                return
            finally:
                self.ready.set()
            keep_lease(self.ws, self.txid, alive=lambda: True, stop=self.stop, begun=self.begun)
        finally:
            close_all()                              # this thread's session, and the lease with it


_threads: dict[str, _LeaseThread] = {}
_threads_lock = threading.Lock()


def hold_lease(ws: Workspace, txid: str) -> None:
    """Hold ``txid``'s lease for this process until :func:`drop_lease`: a thread that keeps it through lost sessions."""
    with _threads_lock:
        if txid in _threads:
            return
        t = _LeaseThread(ws, txid)
        t.start()
    t.ready.wait()
    if t.error is not None:
        raise t.error
    with _threads_lock:
        _threads[txid] = t


def lease_begun(txid: str) -> None:
    """The ``begin`` of ``txid`` is on record: its lease thread may now let go once it is closed."""
    with _threads_lock:
        t = _threads.get(txid)
    if t is not None:
        t.begun.set()


def drop_lease(ws: Workspace, txid: str) -> None:
    with _threads_lock:
        t = _threads.pop(txid, None)
    if t is not None:
        t.stop.set()
        t.join(10)
        return
    if txid not in _local.leases:
        return
    _local.leases.discard(txid)
    conn = _local.conns.get(dsn_of(ws))
    if conn is not None and not (conn.closed or conn.broken):
        with contextlib.suppress(Exception):
            conn.execute("SELECT pg_advisory_unlock(%s)", (lease_key(txid),))


def lease_free(ws: Workspace, txid: str) -> bool:
    """True when nobody holds ``txid``'s lease now (see :func:`leases_free` before acting on it)."""
    if txid in _local.leases or txid in _threads:
        return False
    conn = connection(ws)
    got = _query(conn, "SELECT pg_try_advisory_lock(%s)", (lease_key(txid),)).fetchone()[0]
    if got:
        _query(conn, "SELECT pg_advisory_unlock(%s)", (lease_key(txid),))
    return bool(got)


def leases_free(ws: Workspace, txids: Sequence[str], grace: float | None = None) -> set[str]:
    """The leases of ``txids`` that are free now and still free ``grace`` seconds later: owners that are gone.

    A lease is also free for a moment when its owner's session was cut (a
    server restart frees them all at once) until its keeper takes it again;
    only a lease that stays free through the grace means its owner is gone.
    """
    free = {t for t in txids if lease_free(ws, t)}
    grace = LEASE_GRACE if grace is None else grace
    if free and grace > 0:
        time.sleep(grace)
        free = {t for t in free if lease_free(ws, t)}
    return free


def is_open(ws: Workspace, txid: str) -> bool:
    """Whether run ``txid`` has no record that ends it yet (by the journal itself, not the derived sop_open)."""
    return not _query(connection(ws), "SELECT EXISTS (SELECT 1 FROM sop_journal WHERE txid = %s AND "
                                      "type IN ('committed', 'aborted', 'adopt'))", (txid,)).fetchone()[0]


# ---------------------------------------------------------------- reading

def _damage(why: str) -> JournalDamaged:
    return JournalDamaged(f"journal damaged: {why}",
                          detail="Run 'sop-fsck' for details; do not edit the journal by hand.")


def _replay(rows: Iterator[tuple[int, bytes]], seq: int, hash_: str, on_record: Any) -> tuple[int, str]:
    for s, raw in rows:
        line = bytes(raw)
        rec = verify_line(line)
        if rec is None:
            raise _damage(f"record {s} in the PostgreSQL store fails its checksum or is not JSON")
        if rec.seq != s or s != seq + 1:
            raise _damage(f"record {s} where record {seq + 1} was expected")
        if rec.prev != hash_:
            raise _damage(f"record {s} does not chain to the record before it")
        on_record(rec)
        seq, hash_ = s, line_hash(line)
    return seq, hash_


def load(ws: Workspace) -> Loaded:
    """The newest checkpoint and the records after it."""
    conn = connection(ws)
    row = _query(conn, "SELECT c.seq, c.hash, c.body, j.line FROM sop_checkpoint c LEFT JOIN sop_journal j "
                       "ON j.seq = c.seq ORDER BY c.seq DESC LIMIT 1").fetchone()
    out = Loaded()
    if row is not None:
        seq, h, body, line = row
        if line is None or line_hash(bytes(line)) != h:
            raise _damage(f"the checkpoint at record {seq} does not match the record there")
        cp = msgspec.json.decode(bytes(body), type=Checkpoint)
        out.checkpoint = cp
        out.seq, out.hash, out.sheet_fp = cp.seq, cp.hash, cp.sheet_fp
        out.states = {k: msgspec.structs.replace(v) for k, v in cp.open.items()}
    rows = _query(conn, "SELECT seq, line FROM sop_journal WHERE seq > %s ORDER BY seq", (out.seq,))
    out.seq, out.hash = _replay(iter(rows), out.seq, out.hash, out.apply)
    return out


def refresh(ws: Workspace, j: Loaded) -> Loaded:
    """``j`` with the records other writers appended since (the same contract as the file store's)."""
    rows = _query(connection(ws), "SELECT seq, line FROM sop_journal WHERE seq > %s ORDER BY seq",
                  (j.seq,)).fetchall()
    if not rows:
        return j
    out, on_record = j.follow()
    out.seq, out.hash = _replay(iter(rows), j.seq, j.hash, on_record)
    return out


def iter_lines(ws: Workspace, batch: int = 5000) -> Iterator[tuple[int, bytes]]:
    """Every (seq, line) oldest first, in batches (no long-lived cursor)."""
    conn = connection(ws)
    last = 0
    while True:
        rows = _query(conn, "SELECT seq, line FROM sop_journal WHERE seq > %s ORDER BY seq LIMIT %s",
                      (last, batch)).fetchall()
        if not rows:
            return
        for s, raw in rows:
            yield s, bytes(raw)
        last = rows[-1][0]


def iter_records(ws: Workspace) -> Iterator[Record]:
    """Every record, oldest first, verified as it goes."""
    batch: list[Record] = []
    seq, h = 0, GENESIS
    for s, line in iter_lines(ws):
        seq, h = _replay(iter([(s, line)]), seq, h, batch.append)
        yield from batch
        batch.clear()


def find_records(ws: Workspace, txids: Sequence[str] = (), strategy: str | None = None) -> list[Record]:
    """The records of some transactions (and, with ``strategy``, its whole life), oldest first."""
    conn = connection(ws)
    want = list(txids)
    if strategy is not None:
        skey = f"s:{names.key(strategy)}"
        got = _query(conn, "SELECT DISTINCT txid FROM sop_journal WHERE names @> ARRAY[%s]::text[]", (skey,))
        want += [r[0] for r in got]
        runs = _query(conn, "SELECT DISTINCT r FROM sop_journal, unnest(names) AS r WHERE type = 'begin' "
                            "AND names @> ARRAY[%s]::text[] AND r LIKE 'r:%%'", (skey,))
        rkeys = [r[0] for r in runs]
        if rkeys:
            got = _query(conn, "SELECT DISTINCT txid FROM sop_journal WHERE names && %s::text[] "
                               "AND type <> 'begin'", (rkeys,))
            want += [r[0] for r in got]
    if not want:
        return []
    out = []
    for s, raw in _query(conn, "SELECT seq, line FROM sop_journal WHERE txid = ANY(%s) ORDER BY seq",
                         (sorted(set(want)),)):
        rec = verify_line(bytes(raw))
        if rec is None or rec.seq != s:
            raise _damage(f"record {s} in the PostgreSQL store fails its checksum or is not JSON")
        out.append(rec)
    return out


def checkpoint_ledger(ws: Workspace, cp: Checkpoint) -> dict[str, ledger.Entry] | None:
    """The committed rows as of checkpoint ``cp`` (kept in its row; cached per process), or None.

    None when that checkpoint's ledger was pruned (only the two newest keep
    theirs) or does not decode: the caller replays the records instead.
    """
    key = (dsn_of(ws), cp.seq)
    rows = _ledgers.get(key)
    if rows is None:
        got = _query(connection(ws), "SELECT ledger FROM sop_checkpoint WHERE seq = %s", (cp.seq,)).fetchone()
        rows = ledger.decode(bytes(got[0]), cp.seq, cp.hash) if got is not None else None
        if rows is None:
            return None
        _ledgers.clear()
        _ledgers[key] = rows
    return dict(rows)


# ---------------------------------------------------------------- writing

def append(ws: Workspace, j: Loaded, rec: Record, line: bytes, names_: list[str], after: TxState | None) -> None:
    """Write one record (``line`` with its ``\\n``) after record ``j.seq``; durable on return.

    A mutation like any file write (:func:`journal.fsops.point`: crash tests
    stop here).  ``$SOP_PG_CUT_AT=K`` (tests) has the server end this
    session just before the K-th append of the process, as a cut network does.
    """
    global _appends
    psycopg = _psycopg()
    fsops.point("append", "postgresql:sop_journal")
    _appends += 1
    if os.environ.get("SOP_PG_CUT_AT") == str(_appends):
        with contextlib.suppress(psycopg.Error):
            connection(ws).execute("SELECT pg_terminate_backend(pg_backend_pid())")
    opening = open_names(rec.data.get("strategy", ""), rec.data.get("run_id", "")) \
        if rec.type == "begin" else []
    closing = after is not None and after.kind == "run" and after.state not in OPEN_STATES
    try:
        _query(connection(ws), "SELECT sop_append(%s, %s, %s, %s, %s, %s, %s)",
               (rec.seq, rec.txid, rec.type, names_, line.rstrip(b"\n"), opening, closing))
    except psycopg.errors.UniqueViolation:
        raise Refused(f"strategy '{rec.data.get('strategy')}' or run id '{rec.data.get('run_id')}' is held by "
                      "an open transaction (seen by the journal store)",
                      detail="Action: 'sop-status' lists the open transactions.") from None
    except psycopg.errors.RaiseException as e:
        raise _damage(f"the PostgreSQL store refused record {rec.seq}: {str(e).strip().splitlines()[0]} "
                      "(another writer appended without the workspace lock)") from None


def checkpoint_due(j: Loaded) -> bool:
    base = j.checkpoint.seq if j.checkpoint is not None else 0
    return j.seq - base >= CHECKPOINT_RECORDS


def write_checkpoint(ws: Workspace, j: Loaded, rows: dict[str, ledger.Entry]) -> Checkpoint:
    """Record the open transactions and the ledger as of ``j.seq``, so loading starts there."""
    open_states = {k: v for k, v in j.states.items() if v.state in OPEN_STATES}
    cp = Checkpoint(seq=j.seq, hash=j.hash, open=open_states, sheet_fp=j.sheet_fp)
    conn = connection(ws)
    _query(conn, "INSERT INTO sop_checkpoint VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
           (cp.seq, cp.hash, msgspec.json.encode(cp), ledger.encode(rows, cp.seq, cp.hash)))
    _query(conn, "UPDATE sop_checkpoint SET ledger = ''::bytea WHERE seq < (SELECT min(seq) FROM (SELECT seq FROM "
                 "sop_checkpoint ORDER BY seq DESC LIMIT 2) AS newest) AND length(ledger) > 0")
    _ledgers.clear()
    _ledgers[(dsn_of(ws), cp.seq)] = dict(rows)
    return cp


def open_table(ws: Workspace) -> dict[str, str]:
    """``sop_open`` as it is: name -> txid."""
    return dict(_query(connection(ws), "SELECT name, txid FROM sop_open").fetchall())


def expected_open(states: dict[str, TxState]) -> dict[str, str]:
    """What ``sop_open`` should hold for these transactions: every open run's names."""
    out: dict[str, str] = {}
    for t in states.values():
        if t.kind == "run" and t.state in OPEN_STATES:
            for name in open_names(t.strategy, t.run_id):
                out[name] = t.txid
    return out


def sync_open(ws: Workspace, states: dict[str, TxState]) -> list[str]:
    """Make ``sop_open`` (derived from the journal) what the open runs say; what changed, as text.

    Called by recovery under the workspace lock; normal operation never needs it.
    """
    want, have = expected_open(states), open_table(ws)
    if want == have:
        return []
    conn = connection(ws)
    with conn.transaction():
        _query(conn, "DELETE FROM sop_open")
        for name, txid in sorted(want.items()):
            _query(conn, "INSERT INTO sop_open VALUES (%s, %s)", (name, txid))
    gone = sorted(set(have.items()) - set(want.items()))
    new = sorted(set(want.items()) - set(have.items()))
    return [f"removed {n} ({t})" for n, t in gone] + [f"added {n} ({t})" for n, t in new]


def checkpoint_bodies(ws: Workspace) -> dict[int, Checkpoint]:
    """Every checkpoint's body, for sop-fsck."""
    return {s: msgspec.json.decode(bytes(b), type=Checkpoint)
            for s, b in _query(connection(ws), "SELECT seq, body FROM sop_checkpoint ORDER BY seq")}


def checkpoints(ws: Workspace) -> list[tuple[int, str]]:
    """Every checkpoint's (seq, hash), for sop-fsck."""
    return [(s, h) for s, h in _query(connection(ws), "SELECT seq, hash FROM sop_checkpoint ORDER BY seq")]
