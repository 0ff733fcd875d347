"""The transaction layer: what every task module does to a transaction.

The task modules (:mod:`journal.porcelain`, :mod:`journal.recovery`,
:mod:`journal.janitor`, :mod:`journal.audit`) call down into this module and
never into each other's privates; this module calls only plumbing.  Like
Mercurial's ``transaction.py``, the one undo routine lives here, and both
``sop-abort`` and ``sop-recover`` run it.

* :class:`Session` — one command's handle on a workspace: the journal is
  loaded once and, each time the workspace lock is taken again, brought up to
  date by reading only what other writers appended (:func:`journal.wal.refresh`).
* Locks, in this order when both are held: the sheet writer's lock
  (``.sop/sheet.lock``), then the workspace lock (``.sop/lock``).
* Group commit (:func:`flush`): whoever holds the sheet writer's lock writes
  every decided row that is waiting, in one rewrite; a commit on its way to a
  decision leaves a hint in ``.sop/pending/`` (:func:`announce`) so that the
  writer waits a moment for it (:func:`gather`).
* Rollback (:func:`rollback`, :func:`finish_rollback`): record the decision,
  then quarantine (or delete) the run's folders, each step announced first
  and looked at before acting.
* The redo of a sweep plan (:func:`execute_plan`, :func:`finish_plan`).
* Liveness of a transaction's owner, as ``sop-status`` and recovery see it
  (:func:`info`).
* Where the file store may write: every command that writes takes the
  workspace lock or the sheet writer's lock through :class:`Session` first,
  and that is where a workspace on a network or FUSE file system is refused
  (:meth:`~journal.workspace.Workspace.check_store`), before anything changes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import fsops, ledger, locks, names, pgstore, sheet, wal
from .errors import NoSuchTransaction, Refused, SheetDamaged, SheetLocked, WrongState
from .owner import Owner, is_abandoned, liveness, owner_of, pid_running
from .states import DECIDED_STATES
from .workspace import Workspace

Progress = Callable[[str, int, int], None]      # (phase, done, total)
GATHER_SECONDS = 1.0      # the longest a sheet writer waits for commits that are about to decide


def clock(now: datetime | None) -> datetime:
    """``now`` when a caller (a test) gave one, else the current UTC time."""
    return now if now is not None else wal.utcnow()


def new_txid(now: datetime) -> str:
    return f"tx-{names.stamp(now)}-{os.urandom(3).hex()}"


def owner_record(o: Owner) -> dict[str, Any]:
    """An owner as the journal's ``begin`` and ``plan`` records hold it."""
    return {"host": o.host, "pid": o.pid, "start": o.start, "boot": o.boot, "user": o.user,
            "machine": o.machine, "pidns": o.pidns}


def describe(tx: wal.TxState) -> str:
    """A transaction as refusals name it: id, state, owner and since when."""
    who = f"pid {tx.owner.pid} on {tx.owner.host}" if tx.owner else "unknown owner"
    return f"transaction {tx.txid} ({tx.state}, owner {who}, since {tx.begun_at})"


def shared_note(ws: Workspace) -> str:
    """The network file system that an allowed workspace lies on, for a Busy message ("" when local)."""
    m = ws.check_store(write=False) if ws.config.allow_network_fs else None
    return f"a network file system ({m.fstype} at {m.point})" if m is not None else ""


# ---------------------------------------------------------------- the handle

class Session:
    """One command's handle on a workspace's transactions.

    The journal is loaded the first time the workspace lock is taken and
    refreshed incrementally each later time, so a command replays the
    history once however often it takes the lock.
    """

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._j: wal.Loaded | None = None

    @contextlib.contextmanager
    def locked(self, *, write: bool = True) -> Iterator[wal.Writer]:
        """Hold the workspace lock and give a journal writer over its current tail.

        ``write=False`` only reads (a dry run): a workspace the file store
        refuses (:meth:`Workspace.check_store`) is then warned about, not refused.
        """
        self.ws.check_store(write=write)
        with wal.hold(self.ws, shared=shared_note(self.ws)):
            j = wal.load(self.ws) if self._j is None else wal.refresh(self.ws, self._j)
            self._j = None                  # an error half-way: the next look loads afresh
            w = wal.Writer(self.ws, j)
            yield w
            wal.save_tail(self.ws, w.j)
            self._j = w.j

    def sheet_writer(self, *, write: bool = True) -> contextlib.AbstractContextManager[None]:
        """The sheet writer's lock: one process rewrites the Master Sheet at a time."""
        self.ws.check_store(write=write)
        return wal.hold(self.ws, "Master Sheet writer", shared=shared_note(self.ws))

    def get(self, w: wal.Writer, txid: str) -> wal.TxState:
        """A run's state as the journal says now; NoSuchTransaction (exit 4) when there is none."""
        tx = wal.find_transaction(self.ws, txid, w.j)
        if tx is None or tx.kind != "run":
            raise NoSuchTransaction(f"no such transaction: {txid}",
                                    detail="Action: 'sop-status' lists the open ones, 'sop-log' all of them.")
        return tx

    def current(self, txid: str) -> wal.TxState:
        """A run's state as the journal says now (read under the workspace lock)."""
        with self.locked() as w:
            return self.get(w, txid)

    def state_of(self, txid: str) -> str:
        """A run's state, or ``"unknown"``."""
        try:
            return self.current(txid).state
        except NoSuchTransaction:
            return "unknown"


def attempts(ws: Workspace, sleep: Callable[[float], None], n: int | None = None) -> Iterator[int]:
    """``[lock].retries`` attempts (or ``n``), with doubling backoff between them."""
    for attempt in range(n or ws.config.retries):
        if attempt:
            sleep(ws.config.backoff * (2 ** (attempt - 1)))
        yield attempt


def sheet_locked_by(ws: Workspace) -> str | None:
    """Who holds the Master Sheet open (with the owner file's age), or None when it is free."""
    return locks.sheet_locked_by(ws.sheet, stale_hours=ws.config.stale_owner_hours)


def owner_hint(ws: Workspace) -> str:
    """How old the sheet's owner file is and how to clear it safely ("" when there is none)."""
    f = locks.owner_file(ws.sheet, stale_hours=ws.config.stale_owner_hours)
    return "" if f is None else " " + f.hint()


def locked_out(ws: Workspace, who: str, what: str) -> SheetLocked:
    """The error of a sheet that a person held through every attempt."""
    return SheetLocked(f"the Master Sheet is locked by {who}: {what}",
                       locked_by=who,
                       detail=f"It stayed locked through {ws.config.retries} attempt(s). Close it in Excel or "
                              f"LibreOffice and run the command again.{owner_hint(ws)}")


def entries_by_key(folder: Path) -> dict[str, str]:
    """Names in a folder by comparison key (quarantined names left out)."""
    out: dict[str, str] = {}
    try:
        with os.scandir(folder) as it:
            for e in it:
                if not names.FAILED_RE.match(e.name):
                    out.setdefault(names.key(e.name), e.name)
    except FileNotFoundError:
        pass
    return out


# ---------------------------------------------------------------- liveness

@dataclass
class TxInfo:
    txid: str
    strategy: str
    run_id: str
    state: str
    owner: dict[str, Any] | None
    abandoned: bool
    alive: bool | None
    liveness: str
    begun_at: str


def info(ws: Workspace, tx: wal.TxState, now: datetime, older_than: timedelta,
         free_leases: set[str] | None = None) -> TxInfo:
    """An open transaction with its owner's liveness and whether it is abandoned (SPEC §4).

    With the PostgreSQL store, a transaction begun with a lease is abandoned
    exactly when its lease is free, whatever host it ran on (no age limit).
    ``free_leases``: the leases found free through the grace
    (:func:`journal.pgstore.leases_free`), which recovery decides on; else
    the lease is tried once, now.
    """
    owner = tx.owner
    if tx.leased and wal.is_pg(ws):
        free = tx.txid in free_leases if free_leases is not None else pgstore.lease_free(ws, tx.txid)
        alive, why, abandoned = (False, "its lease is free: the owner is gone", True) if free else \
            (True, "its lease is held: the owner runs", False)
    elif owner is None:
        alive, why, abandoned = None, "no owner recorded", True
    else:
        lv = liveness(owner)
        alive, why = lv.alive, lv.why
        abandoned = is_abandoned(owner, wal.parse_time(tx.begun_at), now, older_than, live=lv)
    return TxInfo(tx.txid, tx.strategy, tx.run_id, tx.state,
                  owner_record(owner) if owner else None, abandoned, alive, why, tx.begun_at)


# ---------------------------------------------------------------- group commit

def hint_pid(name: str) -> int | None:
    """The pid in a hint's name ``<txid>.<pid>``, or None."""
    pid = name.rpartition(".")[2]
    return int(pid) if pid.isdigit() else None


def announce(ws: Workspace, txid: str) -> Path | None:
    """Say that a commit is on its way to a decision, so a writer may wait for its row."""
    try:
        if not ws.pending_dir.is_dir():
            fsops.mkdir(ws.pending_dir, exist_ok=True)
        path = ws.pending_dir / f"{txid}.{os.getpid()}"
        fsops.write_hint(path)
        return path
    except OSError:
        return None                                # a missing hint costs only a second rewrite


def gather(ws: Workspace, sleep: Callable[[float], None]) -> None:
    """Wait briefly while other commits are between their start and their decision.

    Group commit: their rows then go into this rewrite instead of the next
    one.  A hint whose process is gone is ignored (and removed by recovery).
    """
    deadline = time.monotonic() + GATHER_SECONDS
    while time.monotonic() < deadline:
        try:
            hints = os.listdir(ws.pending_dir)
        except OSError:
            return
        pids = [hint_pid(n) for n in hints]
        if not any(p is not None and pid_running(p) for p in pids):
            return
        sleep(0.02)


@dataclass
class FlushResult:
    states: dict[str, wal.TxState]
    committed: list[str]
    locked_by: str | None
    blocked: dict[str, str] = field(default_factory=dict)   # txid -> why its row cannot be stored now
    stale: str = ""         # why every waiting row was held back: the sheet on disk lacks the rows sop wrote last


STALE_FIRST_WAIT = 0.25     # the first pause before reading a stale-looking sheet again; doubled each time


def stale_wait(ws: Workspace) -> float:
    """How long a sheet writer reads a sheet that lacks sop's last rows again before it gives up.

    ``[lock].timeout_seconds`` (30 by default): a network file system's client cache (sshfs,
    GlusterFS) was seen serving an older copy for up to ~20 s after another host replaced it.
    """
    return max(0.0, ws.config.lock_timeout)


def stale_copy(ws: Workspace, j: wal.Loaded, view: sheet.SheetView, fp: str) -> LostReport | None:
    """Whether the sheet read is older than the one sop wrote last; None when it may be written.

    Only when the file's fingerprint is not the one journaled by sop's last write (``fp`` vs
    :attr:`journal.wal.Loaded.sheet_fp`; nothing on record, as in a journal from before
    fingerprints: no check) is the view compared with the ledger: the file was replaced since (a
    save by Excel, or a stale copy served by a network cache).  It is a stale copy when rows sop
    wrote are missing and they are the newest ones (:func:`journal.ledger.find_lost`'s stale-save
    classification).  A save that kept sop's rows, or lost only older ones (a row deleted by
    hand), may be written as before.
    """
    if not j.sheet_fp or fp == j.sheet_fp:
        return None
    lost, _rows = lost_rows(ws, j, view)
    if not lost.rows or not lost.stale_save:
        return None
    return lost_report(ws, lost)


def stale_message(ws: Workspace, report: LostReport, waited: float) -> str:
    """Why the decided rows wait: the cause, what sop did about it, and the way back."""
    return (f"the Master Sheet on disk lacks the rows sop wrote last (a stale save, or a stale network cache "
            f"serving an older copy): it is not the file sop wrote last, and it still lacked them after "
            f"{waited:.0f} s of reading it again; the decided rows wait, nothing was written over it. "
            f"{report.message} If another host wrote the sheet a moment ago, wait and run 'sop-recover'; "
            f"after 'sop-restore' (or 'sop-sweep --fix --accept-sheet') 'sop-recover' writes the waiting rows.")


def flush(session: Session, *, want: str | None = None, now: datetime | None = None,
          sleep: Callable[[float], None] = time.sleep, tries: int | None = None) -> FlushResult:
    """Write every decided row that is waiting, in one rewrite of the sheet (group commit).

    Tries ``[lock].retries`` times while a person holds the sheet open, with
    doubling backoff.  Returns with ``locked_by`` set when it stayed locked.

    Before it writes, holding the sheet writer's lock, it compares the file's
    fingerprint with the one journaled by sop's last write of the sheet
    (:func:`stale_copy`).  A file that lacks the rows sop wrote last is read
    again, after 0.25 s, then twice as long each time, pausing
    :func:`stale_wait` seconds in all (a network cache expires; the workspace
    lock is let go meanwhile); if the rows never show, nothing is written: every
    waiting row is in ``blocked`` and ``stale`` says why.  Each ``committed``
    record of a write carries the new file's fingerprint (``sheet_fp``).
    """
    ws = session.ws
    now = clock(now)
    committed: list[str] = []
    locked_by: str | None = None
    states: dict[str, wal.TxState] = {}
    for _ in attempts(ws, sleep, tries):
        with session.sheet_writer():
            gather(ws, sleep)
            pause = waited = 0.0
            while True:
                if pause:
                    sleep(pause)
                with session.locked() as w:
                    mine = w.states.get(want) if want is not None else None
                    if mine is not None and mine.state == "committed":
                        return FlushResult(w.states, committed, None)
                    waiting = [t for t in w.j.open_transactions() if t.state in DECIDED_STATES]
                    if not waiting:
                        return FlushResult(w.states, committed, None)
                    fp = sheet.fingerprint(ws.sheet) if w.j.sheet_fp else ""
                    view = sheet.read(ws)
                    stale = stale_copy(ws, w.j, view, fp)
                    if stale is not None:
                        bound = stale_wait(ws)
                        if waited < bound:              # a cache expires: read it again, letting others in
                            pause = min(bound - waited, pause * 2 if pause else STALE_FIRST_WAIT)
                            waited += pause
                            continue
                        why = stale_message(ws, stale, waited)
                        return FlushResult(w.states, committed, None, {t.txid: why for t in waiting}, why)
                    todo: list[wal.TxState] = []
                    blocked: dict[str, str] = {}
                    for t in waiting:
                        present = view.run_rows(t.run_id)
                        if present and names.key(present[0].strategy) == names.key(t.strategy):
                            w.append(t.txid, "committed", {"row_number": present[0].number}, now=now)
                            committed.append(t.txid)        # redo: the row is already there
                            continue
                        taken = present or view.strategy_rows(t.strategy)
                        if taken:                           # a person's row is in the way: never a second row
                            r = taken[0]
                            blocked[t.txid] = (f"row {r.number} holds strategy '{r.strategy}', run {r.run_id} "
                                               f"(typed or restored since {t.txid} was decided); remove that row "
                                               f"(or 'sop-release {r.strategy}') and run 'sop-recover', or "
                                               f"'sop-abort {t.txid}'")
                            continue
                        try:                                # a column added since its gate may not take a value:
                            sheet.check_row(view, t.row or {})   # that row waits; it never blocks the others
                        except Refused as e:
                            blocked[t.txid] = e.message
                            continue
                        todo.append(t)
                    states = w.states
                    if not todo:
                        return FlushResult(states, committed, None, blocked)
                    locked_by = sheet_locked_by(ws)
                    if locked_by is None:
                        for t in todo:
                            w.append(t.txid, "append", {"row": t.row, "sheet": ws.rel(ws.sheet)}, now=now)
                        w.anchor()
                break
            if locked_by is not None:
                continue
            try:
                out = sheet.append(ws, [t.row or {} for t in todo], view)
            except PermissionError as e:
                locked_by = f"another program ({e.strerror})"
                continue
            except SheetDamaged as e:                   # the writer refuses this sheet: each row waits for a person
                why = f"{e.message} {e.detail or ''}".strip()
                return FlushResult(states, committed, None, {**blocked, **{t.txid: why for t in todo}})
            with session.locked() as w:
                for t, n in zip(todo, out.numbers, strict=True):
                    w.append(t.txid, "committed", {"row_number": n, **({"sheet_fp": out.fp} if out.fp else {})},
                             now=now)
                    committed.append(t.txid)
                states = w.states
            return FlushResult(states, committed, None, blocked)
    return FlushResult(states, committed, locked_by)


# ---------------------------------------------------------------- rollback

@dataclass
class AbortResult:
    txid: str
    strategy: str
    run_id: str
    state: str
    moved: dict[str, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    already: bool = False


def quarantine_name(path: Path, now: datetime) -> Path:
    """``NAME_FAILED_<ts>`` beside ``path``; a name already taken gets ``-2``, ``-3``, … (SPEC §4).

    A name too long for the file system with the suffix (begun before sop
    checked names in bytes) is shortened, so that a rollback can always finish.
    """
    suffix = f"_FAILED_{names.stamp(now)}"
    stem, room = path.name, names.name_max(path.parent) - names.SUFFIX_BYTES + len(suffix)
    while len((stem + suffix).encode("utf-8", "surrogateescape")) > room and len(stem) > 1:
        stem = stem[:-1]
    base = stem + suffix
    cand = path.with_name(base)
    n = 2
    while os.path.lexists(cand):
        cand = path.with_name(f"{base}-{n}")
        n += 1
    return cand


def check_tops(ws: Workspace) -> None:
    """Refuse (exit 1) to create or move folders when ``backtests/`` or ``runs/`` is a link or a file.

    Through a link sop would create, rename or delete folders outside the
    workspace; the sweep does not enter such a folder either.
    """
    for top in (ws.backtests, ws.runs):
        if os.path.islink(top) or (os.path.lexists(top) and not top.is_dir()):
            what = "a symbolic link" if os.path.islink(top) else "not a folder"
            raise Refused(f"{ws.rel(top)}/ is {what}: sop never creates, moves or deletes folders through it.",
                          detail=f"Action: make {ws.rel(top)}/ a real folder inside the workspace (move the "
                                 "folders it points to into it), then try again.")


def rollback(session: Session, txid: str, *, reason: str, delete: bool,
             now: datetime | None = None) -> AbortResult:
    """Record the rollback decision, then quarantine (or delete) the run's folders; idempotent."""
    ws = session.ws
    now = clock(now)
    check_tops(ws)
    with session.locked() as w:
        decided = session.get(w, txid).state in DECIDED_STATES
    # A decided row may already be on the sheet (a writer crashed before recording it, or
    # another process is writing it now): look, holding the sheet writer's lock, before deciding.
    sheet_lock = session.sheet_writer() if decided else contextlib.nullcontext()
    with sheet_lock, session.locked() as w:
        tx = session.get(w, txid)
        if tx.state == "aborted":
            return AbortResult(txid, tx.strategy, tx.run_id, "aborted", already=True)
        if tx.state in DECIDED_STATES:
            if not decided:
                raise WrongState(f"transaction {txid} was decided meanwhile; try again")
            present = sheet.read(ws).run_rows(tx.run_id)
            if present:
                w.append(txid, "committed", {"row_number": present[0].number}, now=now)
                tx = w.states[txid]
        if tx.state == "committed":
            raise WrongState(f"transaction {txid} is committed (row {tx.row_number or '?'} of the Master Sheet); "
                             "it cannot be rolled back",
                             detail="Action: remove its row from the Master Sheet and run 'sop-sweep --fix'.")
        if tx.state != "aborting":
            w.append(txid, "rollback", {"reason": reason, "delete": delete}, now=now)
            tx = w.states[txid]
        return finish_rollback(w, tx, now)


def abandon_plan(session: Session, txid: str, *, reason: str, now: datetime | None = None) -> AbortResult | None:
    """Give up a plan (a sweep, a release, a restore) that cannot go on: what is done stays done, nothing more.

    None when ``txid`` is not such a plan (the caller then treats it as a run).
    """
    with session.locked() as w:
        tx = wal.find_transaction(session.ws, txid, w.j)
        if tx is None or tx.kind != "sweep":
            return None
        if tx.state == "aborted":
            return AbortResult(txid, "", "", "aborted", already=True)
        if tx.state != "planned":
            raise WrongState(f"{txid} is a {tx.plan_kind or 'sweep'} that is {tx.state}; only a planned one can be "
                             "abandoned")
        w.states[txid] = tx
        when = clock(now)
        done = {d.get("step") for d in tx.restored}
        for i, step in enumerate(tx.plan):          # a restore's folders moved back without their row: quarantine
            if step.get("op") == "restore_row" and i not in done:
                _requarantine(w, txid, step, when)
        w.append(txid, "abandon", {"reason": reason, "steps": len(tx.plan)}, now=when)
        return AbortResult(txid, "", "", "aborted")             # what it did stays done


def finish_rollback(w: wal.Writer, tx: wal.TxState, now: datetime) -> AbortResult:
    """Move or delete what is still there; each step announced first, each looked at before acting.

    The caller holds the workspace lock (``w``) and the rollback decision is on record.
    """
    ws = w.ws
    res = AbortResult(tx.txid, tx.strategy, tx.run_id, "aborted")
    for d in (ws.strategy_dir(tx.strategy), ws.run_dir(tx.run_id)):
        src = ws.rel(d)
        if not os.path.lexists(d):
            if src in tx.renames:
                res.moved[src] = tx.renames[src]
            continue
        if d.is_symlink() or not d.is_dir() or os.path.islink(d.parent):
            continue                                       # never follow or remove what is not our folder
        if tx.delete:
            w.append(tx.txid, "delete", {"path": src, "files": fsops.file_list(d)}, now=now)
            fsops.rmtree(d)
            res.deleted.append(src)
        else:
            announced = tx.renames.get(src)
            dst = ws.root / announced if announced and not os.path.lexists(ws.root / announced) \
                else quarantine_name(d, now)
            w.append(tx.txid, "rename", {"src": src, "dst": ws.rel(dst)}, now=now)
            fsops.rename(d, dst)
            res.moved[src] = ws.rel(dst)
    w.append(tx.txid, "aborted", {}, now=now)
    return res


# ---------------------------------------------------------------- a sweep's plan

ZOMBIE_KINDS = ("zombie_folder", "zombie_run")


def safe_target(ws: Workspace, rel: str) -> Path | None:
    """``backtests/NAME`` or ``runs/NAME`` as a path, or None for anything else (a tampered plan)."""
    top, _, name = rel.rpartition("/")
    if top not in (ws.rel(ws.backtests), ws.rel(ws.runs)) or name in ("", ".", "..") or "\\" in name:
        return None
    parent = ws.root / top
    if os.path.islink(parent):
        return None
    return parent / name


def present_keys(view: sheet.SheetView) -> tuple[set[str], set[str]]:
    """The name keys of the strategies and run ids on the sheet."""
    skeys, rkeys = view.keylists()
    return set(skeys) - {""}, set(rkeys) - {""}


def match_row(view: sheet.SheetView, step: dict[str, Any]) -> sheet.SheetRow | None:
    """The row a remove_row step means: same strategy and run id; the recorded number wins a tie."""
    cands = [r for r in view.strategy_rows(step["strategy"]) if names.key(r.run_id) == names.key(step["run_id"])]
    for r in cands:
        if r.number == step.get("row_number"):
            return r
    return cands[0] if cands else None


def row_values(view: sheet.SheetView, r: sheet.SheetRow) -> dict[str, Any]:
    """A row's values by header (a column without one by its letters), as a remove_row record keeps them."""
    from .xlsx import col_letters
    return {view.headers.get(c) or col_letters(c): v for c, v in sorted(r.values.items())}


FOLDER_OPS = ("delete", "rename")


def folder_id(path: Path) -> list[int] | None:
    """A folder's identity (device, inode), as a plan step records it; None when it is not there."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def plan_names(tx: wal.TxState) -> tuple[set[str], set[str]]:
    """The strategy and run id keys an unfinished plan (a sweep, a release, a restore) will still touch."""
    return wal.named("plan", {"steps": tx.plan})


def unfinished_plan(w: wal.Writer, strategy: str, run_id: str | None, *, besides: str = "") -> wal.TxState | None:
    """An unfinished plan that names the strategy or the run id: it would act on them when it is finished."""
    skey, rkey = names.key(strategy), names.key(run_id) if run_id else None
    for tx in w.j.open_transactions():
        if tx.kind == "sweep" and tx.txid != besides:
            p_s, p_r = plan_names(tx)
            if skey in p_s or (rkey is not None and rkey in p_r):
                return tx
    return None


def execute_plan(w: wal.Writer, txid: str, now: datetime, progress: Progress | None = None) -> dict[int, str]:
    """Do what a plan (a sweep, a release, a restore) still needs, each step announced first.

    Returns ``{step: why skipped}``.  The caller holds the sheet-writer lock
    and the workspace lock, and has checked that no person holds the sheet
    when rows are to go or come back.  The phases, in order: folders coming
    back from quarantine (a restore), rows removed (one rewrite), rows put
    back (one rewrite), folders deleted or quarantined, then the records that
    change the ledger of committed rows (``lost_accepted``, ``released``).
    Every step looks before it acts, so a redo after a crash is safe.
    """
    ws = w.ws
    tick = progress or (lambda phase, done, total: None)
    tx = w.states[txid]
    steps = list(tx.plan)
    skipped: dict[int, str] = {}
    announced_ren = dict(tx.renames)          # a redo renames to the destination already on record, if free
    done_before = set(tx.deleted) | set(announced_ren)
    held: set[tuple[str, str]] = set()
    for t in w.j.open_transactions():
        if t.kind == "run":
            held |= {(ws.rel(ws.backtests), names.key(t.strategy)), (ws.rel(ws.runs), names.key(t.run_id))}
    back = [(i, s) for i, s in enumerate(steps) if s.get("op") == "rename" and s.get("finding") == "restore"]
    for i, s in back:
        _folder_step(w, txid, i, s, announced_ren, done_before, None, set(), skipped, now)
    present: tuple[set[str], set[str]] | None = None
    fp = ""                                   # the sheet's fingerprint after this plan rewrote it, for ``done``
    row_steps = [(i, s) for i, s in enumerate(steps) if s.get("op") == "remove_row"]
    if row_steps:
        full = sheet.read(ws, all_columns=True)
        ledger_rows = wal.committed_rows(ws, w.j)
        numbers: list[int] = []
        for i, s in row_steps:
            r = match_row(full, s)
            if r is None:
                skipped[i] = "the row is no longer on the sheet"
                continue
            owner = ledger_rows.get(names.key(r.run_id))         # the committed run whose row goes, if sop wrote it
            w.append(txid, "remove_row", {"step": i, "row_number": r.number, "strategy": r.strategy,
                                          "run_id": r.run_id, "values": row_values(full, r),
                                          "finding": s.get("finding", ""),
                                          "txid": owner.txid if owner and names.key(owner.strategy) ==
                                          names.key(r.strategy) else ""}, now=now)
            numbers.append(r.number)
        if numbers:
            tick("removing rows", 0, len(numbers))
            w.anchor()
            try:
                fp = sheet.remove(ws, sorted(set(numbers)))
            except PermissionError as e:
                raise SheetLocked(f"the Master Sheet could not be written ({e.strerror}); {txid} is unfinished",
                                  detail=f"Close the sheet, then run 'sop-recover' to finish {txid}.") from None
            gone = set(numbers)
            present = present_keys(sheet.SheetView(full.path, full.worksheet, full.header_row, full.headers,
                                                   full.columns, [r for r in full.rows if r.number not in gone]))
        else:
            present = present_keys(full)
    restore = [(i, s) for i, s in enumerate(steps) if s.get("op") == "restore_row"]
    if restore:
        present, fp = _restore_rows(w, txid, restore, skipped, now, fp)
        for i, s in restore:
            if i in skipped:                     # the row could not come back: its folders go back to quarantine
                _requarantine(w, txid, s, now)
    folder_steps = [(i, s) for i, s in enumerate(steps) if s.get("op") in FOLDER_OPS and (i, s) not in back]
    if folder_steps and present is None:
        present = present_keys(sheet.read(ws))
    for n, (i, s) in enumerate(folder_steps):
        if not n % 256:
            tick("cleaning folders", n, len(folder_steps))
        _folder_step(w, txid, i, s, announced_ren, done_before, present, held, skipped, now)
    for i, s in enumerate(steps):
        if s.get("op") in ("accept_lost", "release"):
            moved = {k: v for k, v in w.states[txid].renames.items()
                     if k in (s.get("strategy_dir"), s.get("run_dir"))}
            deleted = [p for p in w.states[txid].deleted if p in (s.get("strategy_dir"), s.get("run_dir"))]
            kind = "lost_accepted" if s["op"] == "accept_lost" else "released"
            w.append(txid, kind, {"step": i, "txid": s.get("txid", ""), "strategy": s.get("strategy", ""),
                                  "run_id": s.get("run_id", ""), "moved": moved, "deleted": deleted}, now=now)
    w.append(txid, "done", {"steps": len(steps), "skipped": {str(k): v for k, v in skipped.items()},
                            **({"sheet_fp": fp} if fp else {})}, now=now)
    return skipped


def _folder_step(w: wal.Writer, txid: str, i: int, s: dict[str, Any], announced_ren: dict[str, str],
                 done_before: set[str], present: tuple[set[str], set[str]] | None, held: set[tuple[str, str]],
                 skipped: dict[int, str], now: datetime) -> None:
    """Delete or rename one folder of a plan, looking first (see :func:`execute_plan`)."""
    ws = w.ws
    rel = s["path"] if s["op"] == "delete" else s["src"]
    target = safe_target(ws, rel)
    if target is None:
        skipped[i] = f"{rel} is not a folder directly under backtests/ or runs/"
        return
    if not os.path.lexists(target):
        skipped[i] = "already gone" if rel in done_before else "not there"
        return
    if target.is_symlink() or not target.is_dir():
        skipped[i] = "no longer a real folder"
        return
    top, _, name = rel.rpartition("/")
    if s.get("id") and folder_id(target) != s["id"]:
        skipped[i] = "another folder has its name now"        # e.g. a new run's, begun after a crash
        return
    if s.get("finding") != "restore" and (top, names.key(name)) in held:
        skipped[i] = "an open transaction holds it now"
        return
    if s.get("finding") in ZOMBIE_KINDS:
        assert present is not None
        keys = present[0] if top == ws.rel(ws.backtests) else present[1]
        if names.key(name) in keys:
            skipped[i] = "a row indexes it now"
            return
    extra: dict[str, Any] = {k: s[k] for k in ("txid", "strategy", "run_id") if k in s}
    # Announced every time it is about to happen: after a crash the folder may not be the one announced.
    if s["op"] == "delete":
        w.append(txid, "delete", {"step": i, "path": rel, "files": fsops.file_list(target),
                                  "finding": s.get("finding", ""), **extra}, now=now)
        fsops.rmtree(target)
        return
    dst_rel = announced_ren.get(rel) or s["dst"]
    dst = safe_target(ws, dst_rel)
    if dst is None or os.path.lexists(dst):
        if s.get("finding") == "restore":
            skipped[i] = f"{s['dst']} is taken"
            return
        dst = quarantine_name(target, now)
        dst_rel = ws.rel(dst)
    w.append(txid, "rename", {"step": i, "src": rel, "dst": dst_rel, "finding": s.get("finding", ""), **extra},
             now=now)
    fsops.rename(target, dst)


def _requarantine(w: wal.Writer, txid: str, s: dict[str, Any], now: datetime) -> None:
    """A restore whose row could not come back puts the folders it moved back into quarantine, journaled,
    so they are never taken for zombies; the loss stays accepted, with where they are now."""
    ws = w.ws
    back = {dst: src for src, dst in w.states[txid].renames.items()}     # original path -> where it came from
    moved: dict[str, str] = {}
    for orig in (ws.rel(ws.strategy_dir(s["strategy"])), ws.rel(ws.run_dir(s["run_id"]))):
        if orig not in back or not os.path.isdir(ws.root / orig) or os.path.islink(ws.root / orig):
            continue
        dst = quarantine_name(ws.root / orig, now)
        w.append(txid, "rename", {"src": orig, "dst": ws.rel(dst), "finding": "lost_row", "txid": s.get("txid", ""),
                                  "strategy": s["strategy"], "run_id": s["run_id"]}, now=now)
        fsops.rename(ws.root / orig, dst)
        moved[orig] = ws.rel(dst)
    if moved and s.get("txid"):
        w.append(txid, "lost_accepted", {"txid": s["txid"], "strategy": s["strategy"], "run_id": s["run_id"],
                                         "moved": moved, "deleted": []}, now=now)


def _restore_rows(w: wal.Writer, txid: str, restore: list[tuple[int, dict[str, Any]]], skipped: dict[int, str],
                  now: datetime, fp: str = "") -> tuple[tuple[set[str], set[str]], str]:
    """Put rows back from the journal (``sop-restore``) in one rewrite; a row already there is only recorded.

    Returns the keys on the sheet after it, and the sheet's fingerprint when it rewrote it (else ``fp``).
    """
    ws = w.ws
    view = sheet.read(ws)
    todo: list[tuple[int, dict[str, Any]]] = []
    for i, s in restore:
        here = view.run_rows(s["run_id"])
        if here and names.key(here[0].strategy) == names.key(s["strategy"]):
            if not any(d.get("step") == i for d in w.states[txid].restored):
                w.append(txid, "restored", {"step": i, "txid": s.get("txid", ""), "strategy": s["strategy"],
                                            "run_id": s["run_id"], "row_number": here[0].number}, now=now)
            continue                                     # redo: the row is there already
        if here or view.strategy_rows(s["strategy"]):
            taken = (here or view.strategy_rows(s["strategy"]))[0]
            skipped[i] = f"row {taken.number} holds '{taken.strategy}' (run {taken.run_id}) now"
            continue
        try:
            sheet.check_row(view, s["row"])
        except Refused as e:
            skipped[i] = e.message
            continue
        todo.append((i, s))
    if todo:
        for i, s in todo:
            w.append(txid, "append", {"step": i, "row": s["row"], "sheet": ws.rel(ws.sheet)}, now=now)
        w.anchor()
        try:
            out = sheet.append(ws, [s["row"] for _, s in todo], view)
        except PermissionError as e:
            raise SheetLocked(f"the Master Sheet could not be written ({e.strerror}); {txid} is unfinished",
                              detail=f"Close the sheet, then run 'sop-recover' to finish {txid}.") from None
        fp = out.fp
        for (i, s), n in zip(todo, out.numbers, strict=True):
            w.append(txid, "restored", {"step": i, "txid": s.get("txid", ""), "strategy": s["strategy"],
                                        "run_id": s["run_id"], "row_number": n, **({"sheet_fp": fp} if fp else {})},
                     now=now)
        view = sheet.read(ws)
    return present_keys(view), fp


def rows_pending(ws: Workspace, steps: Iterable[dict[str, Any]]) -> bool:
    """Whether a plan still has a row to remove or to put back (so it needs the sheet unlocked)."""
    steps = list(steps)
    rows = [s for s in steps if s.get("op") == "remove_row"]
    back = [s for s in steps if s.get("op") == "restore_row"]
    if not rows and not back:
        return False
    view = sheet.read(ws)
    return any(match_row(view, s) is not None for s in rows) or any(not view.run_rows(s["run_id"]) for s in back)


def finish_plan(session: Session, txid: str, *, now: datetime,
                sleep: Callable[[float], None] = time.sleep) -> None:
    """Finish a sweep left ``planned`` by a crash (called by ``sop-recover``); idempotent.

    Raises SheetLocked (exit 3) when rows are still to go and a person holds
    the sheet through every attempt; the sweep then stays planned.
    """
    ws = session.ws
    who: str | None = None
    for _ in attempts(ws, sleep):
        with session.sheet_writer(), session.locked() as w:
            tx = wal.find_transaction(ws, txid, w.j)
            if tx is None or tx.kind != "sweep" or tx.state != "planned":
                return
            w.states[txid] = tx
            who = sheet_locked_by(ws)
            if who is not None and rows_pending(ws, tx.plan):
                continue
            execute_plan(w, txid, now)
            return
    raise locked_out(ws, who or "unknown user", f"sweep {txid} still has rows to remove")


# ---------------------------------------------------------------- what the sheet should hold

@dataclass
class LostReport:
    """Committed rows missing from the sheet without a journaled removal (see :mod:`journal.ledger`)."""

    rows: list[dict[str, Any]] = field(default_factory=list)   # txid, strategy, run_id, row (where it was)
    stale_save: bool = False
    message: str = ""


def lost_rows(ws: Workspace, j: wal.Loaded, view: sheet.SheetView) -> tuple[ledger.Lost, dict[str, ledger.Entry]]:
    """What the ledger says the sheet should hold and does not, and the ledger itself."""
    rows = wal.committed_rows(ws, j)
    return ledger.find_lost(rows, view.present(1, rows)), rows


def lost_report(ws: Workspace, lost: ledger.Lost) -> LostReport:
    """A person's view of lost rows: which, the likely cause, and what to do."""
    if not lost.rows:
        return LostReport()
    try:
        saved = datetime.fromtimestamp(ws.sheet.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except OSError:
        saved = None
    what = ("'sop-restore' puts them back (their values are in the journal); "
            "'sop-sweep --fix --accept-sheet' accepts the sheet as it is (their folders are quarantined, "
            "still restorable)") if lost.stale_save else \
        ("'sop-restore' puts them back; 'sop-sweep --fix' quarantines their folders (restorable); "
         "'sop-release STRATEGY' frees a slot for good")
    return LostReport([{"txid": e.txid, "strategy": e.strategy, "run_id": e.run_id, "row": e.row} for e in lost.rows],
                      lost.stale_save, f"{lost.message(ws.rel(ws.sheet), saved)}. Action: {what}.")


# ---------------------------------------------------------------- running a plan

ROW_OPS = ("remove_row", "restore_row")


def run_plan(session: Session, make: Callable[[wal.Writer], list[dict[str, Any]]], *, kind: str,
             now: datetime, sleep: Callable[[float], None] = time.sleep, progress: Progress | None = None,
             what: Callable[[list[dict[str, Any]]], str] | None = None,
             extra: dict[str, Any] | None = None, write: bool = True) -> tuple[str | None, dict[int, str]]:
    """Plan under the locks, journal the plan, and carry it out: one transaction (a sweep, a release, a restore).

    ``make(w)`` looks at the workspace (the sheet writer's lock and the
    workspace lock held) and returns the steps; an empty plan journals
    nothing and returns no txid.  A plan with rows to change waits for a
    person to close the sheet, through ``[lock].retries`` attempts, then
    raises SheetLocked having changed nothing.  ``write=False``: ``make``
    returns no steps (a dry run), so the file store's check only warns.
    """
    ws = session.ws
    who: str | None = None
    steps: list[dict[str, Any]] = []
    for _ in attempts(ws, sleep):
        with session.sheet_writer(write=write), session.locked(write=write) as w:
            steps = make(w)
            if any(s["op"] in ROW_OPS for s in steps):
                who = sheet_locked_by(ws)
                if who is not None:
                    continue
            if not steps:
                return None, {}
            txid = new_txid(now)
            w.append(txid, "plan", {"steps": steps, "owner": owner_record(owner_of(os.getpid())), **(extra or {}),
                                    kind: 1}, now=now)
            return txid, execute_plan(w, txid, now, progress)
    raise locked_out(ws, who or "unknown user", what(steps) if what else "rows were to change, so nothing was done")
