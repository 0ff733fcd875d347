"""Task module: the audit trail — ``sop-log`` (what happened) and ``sop-fsck`` (can it be trusted).

Both read the journal and never change it.  :func:`log` groups records by
transaction and replays each one's state; :func:`fsck` reads every segment
and verifies every byte the way :mod:`journal.wal` defines them.

Reading only what is needed
===========================
``log`` with a transaction id or ``strategy`` reads the per-segment index
(``.sop/cache/index/``, see :mod:`journal.wal`) to find the segments that
hold the transactions it wants, and reads only those (each verified on its
own: sums, sequence and chain within the segment, and a sealed segment's
checkpoint digest).  Without those filters it reads and verifies the whole
history.  A strategy's *life* is every transaction whose ``begin`` names it
plus every sweep with a step that names it (a ``remove_row`` of its row, a
``delete`` or ``rename`` of ``backtests/<name>`` or a quarantined
``<name>_FAILED_<ts>``) or one of its runs' ids (``runs/<run_id>``),
compared with :func:`journal.names.key`.

What fsck checks
================
In order of the records, stopping at the first damage: each line's sum;
that the sequence numbers run from 1 without a gap, duplicate or swap,
across segments (a segment's name is its first record's number; a missing
segment is a gap); that each ``prev`` is the hash of the line before; that
each record is allowed by :data:`journal.wal.TRANSITIONS` in its
transaction's state; and against the checkpoint: each sealed segment's
size, first and last record and SHA-256 digest, the record the checkpoint
ends at and its hash, and the open transactions it lists (txid, kind,
state, strategy, run id).  A torn tail (SPEC §3) is not damage.  An
unreadable checkpoint is only a warning: writers then replay the journal.
``fsck`` takes no lock: a tail torn by a writer that is appending at that
very moment shows as torn, and is gone when it is run again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from . import names, pgstore, wal
from .errors import JournalDamaged, NoSuchTransaction, UsageError
from .render import NOT_JSON
from .states import OPEN, OPEN_STATES, STATE_CHOICES, STATES
from .when import parse_when
from .workspace import RootArg, Workspace, open_workspace

# ---------------------------------------------------------------- sop-log

@dataclass
class Transaction:
    """One transaction as the journal tells it: its replayed state and its records, oldest first."""

    txid: str
    strategy: str
    run_id: str
    state: str
    records: list[dict[str, Any]]
    kind: str = "run"        # "run", "sweep", "release", "restore", or "journal" (a tail_cut, which has no txid)
    owner: dict[str, Any] | None = None
    begun_at: str = ""
    updated_at: str = ""


@dataclass
class LogResult:
    """Transactions, newest first (by when each began); ``torn`` notes a torn tail that was skipped."""

    transactions: list[Transaction]
    torn: str | None = field(default=None, metadata=NOT_JSON)


def _states_wanted(state: str | Collection[str] | None) -> set[str] | None:
    if state is None:
        return None
    wanted = [state] if isinstance(state, str) else list(state)
    if not wanted:
        return None
    out: set[str] = set()
    for s in wanted:
        s = s.strip().lower()
        if s == OPEN:
            out |= set(OPEN_STATES)
        elif s in STATES:
            out.add(s)
        else:
            raise UsageError(f"unknown state {s!r}", detail=f"Known states: {', '.join(STATE_CHOICES)}.")
    return out


def record_dict(rec: wal.Record) -> dict[str, Any]:
    """A record as ``sop-log --json`` shows it (its chain fields left out: ``sop-fsck`` checks those)."""
    return {"seq": rec.seq, "type": rec.type, "time": rec.time, "user": rec.user, "host": rec.host,
            "pid": rec.pid, "data": rec.data}


def _in_life(recs: list[wal.Record], skey: str, rkeys: set[str]) -> bool:
    """Whether a transaction belongs to a strategy's life: it names the strategy, or one of its runs."""
    for r in recs:
        s, runs = wal.named(r.type, r.data)
        if skey in s or rkeys.intersection(runs):
            return True
    return False


def _transaction(txid: str, recs: list[wal.Record]) -> Transaction:
    states: dict[str, wal.TxState] = {}
    for r in recs:
        wal.apply(states, r, strict=False)
    st = states.get(txid)
    owner = None
    if st is not None and st.owner is not None:
        owner = msgspec.to_builtins(st.owner)
    if st is None:           # a record that the state machine did not accept; sop-fsck reports why
        return Transaction(txid, "", "", "", [record_dict(r) for r in recs], "run", None, recs[0].time,
                           recs[-1].time)
    return Transaction(txid, st.strategy, st.run_id, st.state, [record_dict(r) for r in recs],
                       st.plan_kind or st.kind, owner, st.begun_at, st.updated_at)


def log(*, root: RootArg = None, txid: str | None = None, strategy: str | None = None,
        since: str | datetime | None = None, until: str | datetime | None = None,
        state: str | Collection[str] | None = None, now: datetime | None = None,
        env: dict[str, str] | None = None) -> LogResult:
    """The audit history, newest first (SPEC §5 sop-log); the filters combine with *and*.

    Args:
        txid: only this transaction; NoSuchTransaction (exit 4) when the journal has none.
        strategy: the strategy's whole life: its transactions and the sweeps that named it.
        since, until: transactions with a record in this window (ISO date/time, or an age like ``3d``).
        state: one state or several (``open`` = every open state).
    """
    now = now if now is not None else wal.utcnow()
    ws = open_workspace(root, env)
    ws.check_store(write=False)         # read-only: a warning on a network file system
    lo = wal.fmt_time(parse_when(since, now)) if since is not None else None
    hi = wal.fmt_time(parse_when(until, now, end=True)) if until is not None else None
    wanted = _states_wanted(state)
    torn_note = None
    if txid is not None or strategy is not None:
        recs = wal.find_records(ws, (txid,) if txid is not None else (), strategy)
    else:
        j = wal.load(ws)                # the tail as writers see it: to say whether it is torn
        if j.torn is not None:
            torn_note = f"{j.torn.segment.name} at byte {j.torn.offset} ({j.torn.why})"
        recs = list(wal.iter_records(ws))
    groups: dict[str, list[wal.Record]] = {}
    for r in recs:
        groups.setdefault(r.txid or f"#{r.seq}", []).append(r)
    if txid is not None and txid not in groups:
        raise NoSuchTransaction(f"no such transaction: {txid}",
                                detail="Action: 'sop-log' lists every transaction; 'sop-status' the open ones.")
    skey = names.key(strategy) if strategy is not None else None
    rkeys = {names.key(str(r.data.get("run_id", ""))) for r in recs
             if r.type == "begin" and names.key(str(r.data.get("strategy", ""))) == skey}
    out: list[Transaction] = []
    for key, rs in groups.items():
        if txid is not None and key != txid:
            continue
        if skey is not None and not _in_life(rs, skey, rkeys):
            continue
        if (lo is not None or hi is not None) and not any(
                (lo is None or r.time >= lo) and (hi is None or r.time <= hi) for r in rs):
            continue
        if key.startswith("#"):         # a journal event (tail_cut): no transaction, no state
            if wanted is not None:
                continue
            out.append(Transaction("", "", "", "", [record_dict(r) for r in rs], "journal", None, rs[0].time,
                                   rs[-1].time))
            continue
        tx = _transaction(key, rs)
        if wanted is not None and tx.state not in wanted:
            continue
        out.append(tx)
    out.sort(key=lambda t: t.records[0]["seq"], reverse=True)
    return LogResult(out, torn_note)


# ---------------------------------------------------------------- the human view of sop-log

Style = Callable[..., str]


def plain(text: str, **_: Any) -> str:
    return text


def _short_time(t: str) -> str:
    return t[:19] + "Z" if len(t) >= 19 else t


def _values(row: Any, limit: int | None) -> str:
    if not isinstance(row, dict):
        return repr(row)
    items = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in row.items()]
    if limit is not None and len(items) > limit:
        items = [*items[:limit], f"… {len(items) - limit} more"]
    return ", ".join(items)


def _files(files: Any, limit: int | None) -> list[str]:
    if not isinstance(files, list):
        return []
    lines = []
    for f in files:
        if isinstance(f, (list, tuple)) and len(f) == 2:
            lines.append(f"{f[0]} ({f[1]} bytes)")
        else:
            lines.append(str(f))
    if limit is not None and len(lines) > limit:
        lines = [*lines[:limit], f"… and {len(lines) - limit} more file(s) (sop-log TXID shows all)"]
    return lines


def describe(rec: dict[str, Any], *, full: bool = False) -> list[str]:
    """What one record says, for people: a first line and any detail lines (file lists, plan steps)."""
    d = rec.get("data") or {}
    t = rec["type"]
    lim = None if full else 10
    if t == "begin":
        o = d.get("owner") or {}
        return [f"began: strategy {d.get('strategy')!r}, run {d.get('run_id')!r}; owner "
                f"{o.get('user') or '?'}@{o.get('host', '?')} pid {o.get('pid', '?')}"]
    if t == "mkdir":
        return [f"create {d.get('path')}/"]
    if t == "decide":
        return [f"commit decision (the run passed the gate); row: {_values(d.get('row'), lim)}"]
    if t == "defer":
        return [f"deferred: {d.get('reason', '')} (sheet locked by {d.get('locked_by', '?')}); "
                "sop-recover adds the row later"]
    if t == "append":
        return [f"append row to {d.get('sheet', 'the Master Sheet')}: {_values(d.get('row'), lim)}"]
    if t == "committed":
        return [f"committed: row {d.get('row_number')}"]
    if t == "rollback":
        how = "delete" if d.get("delete") else "quarantine"
        return [f"rollback decision ({how}): {d.get('reason', '')}"]
    if t == "rename":
        return [f"rename {d.get('src')} -> {d.get('dst')}"]
    if t == "delete":
        files = d.get("files") or []
        size = sum(f[1] for f in files if isinstance(f, (list, tuple)) and len(f) == 2 and isinstance(f[1], int))
        return [f"delete {d.get('path')} ({len(files)} file(s), {size} bytes)", *_files(files, lim)]
    if t == "remove_row":
        return [f"remove row {d.get('row_number')}: {_values(d.get('values'), lim)}"]
    if t == "aborted":
        return ["aborted"]
    if t == "plan":
        steps = d.get("steps") or []
        shown = steps if full else steps[:10]
        kind = next((k for k in ("release", "restore") if d.get(k)), "sweep")
        lines = [f"{kind} plan: {len(steps)} step(s)"]
        lines += [", ".join(f"{k}={v}" for k, v in s.items()) if isinstance(s, dict) else str(s) for s in shown]
        if len(shown) < len(steps):
            lines.append(f"… and {len(steps) - len(shown)} more step(s) (sop-log TXID shows all)")
        return lines
    if t == "done":
        return ["plan finished"]
    if t == "adopt":
        return [f"adopted as committed: its row is on the sheet (row {d.get('row_number')})"]
    if t == "restored":
        return [f"restored {d.get('strategy')} (run {d.get('run_id')}, {d.get('txid') or 'no txid'}) as row "
                f"{d.get('row_number')}"]
    if t == "lost_accepted":
        return [f"accepted the loss of {d.get('strategy')}'s row (run {d.get('run_id')}, {d.get('txid')}); "
                f"folders quarantined: {_values(d.get('moved'), lim)}"]
    if t == "released":
        return [f"released {d.get('strategy')} (run {d.get('run_id')}): its slot is free"]
    if t == "abandon":
        return [f"abandoned: {d.get('reason', '')}; what was done stays done"]
    if t == "tail_cut":
        return [f"cut a torn journal tail: {d.get('segment')} at byte {d.get('offset')} ({d.get('why', '')}), "
                f"{d.get('bytes')} byte(s) kept in {d.get('kept')}"]
    return [f"{t}: {msgspec.json.encode(d).decode()}"]


_STATE_COLOURS = {"committed": "green", "aborted": "red", "aborting": "red", "deferred": "yellow",
                  "committing": "yellow", "begun": "cyan", "planned": "cyan"}


def format_log(res: LogResult, *, full: bool = False, style: Style = plain) -> str:
    """The human view: one block per transaction, like ``git log``; ``full`` adds each record's writer."""
    blocks: list[str] = []
    for tx in res.transactions:
        if tx.kind == "journal":
            head = style("journal", fg="yellow")
        else:
            head = style(f"transaction {tx.txid}", fg="yellow") + " " + \
                style(f"({tx.state or 'unknown'})", fg=_STATE_COLOURS.get(tx.state), bold=True)
        lines = [head]
        if tx.kind in ("sweep", "release", "restore"):
            lines.append(f"Kind:     {tx.kind}")
        elif tx.kind == "run":
            lines.append(f"Strategy: {tx.strategy}")
            lines.append(f"Run:      {tx.run_id}")
        if tx.owner:
            o = tx.owner
            lines.append(f"Owner:    {o.get('user') or '?'}@{o.get('host', '?')} pid {o.get('pid', '?')}")
        lines.append(f"Begun:    {_short_time(tx.begun_at)}")
        if tx.updated_at != tx.begun_at:
            lines.append(f"Last:     {_short_time(tx.updated_at)}")
        lines.append("")
        width = len(str(tx.records[-1]["seq"])) if tx.records else 1
        for r in tx.records:
            first, *rest = describe(r, full=full)
            who = f"  [{r['user']}@{r['host']} pid {r['pid']}]" if full else ""
            lead = f"    #{r['seq']:<{width}}  {_short_time(r['time'])}  {r['type']:<10} "
            lines.append(f"{lead}{first}{who}")
            lines += [" " * (len(lead) + 2) + x for x in rest]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------- sop-fsck

@dataclass
class Damage:
    """Where the journal stops being trustworthy: the first damaged record."""

    segment: str
    line: int | None
    seq: int | None
    message: str


@dataclass
class SegmentReport:
    name: str
    first: int
    last: int
    records: int
    bytes: int
    sealed: bool
    digest: str = ""                        # "ok", "mismatch", or "" when not sealed (or not reached)


@dataclass
class FsckResult:
    """What ``sop-fsck`` found; ``ok`` is False only for damage (a torn tail is recoverable)."""

    ok: bool
    records: int
    segments: list[SegmentReport] = field(default_factory=list)
    torn: dict[str, Any] | None = None
    damage: Damage | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    action: str = ""

    @property
    def error(self) -> JournalDamaged | None:
        """Damage (exit 5) once the report is out; a torn tail is not damage."""
        if self.ok:
            return None
        return JournalDamaged(self.damage.message if self.damage else "the journal is damaged", detail=self.action)


DAMAGE_ACTION = ("Do not edit the journal by hand, and do not run commands that write (they refuse, exit 5). "
                 "Keep a copy of .sop/, then restore .sop/journal/ and .sop/checkpoint.json from a backup "
                 "taken before the damage; the records before the damaged one verify.")
CHECKPOINT_ACTION = ("Every record verifies but the checkpoint does not match them: if a backup agrees with the "
                     "journal, move .sop/checkpoint.json aside (writers then replay the journal and write a new "
                     "one at the next seal); otherwise restore .sop/ from a backup.")
PG_DAMAGE_ACTION = ("Do not edit the sop_journal table by hand, and do not run commands that write (they refuse, "
                    "exit 5). Restore the database from a backup (or point-in-time recovery) taken before the "
                    "damage; the records before the damaged one verify.")
TORN_ACTION = ("Not damage: 'sop-recover' (or the next command that writes) cuts it off and keeps its bytes in "
               ".sop/lost+found/.")


class _Stop(Exception):
    def __init__(self, damage: Damage) -> None:
        super().__init__(damage.message)
        self.damage = damage


def _open_summary(states: dict[str, wal.TxState]) -> dict[str, tuple[str, str, str, str]]:
    return {k: (v.kind, v.state, v.strategy, v.run_id) for k, v in states.items() if v.state in OPEN_STATES}


def fsck(*, root: RootArg = None, env: dict[str, str] | None = None) -> FsckResult:
    """Verify the whole journal, read-only (SPEC §3, §5 sop-fsck); the result says where it is damaged."""
    ws = open_workspace(root, env)
    ws.check_store(write=False)         # read-only: a warning on a network file system
    res = FsckResult(ok=True, records=0)
    if wal.is_pg(ws):
        try:
            _verify_pg(ws, res)
        except _Stop as stop:
            res.ok = False
            res.damage = stop.damage
            res.action = PG_DAMAGE_ACTION
        return res
    cp_exists = ws.checkpoint_path.exists()
    cp = wal.read_checkpoint(ws)
    if cp_exists and cp is None:
        res.warnings.append("the checkpoint (.sop/checkpoint.json) does not decode; writers ignore it and replay "
                            "the journal, and the next seal writes a new one")
    res.checkpoint = {"present": cp is not None, "seq": cp.seq if cp else 0,
                      "segments": len(cp.segments) if cp else 0, "open": len(cp.open) if cp else 0}
    try:
        extra = sorted(n for n in os.listdir(ws.journal_dir) if not n.endswith(wal.SEGMENT_SUFFIX))
    except FileNotFoundError:
        extra = []
    for n in extra:
        res.warnings.append(f".sop/journal/{n} is not a journal segment (the folder should hold nothing else)")
    try:
        _verify(ws.journal_dir, cp, res)
    except _Stop as stop:
        res.ok = False
        res.damage = stop.damage
        res.action = CHECKPOINT_ACTION if stop.damage.segment == "checkpoint.json" else DAMAGE_ACTION
    else:
        try:                                    # the journal must reach its anchor (SPEC §7, invariant 7)
            anchor = wal.read_anchor(ws)
            j = wal.load(ws)
            res.checkpoint["anchor"] = anchor.seq if anchor is not None else None
            del j
        except JournalDamaged as e:
            res.ok = False
            res.damage = Damage("anchor.json", None, None, e.message)
            res.action = e.detail or DAMAGE_ACTION
            return res
        if res.torn is not None:
            res.action = TORN_ACTION
    return res


def _verify(journal_dir: Path, cp: wal.Checkpoint | None, res: FsckResult) -> None:
    segs = wal.segment_files(journal_dir)
    present = {p.name for p in segs}
    sealed = {s.name: s for s in cp.segments} if cp is not None else {}
    by_first = {s.first: s for s in cp.segments} if cp is not None else {}
    states: dict[str, wal.TxState] = {}
    at_checkpoint: dict[str, tuple[str, str, str, str]] | None = None
    seq, h = 0, wal.GENESIS
    for i, p in enumerate(segs):
        newest = i == len(segs) - 1
        try:
            first = int(p.name[: -len(wal.SEGMENT_SUFFIX)])
        except ValueError:
            raise _Stop(Damage(p.name, None, seq + 1, f"{p.name} is not a segment name (16 digits, the first "
                                                      "record's number)")) from None
        if first != seq + 1:
            gone = by_first.get(seq + 1)
            if gone is not None and gone.name not in present:
                raise _Stop(Damage(gone.name, None, seq + 1,
                                   f"segment {gone.name} (records {gone.first}–{gone.last}) is missing"))
            if first > seq + 1:
                msg = (f"segment {p.name} starts at record {first}, but record {seq + 1} comes next: records "
                       f"{seq + 1}–{first - 1} are missing (a segment was removed or misnamed)")
            else:
                msg = (f"segment {p.name} starts at record {first}, but records up to {seq} are in the segments "
                       "before it (a segment was copied or misnamed)")
            raise _Stop(Damage(p.name, 1, seq + 1, msg))
        data = p.read_bytes()
        entry = sealed.get(p.name)
        rep = SegmentReport(p.name, first, first - 1, 0, len(data), entry is not None)
        res.segments.append(rep)
        pos, lineno, n = 0, 0, len(data)
        while pos < n:
            lineno += 1
            end = data.find(b"\n", pos)
            line = data[pos:] if end == -1 else data[pos:end]
            rec = wal.verify_line(line) if end != -1 else None
            if rec is None:
                why = "no newline at the end" if end == -1 else _why_bad(line)
                last_line = end == -1 or end + 1 == n
                if newest and last_line and entry is None:
                    res.torn = {"segment": p.name, "line": lineno, "offset": pos, "bytes": n - pos, "why": why,
                                "after": seq}
                    break
                raise _Stop(Damage(p.name, lineno, seq + 1, f"record {seq + 1} (line {lineno}): {why}"))
            _chain(p.name, lineno, rec, seq, h, states)
            seq, h = rec.seq, wal.line_hash(line)
            rep.last, rep.records = seq, rep.records + 1
            res.records = seq
            if cp is not None and seq == cp.seq:
                if h != cp.hash:
                    raise _Stop(Damage("checkpoint.json", None, seq,
                                       f"the checkpoint ends at record {seq} but holds another hash for it"))
                at_checkpoint = _open_summary(states)
            pos = n if end == -1 else end + 1
        if entry is not None:
            _check_sealed(p.name, data, entry, rep)
    if cp is not None:
        if cp.seq > seq:
            missing = [s for s in cp.segments if s.name not in present]
            where = missing[0].name if missing else (segs[-1].name if segs else "journal")
            raise _Stop(Damage(where, None, seq + 1, f"the checkpoint covers records up to {cp.seq}, but the journal "
                                                     f"ends at record {seq}: records were removed from the end"))
        for s in cp.segments:
            if s.name not in present:
                raise _Stop(Damage(s.name, None, s.first, f"segment {s.name} (records {s.first}–{s.last}), named "
                                                          "in the checkpoint, is missing"))
        if cp.segments and cp.segments[-1].last != cp.seq:
            raise _Stop(Damage("checkpoint.json", None, cp.seq, f"the checkpoint ends at record {cp.seq} but its last "
                                                                f"segment ends at {cp.segments[-1].last}"))
        if at_checkpoint is not None:
            listed = {k: (v.kind, v.state, v.strategy, v.run_id) for k, v in cp.open.items()}
            if listed != at_checkpoint:
                diff = sorted(set(listed.items()) ^ set(at_checkpoint.items()))
                txid = diff[0][0] if diff else "?"
                raise _Stop(Damage("checkpoint.json", None, cp.seq,
                                   f"the checkpoint's open transactions differ from the journal's at record "
                                   f"{cp.seq} (first: {txid}); writers would see the wrong ones"))


def _chain(where: str, lineno: int | None, rec: wal.Record, seq: int, h: str, states: dict[str, wal.TxState]) -> None:
    """Check that ``rec`` comes next (number, chain) and that the state machine allows it."""
    if rec.seq != seq + 1:
        if rec.seq <= seq:
            msg = (f"record {rec.seq} appears where record {seq + 1} was expected: a record was "
                   "duplicated or moved")
        else:
            lost = f"record {seq + 1} was" if rec.seq == seq + 2 else f"records {seq + 1}–{rec.seq - 1} were"
            msg = f"record {rec.seq} appears where record {seq + 1} was expected: {lost} removed or moved"
        raise _Stop(Damage(where, lineno, rec.seq, msg))
    if rec.prev != h:
        raise _Stop(Damage(where, lineno, rec.seq,
                           f"record {rec.seq} does not chain to the record before it: record {seq} was "
                           f"changed, or record {rec.seq} was moved"))
    try:
        wal.apply(states, rec, strict=True)
    except JournalDamaged as e:
        raise _Stop(Damage(where, lineno, rec.seq,
                           f"record {rec.seq} breaks the transaction state machine: {e.message}")) from None


def _verify_pg(ws: Workspace, res: FsckResult) -> None:
    """The PostgreSQL store: every line's sum, number and chain, the state machine, and each checkpoint."""
    cps = dict(pgstore.checkpoints(ws))
    bodies = pgstore.checkpoint_bodies(ws)
    res.checkpoint = {"present": bool(cps), "seq": max(cps, default=0), "segments": 0, "open": 0,
                      "store": "postgresql", "checkpoints": len(cps)}
    states: dict[str, wal.TxState] = {}
    seq, h = 0, wal.GENESIS
    where = f"PostgreSQL {pgstore.shown(pgstore.dsn_of(ws))}"
    for s, line in pgstore.iter_lines(ws):
        rec = wal.verify_line(line)
        if rec is None:
            raise _Stop(Damage(where, None, s, f"record {s}: {_why_bad(line)}"))
        if rec.seq != s:
            raise _Stop(Damage(where, None, s, f"the row for record {s} holds record {rec.seq}"))
        _chain(where, None, rec, seq, h, states)
        seq, h = rec.seq, wal.line_hash(line)
        res.records = seq
        if s in cps and cps[s] != h:
            raise _Stop(Damage(where, None, s, f"the checkpoint at record {s} holds another hash for it"))
        if s in cps:
            body = bodies.get(s)
            listed = {k: (v.kind, v.state, v.strategy, v.run_id) for k, v in body.open.items()} if body else None
            if listed != _open_summary(states):
                raise _Stop(Damage(where, None, s, f"the checkpoint at record {s} lists other open transactions "
                                                   "than the journal's; writers would see the wrong ones"))
    if any(c > seq for c in cps):
        raise _Stop(Damage(where, None, seq + 1, f"a checkpoint names record {max(cps)}, but the journal ends at "
                                                 f"record {seq}: records were removed from the end"))
    try:                                        # the journal must reach its anchor (SPEC §7, invariant 7)
        wal.check_anchor(ws, seq, h, wal.read_anchor(ws))
    except JournalDamaged as e:
        raise _Stop(Damage("anchor.json", None, None, e.message)) from None
    res.checkpoint["open"] = sum(1 for v in states.values() if v.state in OPEN_STATES)
    want, have = pgstore.expected_open(states), pgstore.open_table(ws)
    if want != have:
        odd = sorted(set(have.items()) ^ set(want.items()))
        res.warnings.append(f"sop_open (the names open runs hold, derived from the journal) differs from the "
                            f"journal at {len(odd)} name(s), first {odd[0][0]} ({odd[0][1]}): begins may be refused "
                            "wrongly; 'sop-recover' rebuilds it")


def _check_sealed(name: str, data: bytes, entry: wal.Segment, rep: SegmentReport) -> None:
    rep.digest = "mismatch"
    where = f"sealed segment {name} (records {entry.first}–{entry.last} in the checkpoint)"
    if len(data) != entry.bytes:
        raise _Stop(Damage(name, None, entry.first, f"{where} is {len(data)} bytes, the checkpoint says "
                                                    f"{entry.bytes}: it was changed after it was sealed"))
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise _Stop(Damage(name, None, entry.first, f"{where} does not match its SHA-256 digest in the checkpoint: "
                                                    "it was changed after it was sealed"))
    if rep.first != entry.first or rep.last != entry.last:
        raise _Stop(Damage(name, None, entry.first, f"{where} holds records {rep.first}–{rep.last}"))
    rep.digest = "ok"


def _why_bad(line: bytes) -> str:
    if not line.strip(b"\0"):
        return "zero bytes, not a record"
    try:
        msgspec.json.decode(line)
    except msgspec.DecodeError:
        return "not JSON"
    return "checksum mismatch (the record was changed)"


def format_fsck(res: FsckResult) -> str:
    """The human report of ``sop-fsck``."""
    sealed = [s for s in res.segments if s.sealed]
    if res.checkpoint.get("store") == "postgresql":
        lines = [f"checked {res.records} record(s) in the PostgreSQL store; "
                 f"{res.checkpoint.get('checkpoints', 0)} checkpoint(s) match"]
    else:
        lines = [f"checked {res.records} record(s) in {len(res.segments)} segment(s); "
                 f"{sum(1 for s in sealed if s.digest == 'ok')} of {len(sealed)} sealed segment(s) match the "
                 "checkpoint"]
    for w in res.warnings:
        lines.append(f"warning: {w}")
    if res.damage is not None:
        d = res.damage
        where = d.segment + (f" line {d.line}" if d.line is not None else "") + \
            (f", record {d.seq}" if d.seq is not None else "")
        lines.append(f"DAMAGED at {where}: {d.message}")
        lines.append(f"Action: {res.action}")
        return "\n".join(lines)
    if res.torn is not None:
        t = res.torn
        lines.append(f"torn tail: {t['segment']} line {t['line']} (byte {t['offset']}, {t['bytes']} byte(s)): "
                     f"{t['why']}, after record {t['after']}")
        lines.append(res.action)
    lines.append("journal OK")
    return "\n".join(lines)


__all__ = ["log", "fsck", "LogResult", "Transaction", "FsckResult", "Damage", "SegmentReport", "parse_when",
           "format_log", "format_fsck", "describe", "plain"]
