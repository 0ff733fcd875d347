"""Task module: ``sop-recover`` — finish or roll back what crashed half-way.

Recovery looks before it acts, so running it twice, or after a crash inside
it, is safe:

* a torn journal tail is cut off (kept in ``.sop/lost+found/``);
* temporary files of interrupted writes are removed (under the lock that
  their writer would hold, so no live write loses its file);
* a transaction whose rollback decision is on record (``aborting``) has its
  rollback finished, whoever owns it;
* a transaction whose commit decision is on record (``committing``,
  ``deferred``) is rolled forward when the sheet is free: its row is
  appended unless a row with its run id is already there;
* a sweep whose plan is on record has its remaining steps finished;
* every other *abandoned* transaction is rolled back (quarantined); a live
  one is listed and left alone unless ``force``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from . import fsops, names, pgstore, sheet, txn, wal
from .errors import IOFailure, Refused, SheetDamaged, SheetLocked, SopError
from .owner import pid_running
from .render import NOT_JSON
from .states import DECIDED_STATES
from .txn import Session, TxInfo
from .when import parse_duration
from .workspace import RootArg, Workspace, open_workspace


@dataclass
class Action:
    action: str
    txid: str = ""
    strategy: str = ""
    run_id: str = ""
    done: bool = False
    detail: str = ""


@dataclass
class RecoverResult:
    dry_run: bool
    actions: list[Action] = field(default_factory=list)
    live: list[TxInfo] = field(default_factory=list)
    waiting_for_sheet: str | None = None
    failed: list[str] = field(default_factory=list)           # txids that need a person (see their actions)
    causes: list[SopError] = field(default_factory=list, metadata=NOT_JSON)   # why, each as its error class
    lost: txn.LostReport = field(default_factory=txn.LostReport)   # committed rows the sheet no longer holds

    @property
    def error(self) -> SopError | None:
        """Transactions that need a person (exit 1), or rows that still wait for a locked sheet (exit 3)."""
        if self.dry_run:
            return None
        if self.failed:
            message = f"{len(self.failed)} transaction(s) could not be finished: {', '.join(self.failed)}"
            detail = "Each is listed above with why and what to do; the others were recovered."
            worst = max(self.causes, key=lambda e: e.exit_code, default=None)
            if worst is not None and worst.exit_code == IOFailure.exit_code:     # the disk failed, not a decision
                return IOFailure(message, detail=detail + " Fix the cause, then run 'sop-recover' again.")
            return Refused(message, detail=detail)
        if self.waiting_for_sheet is not None:
            return SheetLocked(f"the Master Sheet is locked by {self.waiting_for_sheet}; decided rows still wait",
                               locked_by=self.waiting_for_sheet)
        return None


def _temp_files(folder: Path) -> list[Path]:
    try:
        return [folder / n for n in os.listdir(folder) if fsops.is_temp_name(n)]
    except OSError:
        return []


def _remove_temps(folder: Path, dry_run: bool, out: RecoverResult, rel: Callable[[Path], str]) -> None:
    for p in _temp_files(folder):
        if not dry_run:
            fsops.unlink(p)
        out.actions.append(Action("remove temporary file", done=not dry_run, detail=rel(p)))


def _remove_stale_hints(ws: Workspace, dry_run: bool, out: RecoverResult) -> None:
    """Remove the group-commit hints of commits whose process is gone."""
    try:
        hints = os.listdir(ws.pending_dir)
    except OSError:
        return
    for n in hints:
        pid = txn.hint_pid(n)
        if pid is not None and pid_running(pid):
            continue
        if not dry_run:
            fsops.remove_hint(ws.pending_dir / n)
        out.actions.append(Action("remove stale commit hint", done=not dry_run, detail=f".sop/pending/{n}"))


def plan(ws: Workspace, j: wal.Loaded, *, now: datetime, older_than: timedelta, force: bool,
         view: sheet.SheetView | None = None) -> tuple[list[Action], list[TxInfo]]:
    """What recovery would do, transaction by transaction (nothing changed).

    ``view`` is the sheet as read now: an abandoned ``begun`` run whose row is
    on it (its run id and strategy: a journal restored from an older backup,
    a writer that crashed after the fact) is adopted as committed, never
    rolled back.  Without a readable sheet such a run is left alone.
    """
    actions: list[Action] = []
    live: list[TxInfo] = []
    free: set[str] | None = None
    if wal.is_pg(ws):                # a lease must stay free through the grace: a cut session is retaken
        free = pgstore.leases_free(ws, [t.txid for t in j.open_transactions()
                                        if t.leased and t.state == "begun"])
    for tx in j.open_transactions():
        info = txn.info(ws, tx, now, older_than, free)
        if tx.state == "aborting":
            actions.append(Action("finish rollback", tx.txid, tx.strategy, tx.run_id))
        elif tx.state in DECIDED_STATES:
            actions.append(Action("roll forward", tx.txid, tx.strategy, tx.run_id,
                                  detail="append the row unless a row with its run id is there"))
        elif tx.state == "planned":
            actions.append(Action("finish sweep", tx.txid, detail=f"{len(tx.plan)} planned step(s)"))
        elif info.abandoned or force:
            why = info.liveness if info.abandoned else f"forced; {info.liveness}"
            row = _its_row(view, tx)
            if row is not None:
                actions.append(Action("adopt", tx.txid, tx.strategy, tx.run_id,
                                      detail=f"its row is on the sheet (row {row}): recorded committed; {why}"))
            elif view is None:
                actions.append(Action("leave alone", tx.txid, tx.strategy, tx.run_id,
                                      detail=f"{why}; but the sheet cannot be read, so its row may be there: "
                                             "fix the sheet and run 'sop-recover' again"))
            else:
                actions.append(Action("roll back", tx.txid, tx.strategy, tx.run_id, detail=why))
        else:
            live.append(info)
    return actions, live


def _its_row(view: sheet.SheetView | None, tx: wal.TxState) -> int | None:
    if view is None or tx.kind != "run":
        return None
    rows = [r for r in view.run_rows(tx.run_id) if names.key(r.strategy) == names.key(tx.strategy)]
    return rows[0].number if rows else None


def _sheet(ws: Workspace) -> sheet.SheetView | None:
    try:
        return sheet.read(ws)
    except SopError:
        return None


def recover(*, root: RootArg = None, dry_run: bool = False, older_than: str | timedelta = "24h",
            force: bool = False, now: datetime | None = None, env: dict[str, str] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> RecoverResult:
    """Finish or roll back abandoned transactions (SPEC §5 sop-recover).

    Each transaction recovers on its own: one that cannot be finished (its
    row refused by the sheet, a person's row in the way, an I/O error) is
    reported with what to do, and never stops the others.
    """
    now = txn.clock(now)
    ot = parse_duration(older_than)
    ws = open_workspace(root, env)
    session = Session(ws)
    out = RecoverResult(dry_run)
    rel = ws.rel
    with session.locked(write=not dry_run) as w:
        if w.j.torn is not None:
            t = w.j.torn
            out.actions.append(Action("cut torn journal tail", done=not dry_run,
                                      detail=f"{t.segment.name} at byte {t.offset} ({t.why}), "
                                             f"{len(t.data)} byte(s) kept in .sop/lost+found/"))
            if not dry_run:
                w.cut_torn(now=now)
        if wal.is_pg(ws) and not dry_run:
            for change in pgstore.sync_open(ws, w.j.states):
                out.actions.append(Action("rebuild sop_open", done=True, detail=change))
        for folder in (ws.sop_dir, ws.cache_dir, ws.cache_dir / "index"):
            _remove_temps(folder, dry_run, out, rel)
        _remove_stale_hints(ws, dry_run, out)
        _remove_temps(ws.lost_found, dry_run, out, rel)
        seen = _sheet(ws)                       # the sheet as read once, under the lock, for every decision below
        actions, out.live = plan(ws, w.j, now=now, older_than=ot, force=force, view=seen)
        if dry_run:
            out.actions.extend(actions)
            _remove_temps(ws.sheet.parent, True, out, rel)
            return out
        for a in actions:
            if a.action == "leave alone":
                out.failed.append(a.txid)
                out.causes.append(Refused(a.detail))
            elif a.action == "adopt":
                row = _its_row(seen, w.states[a.txid])
                if row is not None:
                    w.append(a.txid, "adopt", {"row_number": row, "reason": "its row is on the Master Sheet"},
                             now=now)
                    a.done = True
            elif a.action in ("finish rollback", "roll back"):
                try:
                    tx = w.states[a.txid]
                    if tx.state != "aborting":
                        w.append(a.txid, "rollback", {"reason": f"recovered: {a.detail}", "delete": False}, now=now)
                        tx = w.states[a.txid]
                    res = txn.finish_rollback(w, tx, now)
                except (SopError, OSError) as e:            # this one waits for a person; the others go on
                    _failed(out, a, e)
                    continue
                a.done = True
                moved = ", ".join(f"{k} -> {v}" for k, v in res.moved.items())
                a.detail = (a.detail + "; " if a.detail else "") + (f"quarantined {moved}" if moved else
                                                                     "nothing left to move")
        sweeps = [a for a in actions if a.action == "finish sweep"]
    for a in sweeps:
        try:
            txn.finish_plan(session, a.txid, now=now, sleep=sleep)
            a.done = True
        except SheetLocked as e:                   # its rows wait for the sheet; the rest still recovers
            a.detail = f"waiting: {e.message}"
            out.waiting_for_sheet = e.locked_by or "another user"
        except (SopError, OSError) as e:
            _failed(out, a, e, f"'sop-abort {a.txid}' gives the rest of it up (what is done stays done)")
    with session.sheet_writer():
        _remove_temps(ws.sheet.parent, False, out, rel)
    forward = [a for a in actions if a.action == "roll forward"]
    if forward:
        try:
            fr = txn.flush(session, now=now, sleep=sleep)
        except (SopError, OSError) as e:
            for a in forward:
                _failed(out, a, e)
        else:
            for a in forward:
                st = fr.states.get(a.txid)
                a.done = st is not None and st.state == "committed"
                if a.txid in fr.blocked:
                    a.detail = f"needs a person: {fr.blocked[a.txid]}"
                    out.failed.append(a.txid)
                    out.causes.append(SheetDamaged(fr.blocked[a.txid]) if fr.stale else Refused(fr.blocked[a.txid]))
                elif not a.done and fr.locked_by:
                    a.detail = f"waiting: the Master Sheet is locked by {fr.locked_by}"
            out.waiting_for_sheet = fr.locked_by or out.waiting_for_sheet
    out.actions.extend(actions)
    view = _sheet(ws)
    if view is not None:
        with session.locked() as w:
            out.lost = txn.lost_report(ws, txn.lost_rows(ws, w.j, view)[0])
    return out


def _failed(out: RecoverResult, a: Action, e: BaseException, action: str = "") -> None:
    err = e if isinstance(e, SopError) else IOFailure(f"I/O error: {e}")
    a.detail = (a.detail + "; " if a.detail else "") + f"not done: {err.message}" + (f"; {action}" if action else "")
    out.failed.append(a.txid)
    out.causes.append(err)


__all__ = ["recover", "plan", "RecoverResult", "Action"]
