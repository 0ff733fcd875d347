r"""Plumbing: the write-ahead journal — its records, bytes on disk, and replay.

Layout
======
``.sop/journal/`` holds segment files and nothing else.  A segment is named
by the sequence number of its first record, zero-padded to 16 digits, with
the suffix ``.jsonl`` (``0000000000000001.jsonl``), so names sort in order.
Segments are append-only; a new one is started when the active one passes
``SEGMENT_BYTES`` (8 MiB; ``$SOP_SEGMENT_BYTES`` overrides it for tests).

The line
========
One record per line, UTF-8 JSON, ``\n``-terminated, keys in this order::

    {"seq":1,"txid":"tx-20261125T130000Z-1a2b3c","type":"begin",
     "time":"2026-11-25T13:00:00.000000Z","user":"ana","host":"ws1","pid":4242,
     "prev":"000…000","data":{…},"sum":"<64 hex>"}

``seq``
    from 1, contiguous across segments.
``txid`` / ``type``
    the transaction, and what the record says (see *Record types*).
``time``
    UTC, ISO 8601 with microseconds and ``Z``.
``user`` / ``host`` / ``pid``
    who wrote the record.
``prev``
    SHA-256 (hex) of the previous record's line, without its ``\n``;
    64 zeros for record 1.  This chains the history: a record edited,
    removed or reordered breaks the chain after it.
``data``
    the record's payload, an object.
``sum``
    SHA-256 (hex) of the line's bytes *without* the ``sum`` member: the
    line minus its last 74 bytes (``,"sum":"`` + 64 hex + ``"}``) plus a
    closing ``}``.  With jq and sha256sum::

        head -c -75 LINE | { cat; printf '}'; } | sha256sum

Torn and damaged
================
*Torn*: the last line of the newest segment lacks its ``\n``, does not
parse, or fails its sum.  It is cut off by the next writer (the bytes kept
in ``.sop/lost+found/``, and a ``tail_cut`` record written).  Anything else
that fails — a bad sum before the end, a wrong ``seq`` or ``prev``, a
missing segment — is *damage*: writers refuse with exit 5.

Checkpoint
==========
``.sop/checkpoint.json`` (replaced atomically when a segment is sealed)::

    {"version":1,"seq":N,"hash":"<hash of record N's line>",
     "segments":[{"name":…,"first":…,"last":…,"bytes":…,"sha256":…}],
     "open":{"<txid>":{…transaction state…}},"sheet_fp":"<64 hex or empty>"}

It covers every sealed segment, records a digest of each, and the state of
each transaction still open at its end, so a writer reads the checkpoint and
the segments after it, never the whole history.  A missing or unusable
checkpoint only costs time: the journal is replayed from the start.

Anchor
======
``.sop/anchor.json`` (replaced atomically)::

    {"seq":N,"hash":"<hash of record N's line>"}

How far the journal is known to have come, kept outside the segments:
written by ``sop init`` (record 0), when a segment is sealed, and by a sheet
writer after it announced its rows and before it rewrites the sheet — never
for a record that could still be torn.  A journal that ends before its
anchor (``.sop/journal/`` missing, a segment emptied, the journal restored
from a backup older than the anchor) or holds another record at the anchor's
place is *damage*: commands that write refuse (exit 5) and ``sop-fsck``
names it.  A workspace without an anchor (made before anchors) is accepted.

Ledger
======
``.sop/ledger.msgpack``: the committed rows the sheet should hold, as of the
checkpoint (see :mod:`journal.ledger`).

Tail
====
``.sop/cache/tail.msgpack`` (file store; written by a command whose journal
grew, once the active segment holds ``$SOP_TAIL_CACHE_BYTES`` bytes, 256 KiB)::

    {"version":1,"segment":…,"dev":…,"ino":…,"last":…,"bytes":…,"seq":N,
     "hash":…,"checkpoint":…,"open":{…},"ops":[…],"sheet_fp":…}

What replaying the active segment up to byte ``bytes`` gave: the open
transactions, the ledger's changes since the checkpoint, the sheet's last
fingerprint.  A writer that finds it for the same segment (name, device,
inode), on the same checkpoint, with record ``seq`` still ending at
``bytes`` and hashing to ``hash``, reads and verifies only the bytes after
it, so a command costs the same on a nearly full segment as on an empty one.
Anything else (another segment, a shorter file, a different last line, no
file) means a full read, as before; ``sop-fsck`` always reads every byte.
Deleting it only costs time.

Index
=====
``.sop/cache/index/<segment name>.json`` (written when a segment is sealed,
after the checkpoint; rebuilt by ``sop-log`` when missing)::

    {"version":1,"segment":…,"bytes":…,"sha256":…,
     "txids":{"<txid>":["<strategy key>",…],…},
     "runs":{"<txid>":["<run id key>",…],…}}

``txids`` lists every transaction with a record in the segment, with the
comparison keys (:func:`journal.names.key`) of the strategies those records
name; ``runs`` the run ids that a sweep's records name (see :func:`named`:
a ``begin``'s strategy; in a sweep's ``plan``, ``remove_row``, ``delete``
or ``rename``, ``strategy``/``run_id`` values and ``backtests/<name>`` or
``runs/<name>`` paths, ``<name>_FAILED_<ts>`` counting as ``<name>``).  It
lets ``sop-log --strategy``/``TXID`` and :func:`find_transaction` read only
the segments that matter.  It is never needed for correctness: an index whose ``bytes``
or ``sha256`` differs from the checkpoint's entry is ignored and the
segment read instead, and every segment read is verified (a sealed one also
against its checkpoint digest).  Deleting ``.sop/cache/`` only costs time.

Record types
============
A transaction's state is a pure function of its records (STYLE §5):

============  ==========================  =====================================
type          state after                 data
============  ==========================  =====================================
begin         begun                       strategy, run_id, owner, kind, paths
mkdir         (unchanged)                 path — before the folder is created
decide        committing                  row — the commit decision and its row
defer         deferred                    locked_by, reason
append        (unchanged)                 row, sheet — before the row is written
committed     committed                   row_number, sheet_fp — sheet_fp after a write
rollback      aborting                    reason, delete — the rollback decision
rename        (unchanged)                 src, dst — before the rename
delete        (unchanged)                 path, files [[name, size], …] — before
remove_row    (unchanged)                 row_number, values — before removal
aborted       aborted                     —
plan          planned (sweeps)            steps — a sweep's (release's, restore's) whole plan
done          committed                   sheet_fp — a sweep finished
adopt         committed                   row_number, reason — recovery found a begun run's row
restored      (unchanged)                 step, txid, strategy, run_id, row_number, sheet_fp — a lost row put back
lost_accepted (unchanged)                 step, txid, strategy, run_id, moved, deleted — a loss accepted
released      (unchanged)                 step, txid, strategy, run_id, moved, deleted — a slot freed
abandon       aborted                     reason, steps — a plan given up, the rest left undone
tail_cut      —                           segment, offset, bytes, kept
============  ==========================  =====================================

``sheet_fp`` (in ``committed``, ``restored`` and ``done``, only when that
act rewrote the Master Sheet) is the fingerprint of the workbook sop wrote:
the SHA-256 (hex) of its zip central directory and end-of-central-directory
record (see :func:`journal.sheet.fingerprint`).  The newest one is
:attr:`Loaded.sheet_fp`, carried by the checkpoint; a sheet writer compares
the file with it before it writes (see :func:`journal.txn.flush`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from . import fsops, ledger, locks, names, pgstore
from .errors import JournalDamaged, WrongState
from .owner import hostname, username
from .records import (
    GENESIS,
    SUM_SUFFIX,
    Body,
    Checkpoint,
    Loaded,
    Record,
    Segment,
    Torn,
    TxState,
    apply,
    decode_checkpoint,
    decode_record,
    encode_line,
    fmt_time,
    line_hash,
    parse_time,
    utcnow,
    verify_line,
)
from .states import OPEN_STATES
from .workspace import Workspace

__all__ = ["GENESIS", "SUM_SUFFIX", "Body", "Checkpoint", "Loaded", "Record", "Segment", "Torn", "TxState", "apply",
           "encode_line", "fmt_time", "line_hash", "parse_time", "utcnow", "verify_line"]

SEGMENT_BYTES = int(os.environ.get("SOP_SEGMENT_BYTES", str(8 << 20)))
SEGMENT_SUFFIX = ".jsonl"

def is_pg(ws: Workspace) -> bool:
    """Whether the workspace's journal lives in PostgreSQL (:mod:`journal.pgstore`) rather than in files."""
    return ws.config.store == "postgresql"


def hold(ws: Workspace, what: str = "workspace", shared: str = "") -> contextlib.AbstractContextManager[None]:
    """The workspace lock, or the sheet writer's (``what="Master Sheet writer"``), in the workspace's store.

    ``shared``: the network file system an allowed file store lies on, for the Busy message.
    """
    if is_pg(ws):
        return pgstore.hold(ws, what, ws.config.lock_timeout)
    path = ws.lock_path if what == "workspace" else ws.sheet_lock_path
    return locks.hold(path, ws.config.lock_timeout, what, shared=shared)


def segment_files(journal_dir: Path) -> list[Path]:
    try:
        names = sorted(n for n in os.listdir(journal_dir) if n.endswith(SEGMENT_SUFFIX))
    except FileNotFoundError:
        return []
    return [journal_dir / n for n in names]


def read_segment(path: Path, *, expect_seq: int, expect_hash: str, newest: bool,
                 on_record: Any = None, data: bytes | None = None) -> tuple[int, str, Torn | None]:
    """Verify one segment; call ``on_record(rec)`` for each good record.

    Returns (last seq, last hash, torn tail or None).  Raises JournalDamaged
    naming the first damaged record (segment, line and sequence number).
    ``data`` is the segment's bytes when the caller has read them already.
    """
    if data is None:
        data = path.read_bytes()
    pos = 0
    lineno = 0
    seq, h = expect_seq - 1, expect_hash
    n = len(data)
    while pos < n:
        lineno += 1
        end = data.find(b"\n", pos)
        last_line = end == -1 or end + 1 == n
        line = data[pos:] if end == -1 else data[pos:end]
        rec = verify_line(line) if end != -1 else None
        if rec is None:
            why = "no newline" if end == -1 else "bad checksum or not JSON"
            if newest and last_line:
                return seq, h, Torn(path, pos, data[pos:], why)
            raise JournalDamaged(
                f"journal damaged: {path.name} line {lineno} (after record {seq}): {why}",
                detail="Run 'sop-fsck' for details; do not edit the journal by hand.")
        if rec.seq != seq + 1:
            raise JournalDamaged(f"journal damaged: {path.name} line {lineno}: record {rec.seq} "
                                 f"where record {seq + 1} was expected",
                                 detail="A record was removed, reordered or duplicated; see 'sop-fsck'.")
        if rec.prev != h:
            raise JournalDamaged(f"journal damaged: {path.name} line {lineno}: record {rec.seq} does not "
                                 f"chain to the record before it",
                                 detail="A record before it was changed or removed; see 'sop-fsck'.")
        if on_record is not None:
            on_record(rec)
        seq, h = rec.seq, line_hash(line)
        pos = end + 1
    return seq, h, None


def read_checkpoint(ws: Workspace) -> Checkpoint | None:
    """The checkpoint as written, or None when it is missing or does not decode (it only saves time)."""
    try:
        return decode_checkpoint(ws.checkpoint_path.read_bytes())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def _load_checkpoint(ws: Workspace, segs: list[Path]) -> Checkpoint | None:
    cp = read_checkpoint(ws)
    if cp is None:
        return None
    names = {p.name: p for p in segs}
    for s in cp.segments:
        p = names.get(s.name)
        if p is None:
            raise JournalDamaged(f"journal damaged: segment {s.name} (records {s.first}–{s.last}) is missing",
                                 detail="Restore it from a backup; see 'sop-fsck'.")
        try:
            if p.stat().st_size != s.bytes:
                return None
        except OSError:
            return None
    return cp


class Anchor(msgspec.Struct, kw_only=True):
    """``.sop/anchor.json``: how far the journal is known to have reached (see *Anchor* above)."""

    seq: int = 0
    hash: str = GENESIS


def read_anchor(ws: Workspace) -> Anchor | None:
    """The anchor, or None when there is none (a workspace made before anchors, or one that lost it)."""
    try:
        return msgspec.json.decode(ws.anchor_path.read_bytes(), type=Anchor)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
        raise JournalDamaged(f"journal damaged: the anchor {ws.rel(ws.anchor_path)} cannot be read ({e})",
                             detail="Restore .sop/ from a backup; see 'sop-fsck'.") from None


def write_anchor(ws: Workspace, seq: int, hash_: str) -> None:
    fsops.atomic_write(ws.anchor_path, msgspec.json.encode(Anchor(seq=seq, hash=hash_)))


def check_anchor(ws: Workspace, seq: int, hash_: str, anchor: Anchor | None) -> None:
    """A journal that ends before its anchor (missing, emptied, restored from an older backup) is damage."""
    if anchor is None:
        return
    why = None
    if not is_pg(ws) and not ws.journal_dir.is_dir():
        why = f"the journal ({ws.rel(ws.journal_dir)}/) is missing"
    elif seq < anchor.seq:
        why = (f"the journal ends at record {seq}, but its anchor says record {anchor.seq} was written: "
               "it was emptied, cut short or restored from an older backup")
    elif seq == anchor.seq and hash_ != anchor.hash:
        why = f"record {seq} is not the record its anchor names: the journal was replaced"
    if why is not None:
        what = "the PostgreSQL database" if is_pg(ws) else ".sop/journal/ (and .sop/checkpoint.json)"
        raise JournalDamaged(f"journal damaged: {why}",
                             detail=f"Restore {what} from a backup at least as new "
                                    "as the anchor (.sop/anchor.json). Do not start a new journal: the committed "
                                    "history would be lost.")


TAIL_CACHE_BYTES = int(os.environ.get("SOP_TAIL_CACHE_BYTES", str(256 << 10)))


class TailCache(msgspec.Struct, kw_only=True):
    """``.sop/cache/tail.msgpack``: the active segment replayed up to ``bytes`` (see *Tail*)."""

    version: int = 1
    segment: str = ""
    dev: int = 0
    ino: int = 0
    last: int = 0                   # where record ``seq``'s line starts
    bytes: int = 0                  # where it ends, after its newline
    seq: int = 0
    hash: str = GENESIS
    checkpoint: int = 0             # the checkpoint's seq it builds on (0: none)
    open: dict[str, TxState] = {}
    ops: list[tuple[str, str, Any]] = []
    sheet_fp: str = ""


def tail_path(ws: Workspace) -> Path:
    return ws.cache_dir / "tail.msgpack"


def _ops_of(raw: list[tuple[str, str, Any]]) -> list[ledger.Op]:
    return [(w, k, msgspec.convert(a, ledger.Entry) if w == "add" else (a if w == "remove" else (a[0], a[1])))
            for w, k, a in raw]


def _cached_tail(ws: Workspace, p: Path, cp: Checkpoint | None) -> tuple[TailCache, bytes, os.stat_result] | None:
    """The tail cache and the bytes after it, when the cache describes this very segment (else None)."""
    try:
        tc = msgspec.msgpack.decode(tail_path(ws).read_bytes(), type=TailCache)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if tc.version != 1 or tc.segment != p.name or tc.checkpoint != (cp.seq if cp is not None else 0):
        return None
    try:
        with open(p, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_dev, st.st_ino) != (tc.dev, tc.ino) or st.st_size < tc.bytes or not 0 <= tc.last < tc.bytes:
                return None
            f.seek(tc.last)
            line = f.read(tc.bytes - tc.last)
            rest = f.read()
    except OSError:
        return None
    if not line.endswith(b"\n") or b"\n" in line[:-1] or line_hash(line) != tc.hash:
        return None
    rec = verify_line(line[:-1])
    if rec is None or rec.seq != tc.seq:
        return None
    return tc, rest, st


def save_tail(ws: Workspace, j: Loaded) -> None:
    """Keep what replaying the active segment gave (see *Tail*); best effort, and only for a big segment."""
    if (j.active is None or j.torn is not None or j.active_bytes < TAIL_CACHE_BYTES or j.seq == j.tail_seq
            or not j.active_bytes):
        return
    try:
        with open(j.active, "rb") as f:
            back = 4096
            while True:
                start = max(0, j.active_bytes - back)
                f.seek(start)
                chunk = f.read(j.active_bytes - start)
                nl = chunk.rfind(b"\n", 0, len(chunk) - 1)
                if nl != -1 or start == 0:
                    break
                back *= 4
        last = start + nl + 1
        tc = TailCache(segment=j.active.name, dev=j.active_id[0], ino=j.active_id[1], last=last,
                       bytes=j.active_bytes, seq=j.seq, hash=j.hash,
                       checkpoint=j.checkpoint.seq if j.checkpoint is not None else 0,
                       open={k: v for k, v in j.states.items() if v.state in OPEN_STATES},
                       ops=list(j.ledger_ops), sheet_fp=j.sheet_fp)
        if not ws.cache_dir.is_dir():
            fsops.mkdir(ws.cache_dir, parents=True, exist_ok=True)
        fsops.atomic_write(tail_path(ws), msgspec.msgpack.encode(tc))
        j.tail_seq = j.seq
    except OSError:
        pass


def load(ws: Workspace) -> Loaded:
    """Read what a writer needs: the checkpoint and the segments after it (the tail cache's part skipped)."""
    if is_pg(ws):
        out = pgstore.load(ws)          # a database emptied, re-created or restored from an older backup is damage
        check_anchor(ws, out.seq, out.hash, read_anchor(ws))
        return out
    anchor = read_anchor(ws)
    segs = segment_files(ws.journal_dir)
    cp = _load_checkpoint(ws, segs)
    out = Loaded(checkpoint=cp)
    if cp is not None:
        out.seq, out.hash, out.sheet_fp = cp.seq, cp.hash, cp.sheet_fp
        out.states = {k: msgspec.structs.replace(v) for k, v in cp.open.items()}
        covered = {s.name for s in cp.segments}
        rest = [p for p in segs if p.name not in covered]
    else:
        rest = segs
    cached = _cached_tail(ws, rest[0], cp) if len(rest) == 1 else None
    if cached is not None:
        tc, data, st = cached
        fast = Loaded(seq=tc.seq, hash=tc.hash, active=rest[0], checkpoint=cp, active_id=(st.st_dev, st.st_ino),
                      states=dict(tc.open), ledger_ops=_ops_of(tc.ops), sheet_fp=tc.sheet_fp, tail_seq=tc.seq)
        try:
            fast.seq, fast.hash, torn = read_segment(rest[0], expect_seq=tc.seq + 1, expect_hash=tc.hash,
                                                     newest=True, on_record=fast.apply, data=data)
        except JournalDamaged:
            torn = None
            cached = None                    # the full read below names the damage exactly
        if cached is not None and torn is None:
            fast.active_bytes = tc.bytes + len(data)
            check_anchor(ws, fast.seq, fast.hash, anchor)
            return fast
    for i, p in enumerate(rest):
        first = _segment_first(p)
        if first != out.seq + 1:
            raise JournalDamaged(f"journal damaged: segment {p.name} starts at record {first}, "
                                 f"but record {out.seq + 1} comes next",
                                 detail="A segment is missing or misnamed; see 'sop-fsck'.")
        newest = i == len(rest) - 1
        out.seq, out.hash, torn = read_segment(p, expect_seq=out.seq + 1, expect_hash=out.hash, newest=newest,
                                               on_record=out.apply)
        if torn:
            out.torn = torn
        out.active = p
        st = p.stat()
        out.active_bytes = torn.offset if torn else st.st_size
        out.active_id = (st.st_dev, st.st_ino)
    check_anchor(ws, out.seq, out.hash, anchor)
    return out


def refresh(ws: Workspace, j: Loaded) -> Loaded:
    """``j`` brought up to date with what other writers appended since it was loaded.

    Called under the workspace lock, so that one command loads the journal
    once and then reads only the bytes appended after the end it knows.
    Anything but a plain append to the same active segment (a new segment,
    a torn tail, a file replaced or shortened, damage) falls back to a full
    :func:`load`, which also names any damage exactly.  Transactions that
    the new records touch are copies: a state handed out before stays as it was.
    """
    if is_pg(ws):
        return pgstore.refresh(ws, j)
    if j.active is None or j.torn is not None:
        return load(ws)
    try:
        st = j.active.stat()
        newest = segment_files(ws.journal_dir)[-1]
    except (OSError, IndexError):
        return load(ws)
    if newest != j.active or (st.st_dev, st.st_ino) != j.active_id or st.st_size < j.active_bytes:
        return load(ws)
    if st.st_size == j.active_bytes:
        return j
    with open(j.active, "rb") as f:
        f.seek(j.active_bytes)
        data = f.read()
    out, on_record = j.follow(active_bytes=j.active_bytes + len(data))
    try:
        seq, h, torn = read_segment(j.active, expect_seq=j.seq + 1, expect_hash=j.hash, newest=True,
                                    on_record=on_record, data=data)
    except JournalDamaged:
        return load(ws)
    if torn is not None:
        return load(ws)
    out.seq, out.hash = seq, h
    return out


def committed_rows(ws: Workspace, j: Loaded) -> dict[str, ledger.Entry]:
    """The ledger now: every committed row the sheet should hold, by run key (see :mod:`journal.ledger`)."""
    cp = j.checkpoint
    if is_pg(ws):
        rows: dict[str, ledger.Entry] | None = pgstore.checkpoint_ledger(ws, cp) if cp is not None and cp.seq else {}
    else:
        rows = ledger.read(ws.sop_dir, cp.seq, cp.hash) if cp is not None and cp.seq else {}
    if rows is None:                                    # missing or stale: replay the sealed history
        rows = {}
        full = Loaded()
        for rec in iter_records(ws):
            if cp is not None and rec.seq > cp.seq:
                break
            full.apply(rec)
        for op in full.ledger_ops:
            ledger.apply_op(rows, op)
        if cp is not None and not is_pg(ws):
            try:                                        # derived data, like the index cache: saves the next replay
                ledger.write(ws.sop_dir, rows, cp.seq, cp.hash)
            except OSError:
                pass
    for op in j.ledger_ops:
        ledger.apply_op(rows, op)
    return rows


def _segment_first(p: Path) -> int:
    try:
        return int(p.name[: -len(SEGMENT_SUFFIX)])
    except ValueError:
        raise JournalDamaged(f"journal damaged: {p.name} is not a segment name",
                             detail=".sop/journal/ must hold only journal segments.") from None


def iter_records(ws: Workspace) -> Iterator[Record]:
    """Every record of the history, oldest first, verified as it goes (torn tail skipped)."""
    if is_pg(ws):
        yield from pgstore.iter_records(ws)
        return
    seq, h = 0, GENESIS
    segs = segment_files(ws.journal_dir)
    for i, p in enumerate(segs):
        batch: list[Record] = []
        seq, h, _ = read_segment(p, expect_seq=seq + 1, expect_hash=h, newest=i == len(segs) - 1,
                                 on_record=batch.append)
        yield from batch


def file_lines(ws: Workspace) -> Iterator[tuple[Record, bytes]]:
    """Every record of the file store with its line (without ``\\n``), verified; a torn tail is damage here."""
    seq, h = 0, GENESIS
    for p in segment_files(ws.journal_dir):
        data = p.read_bytes()
        batch: list[Record] = []
        seq, h, torn = read_segment(p, expect_seq=seq + 1, expect_hash=h, newest=True, on_record=batch.append,
                                    data=data)
        if torn is not None:
            raise JournalDamaged(f"journal damaged: {p.name} ends in a torn record",
                                 detail="Run 'sop-recover' first: it cuts the torn tail off and keeps its bytes.")
        yield from zip(batch, data.split(b"\n"), strict=False)


def move_to_pg(files: Workspace, pg: Workspace) -> int:
    """Copy the file store's whole history into an empty PostgreSQL store, chain intact; the count copied.

    When the database already holds exactly this history (a move that
    stopped after copying), nothing is copied again and the count is 0.
    """
    have = pgstore.load(pg)
    if have.seq:                                 # only then is the file journal's end needed before the copy
        tip = (0, GENESIS)
        for rec, line in file_lines(files):
            tip = (rec.seq, line_hash(line))
        if (have.seq, have.hash) == tip:
            return 0
        raise JournalDamaged(f"journal damaged: the PostgreSQL store {pgstore.shown(pgstore.dsn_of(pg))} holds "
                             f"another history (record {have.seq}) than the file journal (record {tip[0]})",
                             detail="Point [journal] dsn at an empty database to move this journal there.")
    return pgstore.import_records(pg, ((rec, line, name_tags(rec.type, rec.data)) for rec, line in file_lines(files)))


# ---------------------------------------------------------------- the index of sealed segments

INDEX_VERSION = 1
_NAMING_TYPES = frozenset({"begin", "plan", "remove_row", "delete", "rename", "restored", "lost_accepted",
                           "released"})
_PATH_KEYS = frozenset({"path", "src", "dst", "strategydir", "rundir"})


class SegmentIndex(msgspec.Struct, kw_only=True):
    """Which transactions a segment holds, and the strategies and runs they name (see *Index*)."""

    version: int = INDEX_VERSION
    segment: str
    bytes: int
    sha256: str
    txids: dict[str, list[str]] = {}
    runs: dict[str, list[str]] = {}


class _Slim(msgspec.Struct, kw_only=True):
    txid: str = ""
    type: str = ""
    data: msgspec.Raw = msgspec.Raw(b"{}")


_decode_slim = msgspec.json.Decoder(_Slim).decode
_decode_index = msgspec.json.Decoder(SegmentIndex).decode


def _collect_names(obj: Any, key: str, strategies: set[str], runs: set[str]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k != "files":                     # a deleted folder's file list names files, not strategies
                _collect_names(v, names.header_key(k), strategies, runs)
    elif isinstance(obj, list):
        for v in obj:
            _collect_names(v, key, strategies, runs)
    elif isinstance(obj, str) and obj:
        if key == "strategy":
            strategies.add(names.key(obj))
        elif key == "runid":
            runs.add(names.key(obj))
        elif key in _PATH_KEYS:
            top, _, part = obj.partition("/")
            part = part.split("/")[0]
            m = names.FAILED_RE.match(part)
            base = names.key(m["base"] if m else part)
            if part and top == "backtests":
                strategies.add(base)
            elif part and top == "runs":
                runs.add(base)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and key == "runid":
        runs.add(names.key(names.cell_text(obj)))


def named(type_: str, data: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Comparison keys of the strategies and the run ids a record names.

    A ``begin`` names its strategy (its run is its own); a sweep's ``plan``,
    ``remove_row``, ``delete`` and ``rename`` name those their steps touch:
    ``strategy``/``run_id`` values, and ``backtests/<name>`` or
    ``runs/<name>`` paths (``<name>_FAILED_<ts>`` counts as ``<name>``).
    """
    strategies: set[str] = set()
    runs: set[str] = set()
    if type_ == "begin":
        if isinstance(data.get("strategy"), str) and data["strategy"]:
            strategies.add(names.key(data["strategy"]))
    elif type_ in _NAMING_TYPES:
        _collect_names(data, "", strategies, runs)
    return strategies, runs


def build_index(name: str, data: bytes, sha256: str = "") -> SegmentIndex:
    """Index one segment's bytes; lines that do not decode (a torn tail) are skipped."""
    txids: dict[str, set[str]] = {}
    runs: dict[str, set[str]] = {}
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            slim = _decode_slim(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        keys = txids.setdefault(slim.txid, set())
        if slim.type in _NAMING_TYPES:
            try:
                d = msgspec.json.decode(slim.data)
            except msgspec.DecodeError:
                continue
            if isinstance(d, dict):
                s, r = named(slim.type, d)
                keys |= s
                if r:
                    runs.setdefault(slim.txid, set()).update(r)
    return SegmentIndex(segment=name, bytes=len(data), sha256=sha256,
                        txids={t: sorted(k) for t, k in txids.items()},
                        runs={t: sorted(k) for t, k in runs.items()})


def index_path(ws: Workspace, segment: str) -> Path:
    return ws.cache_dir / "index" / f"{segment}.json"


def read_index(ws: Workspace, seg: Segment) -> SegmentIndex | None:
    """The index of a sealed segment, or None when it is missing, unreadable or not of these bytes."""
    try:
        idx = _decode_index(index_path(ws, seg.name).read_bytes())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if idx.version != INDEX_VERSION or idx.segment != seg.name or idx.bytes != seg.bytes or idx.sha256 != seg.sha256:
        return None
    return idx


def write_index(ws: Workspace, idx: SegmentIndex) -> None:
    """Best effort: the index only saves time, so failing to write it is not an error."""
    try:
        path = index_path(ws, idx.segment)
        if not path.parent.is_dir():
            fsops.mkdir(path.parent, parents=True, exist_ok=True)
        fsops.atomic_write(path, msgspec.json.encode(idx))
    except OSError:
        pass


@dataclass
class IndexedSegment:
    path: Path
    entry: Segment | None          # the checkpoint's entry when the segment is sealed
    index: SegmentIndex
    newest: bool
    data: bytes | None = None      # kept when the segment was read to index it


def indexed_segments(ws: Workspace, *, update_index: bool = True) -> list[IndexedSegment]:
    """Every segment with its index: the stored one when it matches the checkpoint, else built by reading it.

    Missing indexes of sealed segments are written when ``update_index``.
    """
    cp = read_checkpoint(ws)
    sealed = {s.name: s for s in cp.segments} if cp is not None else {}
    segs = segment_files(ws.journal_dir)
    out: list[IndexedSegment] = []
    for i, p in enumerate(segs):
        entry = sealed.get(p.name)
        idx = read_index(ws, entry) if entry is not None else None
        data = None
        if idx is None:
            data = p.read_bytes()
            digest = hashlib.sha256(data).hexdigest() if entry is not None else ""
            idx = build_index(p.name, data, digest)
            if update_index and entry is not None and digest == entry.sha256 and len(data) == entry.bytes:
                write_index(ws, idx)
        out.append(IndexedSegment(p, entry, idx, i == len(segs) - 1, data))
    return out


def read_indexed(segs: list[IndexedSegment], want: Collection[str]) -> list[Record]:
    """The records of the transactions ``want``, oldest first, from the segments whose index names them.

    Each segment read is verified on its own — sums, sequence and chain
    within it, and a sealed one against its checkpoint digest; ``sop-fsck``
    verifies the chain across all of them.
    """
    want = set(want)
    out: list[Record] = []
    for s in segs:
        if not want.intersection(s.index.txids):
            continue
        data = s.data if s.data is not None else s.path.read_bytes()
        e = s.entry
        if e is not None and (len(data) != e.bytes or hashlib.sha256(data).hexdigest() != e.sha256):
            raise JournalDamaged(f"journal damaged: segment {s.path.name} does not match its digest in the "
                                 "checkpoint", detail="A sealed segment was changed; run 'sop-fsck' for details.")
        first_nl = data.find(b"\n")
        head = verify_line(data[:first_nl]) if first_nl > 0 else None
        batch: list[Record] = []
        read_segment(s.path, expect_seq=_segment_first(s.path), expect_hash=head.prev if head else GENESIS,
                     newest=s.newest, data=data, on_record=lambda r, b=batch: b.append(r) if r.txid in want else None)
        out.extend(batch)
    return out


def find_records(ws: Workspace, txids: Collection[str] = (), strategy: str | None = None, *,
                 update_index: bool = True) -> list[Record]:
    """The records of some transactions, oldest first, reading only the segments that hold them.

    The transactions are ``txids`` and, with ``strategy``, its whole life:
    every transaction with a record naming it (:func:`named`, compared by
    :func:`journal.names.key`), and every sweep that names one of the run
    ids of its runs.
    """
    if is_pg(ws):
        return pgstore.find_records(ws, list(txids), strategy)
    segs = indexed_segments(ws, update_index=update_index)
    want = set(txids)
    if strategy is None:
        return read_indexed(segs, want)
    skey = names.key(strategy)
    want |= {t for s in segs for t, keys in s.index.txids.items() if skey in keys}
    recs = read_indexed(segs, want)
    rkeys = {names.key(str(r.data.get("run_id", ""))) for r in recs
             if r.type == "begin" and names.key(str(r.data.get("strategy", ""))) == skey}
    more = {t for s in segs for t, keys in s.index.runs.items() if rkeys.intersection(keys)} - want
    if more:
        recs = sorted([*recs, *read_indexed(segs, more)], key=lambda r: r.seq)
    return recs


def name_tags(type_: str, data: dict[str, Any]) -> list[str]:
    """What a record names, as the PostgreSQL store indexes it: ``s:<strategy key>``, ``r:<run key>``."""
    strategies, runs = named(type_, data)
    return [f"s:{k}" for k in sorted(strategies)] + [f"r:{k}" for k in sorted(runs)]


def strategies_named(type_: str, data: dict[str, Any]) -> set[str]:
    """Comparison keys of the strategies a record names (see :func:`named`)."""
    return named(type_, data)[0]


class Writer:
    """Appends records; the caller holds the workspace lock for its whole life."""

    def __init__(self, ws: Workspace, loaded: Loaded | None = None) -> None:
        self.ws = ws
        self.j = loaded if loaded is not None else load(ws)
        self.user = username()
        self.host = hostname()

    @property
    def states(self) -> dict[str, TxState]:
        return self.j.states

    def anchor(self) -> None:
        """Record how far the journal has come, outside it (``.sop/anchor.json``, for either store).

        With the PostgreSQL store too: a database that was emptied, re-created
        or restored from an older backup must be damage, never a new history.
        """
        write_anchor(self.ws, self.j.seq, self.j.hash)

    def cut_torn(self, now: datetime | None = None) -> None:
        """Cut a torn tail off, keeping its bytes in ``.sop/lost+found/`` first."""
        torn = self.j.torn
        if torn is None:
            return
        fsops.mkdir(self.ws.lost_found, exist_ok=True, parents=True)
        kept = self.ws.lost_found / f"{torn.segment.name}.{torn.offset}.torn"
        fsops.atomic_write(kept, torn.data)
        fsops.truncate_durable(torn.segment, torn.offset)
        self.j.torn = None
        self.j.active_bytes = torn.offset
        self.append("", "tail_cut", {"segment": torn.segment.name, "offset": torn.offset,
                                     "bytes": len(torn.data), "kept": self.ws.rel(kept), "why": torn.why},
                    now=now)

    def append(self, txid: str, type_: str, data: dict[str, Any] | None = None,
               now: datetime | None = None) -> Record:
        """Write one record durably (fsync) and apply it to the in-memory state."""
        if self.j.torn is not None:
            self.cut_torn(now)
        data = data or {}
        probe = Record(seq=self.j.seq + 1, txid=txid, type=type_, time="", user="", host="", pid=0,
                       prev=self.j.hash, data=data)
        scratch = {k: msgspec.structs.replace(v) for k, v in self.j.states.items() if k == txid}
        try:
            apply(scratch, probe)
        except JournalDamaged:
            cur = self.j.states.get(txid)
            raise WrongState(f"transaction {txid} is {cur.state if cur else 'unknown'}; "
                             f"cannot record {type_!r}") from None
        body = Body(seq=self.j.seq + 1, txid=txid, type=type_, time=fmt_time(now or utcnow()),
                     user=self.user, host=self.host, pid=os.getpid(), prev=self.j.hash, data=data)
        line = encode_line(body)
        if is_pg(self.ws):
            rec = decode_record(line)
            pgstore.append(self.ws, self.j, rec, line, name_tags(type_, data), scratch.get(txid))
            self.j.seq, self.j.hash = body.seq, line_hash(line)
            self.j.apply(rec)
            if pgstore.checkpoint_due(self.j):
                self._pg_seal()
            return rec
        if self.j.active is None or self.j.active_bytes >= SEGMENT_BYTES:
            if self.j.active is not None:
                self._seal()
            fsops.mkdir(self.ws.journal_dir, exist_ok=True, parents=True)
            self.j.active = self.ws.journal_dir / f"{body.seq:016d}{SEGMENT_SUFFIX}"
            self.j.active_bytes = 0
            self.j.active_id = (0, 0)
        fsops.append_durable(self.j.active, line)
        if self.j.active_id == (0, 0):
            st = self.j.active.stat()
            self.j.active_id = (st.st_dev, st.st_ino)
        self.j.active_bytes += len(line)
        self.j.seq = body.seq
        self.j.hash = line_hash(line)
        rec = decode_record(line)
        self.j.apply(rec)
        return rec

    def _pg_seal(self) -> None:
        """The PostgreSQL store's checkpoint: open transactions and the ledger as of now."""
        cp = pgstore.write_checkpoint(self.ws, self.j, committed_rows(self.ws, self.j))
        self.j.checkpoint = cp
        self.j.ledger_ops = []
        self.j.states = {k: msgspec.structs.replace(v) for k, v in cp.open.items()}

    def _seal(self) -> None:
        """Write a checkpoint covering every segment so far, so the next one starts fresh."""
        cp = self.j.checkpoint or Checkpoint()
        segs = list(cp.segments)
        covered = {s.name for s in segs}
        indexes: list[SegmentIndex] = []
        for p in segment_files(self.ws.journal_dir):
            if p.name in covered:
                continue
            data = p.read_bytes()
            count = data.count(b"\n")
            digest = hashlib.sha256(data).hexdigest()
            segs.append(Segment(name=p.name, first=_segment_first(p), last=_segment_first(p) + count - 1,
                                bytes=len(data), sha256=digest))
            indexes.append(build_index(p.name, data, digest))
        open_states = {k: v for k, v in self.j.states.items() if v.state in OPEN_STATES}
        new = Checkpoint(seq=self.j.seq, hash=self.j.hash, segments=segs, open=open_states,
                         sheet_fp=self.j.sheet_fp)
        ledger.write(self.ws.sop_dir, committed_rows(self.ws, self.j), self.j.seq, self.j.hash)
        fsops.atomic_write(self.ws.checkpoint_path, msgspec.json.encode(new))
        self.anchor()
        self.j.checkpoint = new
        self.j.ledger_ops = []
        self.j.states = {k: msgspec.structs.replace(v) for k, v in open_states.items()}
        for idx in indexes:                      # after the checkpoint: an index is valid only for sealed bytes
            write_index(self.ws, idx)


def find_transaction(ws: Workspace, txid: str, loaded: Loaded) -> TxState | None:
    """A transaction's state: from the loaded tail, else from the segments that hold its records (index)."""
    if txid in loaded.states:
        return loaded.states[txid]
    states: dict[str, TxState] = {}
    for rec in find_records(ws, (txid,)):
        apply(states, rec)
    return states.get(txid)
