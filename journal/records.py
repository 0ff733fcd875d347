"""Plumbing: the journal's records and their replay, whatever store holds them.

The bytes of a record's line are defined in :mod:`journal.wal` (and
sop-journal(5)); both stores — segment files (:mod:`journal.wal`) and
PostgreSQL (:mod:`journal.pgstore`) — keep exactly those bytes, so the
checksum and the hash chain mean the same in either.  A transaction's state
is a pure function of its records (:func:`apply`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from . import ledger
from .errors import JournalDamaged
from .owner import Owner
from .states import OPEN_STATES, TRANSITIONS

GENESIS = "0" * 64
SUM_SUFFIX = 74          # len(',"sum":"') + 64 + len('"}')


class Body(msgspec.Struct, frozen=True, kw_only=True):
    """A record without its ``sum``: the bytes that the sum covers."""

    seq: int
    txid: str
    type: str
    time: str
    user: str
    host: str
    pid: int
    prev: str
    data: dict[str, Any] = {}


class Record(Body, frozen=True, kw_only=True):
    """One journal line.  Fields only grow, new ones last with defaults."""

    sum: str = ""


class TxState(msgspec.Struct, kw_only=True):
    """What replay knows of one transaction."""

    txid: str
    kind: str = "run"                       # "run" or "sweep"
    state: str = ""
    strategy: str = ""
    run_id: str = ""
    owner: Owner | None = None
    begun_at: str = ""
    updated_at: str = ""
    row: dict[str, Any] | None = None       # the decided row: header name -> value
    renames: dict[str, str] = {}            # src -> dst, as announced
    deleted: list[str] = []
    reason: str = ""
    plan: list[dict[str, Any]] = []
    removed_rows: list[dict[str, Any]] = []
    restored: list[dict[str, Any]] = []     # rows a restore put back (its "restored" records)
    plan_kind: str = ""                     # a plan's kind: "sweep", "release" or "restore"
    delete: bool = False                    # the rollback deletes instead of quarantining
    records: int = 0
    row_number: int = 0                     # where the row went, once committed
    leased: bool = False                    # its owner holds a lease in the PostgreSQL store (journal.pgstore)


class Segment(msgspec.Struct, kw_only=True):
    name: str
    first: int
    last: int
    bytes: int
    sha256: str


class Checkpoint(msgspec.Struct, kw_only=True):
    version: int = 1
    seq: int = 0
    hash: str = GENESIS
    segments: list[Segment] = []
    open: dict[str, TxState] = {}
    sheet_fp: str = ""                      # the Master Sheet's fingerprint as sop last wrote it ("" unknown)


encode = msgspec.json.Encoder().encode
decode_record = msgspec.json.Decoder(Record).decode
decode_checkpoint = msgspec.json.Decoder(Checkpoint).decode


def utcnow() -> datetime:
    return datetime.now(UTC)


def fmt_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def encode_line(body: Body) -> bytes:
    """The bytes of one record's line, ``\\n`` included."""
    raw = encode(body)
    digest = hashlib.sha256(raw).hexdigest()
    return raw[:-1] + b',"sum":"' + digest.encode() + b'"}\n'


def line_hash(line: bytes) -> str:
    """The hash that the next record's ``prev`` holds (line without ``\\n``)."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def verify_line(line: bytes) -> Record | None:
    """The record of a complete line (without ``\\n``), or None when it fails its sum or does not parse."""
    if len(line) <= SUM_SUFFIX or not line.endswith(b'"}') or line[-SUM_SUFFIX:-66] != b',"sum":"':
        return None
    body = line[:-SUM_SUFFIX] + b"}"
    if hashlib.sha256(body).hexdigest().encode() != line[-66:-2]:
        return None
    try:
        return decode_record(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def apply(states: dict[str, TxState], rec: Record, *, strict: bool = True) -> None:
    """Advance the state of ``rec.txid`` by one record (replay).

    With ``strict`` a record that the state machine does not allow is damage.
    """
    if rec.type == "tail_cut":
        return
    tx = states.get(rec.txid)
    cur = tx.state if tx else ""
    rule = TRANSITIONS.get(rec.type)
    if rule is None:
        if strict:
            raise JournalDamaged(f"record {rec.seq}: unknown record type {rec.type!r}")
        return
    allowed, nxt = rule
    if cur not in allowed:
        if strict:
            raise JournalDamaged(f"record {rec.seq}: {rec.type!r} is not allowed in state {cur or 'none'!r} "
                                 f"of transaction {rec.txid}")
        return
    d = rec.data
    if tx is None:
        tx = TxState(txid=rec.txid, begun_at=rec.time)
        states[rec.txid] = tx
        if rec.type == "begin":
            tx.kind = "run"
            tx.strategy = d.get("strategy", "")
            tx.run_id = d.get("run_id", "")
            tx.leased = d.get("lease") is True
            if d.get("owner"):
                tx.owner = msgspec.convert(d["owner"], Owner)
        else:
            tx.kind = "sweep"
            tx.plan = list(d.get("steps", []))
            tx.plan_kind = next((k for k in ("release", "restore") if d.get(k)), "sweep")
            if d.get("owner"):
                tx.owner = msgspec.convert(d["owner"], Owner)
    tx.records += 1
    tx.updated_at = rec.time
    if rec.type == "decide":
        tx.row = d.get("row")
    elif rec.type == "defer":
        tx.reason = d.get("reason", "")
    elif rec.type == "rollback":
        tx.reason = d.get("reason", "")
        tx.delete = bool(d.get("delete", False))
    elif rec.type == "rename":
        tx.renames = {**tx.renames, d["src"]: d["dst"]}
    elif rec.type == "delete":
        tx.deleted = [*tx.deleted, d["path"]]
    elif rec.type == "remove_row":
        tx.removed_rows = [*tx.removed_rows, d]
    elif rec.type == "restored":
        tx.restored = [*tx.restored, d]
    elif rec.type in ("committed", "adopt"):
        tx.row_number = int(d.get("row_number", 0) or 0)
    if nxt is not None:
        tx.state = nxt


@dataclass
class Torn:
    segment: Path
    offset: int
    data: bytes
    why: str


@dataclass
class Loaded:
    """The journal as a writer sees it: where it ends and what is open."""

    seq: int = 0
    hash: str = GENESIS
    active: Path | None = None
    active_bytes: int = 0
    states: dict[str, TxState] = field(default_factory=dict)   # open ones, plus any touched since the checkpoint
    torn: Torn | None = None
    checkpoint: Checkpoint | None = None
    active_id: tuple[int, int] = (0, 0)                        # (device, inode) of the active segment
    ledger_ops: list[ledger.Op] = field(default_factory=list)  # what records since the checkpoint did to it
    sheet_fp: str = ""                 # the fingerprint of the sheet sop wrote last (a record's sheet_fp), "" unknown
    tail_seq: int = 0                  # the record the tail cache (file store) was last saved at

    def apply(self, rec: Record) -> None:
        """Replay one record: the transaction's state, the sheet's last fingerprint, and the ledger."""
        apply(self.states, rec)
        fp = rec.data.get("sheet_fp")
        if fp and isinstance(fp, str):
            self.sheet_fp = fp
        if rec.type not in ledger.TYPES:
            return                                  # most records (begin, mkdir, decide, ...) leave it alone
        tx = self.states.get(rec.txid)
        op = ledger.op_of(rec, tx.kind, tx.strategy, tx.run_id) if tx is not None else None
        if op is not None:
            self.ledger_ops.append(op)

    def follow(self, **changes: Any) -> tuple[Loaded, Callable[[Record], None]]:
        """A copy to replay newer records into, and the replayer (:func:`journal.wal.refresh`, both stores).

        A transaction the newer records touch is copied first, so a state
        handed out from ``self`` stays as it was.
        """
        out = dataclasses.replace(self, states=dict(self.states), ledger_ops=list(self.ledger_ops), **changes)
        touched: set[str] = set()

        def on_record(rec: Record) -> None:
            if rec.txid in out.states and rec.txid not in touched:
                out.states[rec.txid] = msgspec.structs.replace(out.states[rec.txid])
            touched.add(rec.txid)
            out.apply(rec)
        return out, on_record

    def open_transactions(self) -> list[TxState]:
        return [t for t in self.states.values() if t.state in OPEN_STATES]
