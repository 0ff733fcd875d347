"""Task module: ``sop-restore`` and ``sop-release`` — the way back, and the journaled way out.

``restore`` puts back what the journal says the sheet should hold:

* committed rows the sheet lost (a stale save, a hand edit, a sheet
  replaced), with their values from the journal's ``decide`` record, and
  their folders from quarantine when a sweep moved them there;
* with ``sweep=TXID``, the rows that sweep removed (their values are in its
  ``remove_row`` records): the undo of an adopted sheet's first sweep, or of
  any regret.

A row whose strategy or run id is on the sheet again, or held by an open
transaction, or whose strategy has been committed again since, is refused
with the reason; a row whose folders are gone is refused too (it would be an
orphaned row).

``release`` frees a strategy's slot the journaled way, as the SOP's "remove
the row from the Master Sheet to proceed" means: the row is removed (its
values kept in the journal) and its folders quarantined (or deleted with
``delete``), in one transaction, refused while a transaction holds the
strategy.  A row removed this way is no loss; one removed by hand is a lost
row.

Both run as one journaled plan (:func:`journal.txn.run_plan`), so a crash
half-way is finished by ``sop-recover`` like a sweep.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import names, sheet, txn, wal
from .errors import NoSuchTransaction, Refused, SheetDamaged, UsageError
from .ledger import Entry
from .render import NOT_JSON
from .txn import Session
from .workspace import RootArg, Workspace, open_workspace


@dataclass
class RestoreItem:
    txid: str
    strategy: str
    run_id: str
    action: str                     # what restore does (or would do), or why it refuses
    refused: bool = False
    done: bool = False
    row: int | None = None          # where the row went
    folders: dict[str, str] = field(default_factory=dict)   # quarantined path -> original path
    step: int | None = field(default=None, metadata=NOT_JSON)   # its restore_row step in the plan


@dataclass
class RestoreResult:
    dry_run: bool
    items: list[RestoreItem]
    txid: str | None = None         # the restore's own transaction

    @property
    def error(self) -> Refused | None:
        """Rows that could not come back (exit 1 once the result is out); the others were restored."""
        bad = [i for i in self.items if i.refused or (not self.dry_run and not i.done)]
        if not bad:
            return None
        return Refused(f"{len(bad)} row(s) could not be restored: "
                       f"{', '.join(i.strategy for i in bad)}", detail="Each is listed with the reason.")


@dataclass
class ReleaseResult:
    strategy: str
    run_id: str
    txid: str | None
    row: int | None = None
    moved: dict[str, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- restore

def _holder(w: wal.Writer, strategy: str, run_id: str) -> wal.TxState | None:
    sk, rk = names.key(strategy), names.key(run_id)
    for t in w.j.open_transactions():
        if t.kind == "run" and (names.key(t.strategy) == sk or names.key(t.run_id) == rk):
            return t
    return None


NEWEST = 1 << 62       # a sweep's removed row: only the sheet and open transactions can stand in its way


def _why_not(w: wal.Writer, view: sheet.SheetView, rows: dict[str, Entry], strategy: str, run_id: str,
             seq: int) -> str | None:
    """Why a row cannot come back now, or None (``seq``: when it was committed; later commits win)."""
    here = view.strategy_rows(strategy)
    if here:
        return (f"strategy '{here[0].strategy}' is on row {here[0].number} now (run {here[0].run_id}); "
                f"'sop-release {here[0].strategy}' frees that slot first")
    if view.run_rows(run_id):
        return f"run id '{run_id}' is on row {view.run_rows(run_id)[0].number} now"
    holder = _holder(w, strategy, run_id)
    if holder is not None:
        return f"{txn.describe(holder)} holds its strategy or run id"
    plan = txn.unfinished_plan(w, strategy, run_id)
    if plan is not None:
        return f"the unfinished {plan.plan_kind} {plan.txid} names it ('sop-recover' finishes it)"
    sk = names.key(strategy)
    newer = [e for e in rows.values() if names.key(e.strategy) == sk and e.seq > seq and not e.accepted]
    if newer:
        return f"strategy '{strategy}' has been run again since ({newer[0].txid}, run {newer[0].run_id})"
    return None


def _cannot_store(ws: Workspace, view: sheet.SheetView, row: dict[str, Any]) -> str | None:
    """Why the sheet cannot take the row now (the writer's own checks), or None: asked before anything moves."""
    try:
        sheet.check_row(view, row)
        sheet.check_writable(ws, rows=[row], view=view)
    except (Refused, SheetDamaged) as e:
        return f"the Master Sheet cannot take it: {e.message}"
    except PermissionError:
        return None                     # held open for a moment: the plan waits for the sheet like any write
    return None


def _lost_steps(w: wal.Writer, ws: Workspace, view: sheet.SheetView, want: list[str] | None,
                items: list[RestoreItem]) -> list[dict[str, Any]]:
    """Plan the return of committed rows the sheet lost (all, or the txids in ``want``)."""
    rows = wal.committed_rows(ws, w.j)
    present = view.present(1, rows)
    missing = sorted((e for k, e in rows.items() if k not in present), key=lambda e: e.seq)
    by_txid = {e.txid: e for e in missing}
    if want is None:                    # every lost row; an accepted loss comes back only when named
        missing = [e for e in missing if not e.accepted]
    if want is not None:
        for t in dict.fromkeys(want):
            if t in by_txid:
                continue
            on = [e for e in rows.values() if e.txid == t and view.run_rows(e.run_id)]
            if on:                      # back already (a restore that recovery finished): nothing to do
                here = view.run_rows(on[0].run_id)[0].number
                items.append(RestoreItem(t, on[0].strategy, on[0].run_id, "already on the sheet", done=True,
                                         row=here))
                continue
            tx = wal.find_transaction(ws, t, w.j)
            if tx is None:
                raise NoSuchTransaction(f"no such transaction: {t}",
                                        detail="Action: 'sop-status' lists lost rows, 'sop-log' every transaction.")
            raise Refused(f"cannot restore {t}: it is {tx.state}, not a committed row the sheet lost")
        missing = [by_txid[t] for t in dict.fromkeys(want) if t in by_txid]
    steps: list[dict[str, Any]] = []
    for e in missing:
        item = RestoreItem(e.txid, e.strategy, e.run_id, "")
        items.append(item)
        why = _why_not(w, view, rows, e.strategy, e.run_id, e.seq)
        tx = wal.find_transaction(ws, e.txid, w.j)
        if why is None and (tx is None or not tx.row):
            why = "the journal holds no values for its row"
        if why is None and tx is not None and tx.row:
            why = _cannot_store(ws, view, tx.row)
        back: list[dict[str, Any]] = []
        if why is None:
            for orig in (ws.rel(ws.strategy_dir(e.strategy)), ws.rel(ws.run_dir(e.run_id))):
                moved = e.moved.get(orig)
                if os.path.lexists(ws.root / orig):
                    continue
                if moved and os.path.isdir(ws.root / moved) and not os.path.islink(ws.root / moved):
                    back.append({"op": "rename", "src": moved, "dst": orig, "finding": "restore", "txid": e.txid,
                                 "strategy": e.strategy, "run_id": e.run_id})
                    item.folders[moved] = orig
                else:
                    why = f"its folder {orig}/ is gone" + (f" (and {moved}/ too)" if moved else "")
                    break
        if why is not None:
            item.action, item.refused = f"refused: {why}", True
            continue
        assert tx is not None and tx.row is not None
        item.action = "put the row back" + (f", and {', '.join(f'{k} -> {v}' for k, v in item.folders.items())}"
                                            if item.folders else "")
        steps += back
        item.step = len(steps)
        steps.append({"op": "restore_row", "txid": e.txid, "strategy": e.strategy, "run_id": e.run_id,
                      "row": tx.row})
    if want is not None and any(i.refused for i in items):
        bad = next(i for i in items if i.refused)
        raise Refused(f"cannot restore {bad.txid} ({bad.strategy}): {bad.action.removeprefix('refused: ')}",
                      detail="Nothing was changed.")
    return steps


def _sweep_steps(w: wal.Writer, ws: Workspace, view: sheet.SheetView, sweep_txid: str,
                 items: list[RestoreItem]) -> list[dict[str, Any]]:
    """Plan the return of the rows one sweep removed."""
    tx = wal.find_transaction(ws, sweep_txid, w.j)
    if tx is None or tx.kind != "sweep":
        raise NoSuchTransaction(f"no such sweep: {sweep_txid}",
                                detail="Action: 'sop-log' lists sweeps (their first record is 'plan').")
    if tx.plan_kind != "sweep":
        raise Refused(f"{sweep_txid} is a {tx.plan_kind}, not a sweep",
                      detail="A released row comes back with its folders by hand only: move them back from "
                             "quarantine, then add the row; 'sop-log TXID' shows both.")
    rows = wal.committed_rows(ws, w.j)
    steps: list[dict[str, Any]] = []
    for d in tx.removed_rows:
        strategy, run_id = names.cell_text(d.get("strategy")), names.cell_text(d.get("run_id"))
        values = dict(d.get("values") or {})
        own = str(d.get("txid") or "") or names.cell_text(
            next((v for k, v in values.items() if names.header_key(k) == sheet.TXID), ""))
        item = RestoreItem(own, strategy, run_id, "")
        items.append(item)
        why = _why_not(w, view, rows, strategy, run_id, NEWEST) or _cannot_store(ws, view, values)
        if why is not None:
            item.action, item.refused = f"refused: {why}", True
            continue
        item.action = f"put back the row (it was row {d.get('row_number')})"
        item.step = len(steps)
        steps.append({"op": "restore_row", "txid": own, "strategy": strategy, "run_id": run_id, "row": values})
    return steps


def restore(txids: list[str] | None = None, *, sweep: str | None = None, dry_run: bool = False,
            root: RootArg = None, now: datetime | None = None, env: dict[str, str] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> RestoreResult:
    """Put back committed rows the sheet lost (all by default, or ``txids``), or the rows a sweep removed.

    Refuses (exit 1, nothing changed) a named transaction that cannot come
    back; without names, rows that cannot come back are listed with the
    reason and the others restored.  ``dry_run`` says what it would do.
    """
    if txids and sweep:
        raise UsageError("give transactions or --sweep TXID, not both")
    now = txn.clock(now)
    ws = open_workspace(root, env)
    session = Session(ws)
    items: list[RestoreItem] = []

    def make(w: wal.Writer) -> list[dict[str, Any]]:
        items.clear()
        view = sheet.read(ws)
        steps = _sweep_steps(w, ws, view, sweep, items) if sweep else _lost_steps(w, ws, view, txids or None, items)
        return [] if dry_run else steps

    txid, skipped = txn.run_plan(session, make, kind="restore", now=now, sleep=sleep, write=not dry_run,
                                 what=lambda steps: "rows were to be put back, so nothing was done")
    if txid is not None:
        with session.locked() as w:
            done = {(names.key(d["strategy"]), names.key(d["run_id"])): d for d in w.states[txid].restored}
        for it in items:
            d = done.get((names.key(it.strategy), names.key(it.run_id)))
            if d is not None:
                it.done, it.row = True, d.get("row_number")
            elif not it.refused:
                it.action += f" — not done: {skipped.get(it.step or -1, 'skipped')}"
    return RestoreResult(dry_run, items, txid)


# ---------------------------------------------------------------- release

def release(strategy: str, *, delete: bool = False, root: RootArg = None, now: datetime | None = None,
            env: dict[str, str] | None = None, sleep: Callable[[float], None] = time.sleep) -> ReleaseResult:
    """Free a strategy's slot: remove its row and quarantine (or delete) its folders, journaled as one act."""
    names.check_safe(strategy, "strategy name")
    now = txn.clock(now)
    ws = open_workspace(root, env)
    session = Session(ws)
    out = ReleaseResult(strategy, "", None)

    def make(w: wal.Writer) -> list[dict[str, Any]]:
        view = sheet.read(ws)
        holder = _holder(w, strategy, "\0")
        if holder is not None:
            raise Refused(f"Strategy '{strategy}' is held by {txn.describe(holder)}; it cannot be released now.",
                          detail="Action: let it commit or 'sop-abort TXID' it first.")
        rows = view.strategy_rows(strategy)
        if len(rows) > 1:
            raise Refused(f"Strategy '{strategy}' is on rows {', '.join(str(r.number) for r in rows)}: a person "
                          "decides which one stays.", detail="Action: remove the wrong row by hand, then release.")
        plan = txn.unfinished_plan(w, strategy, None)
        if plan is not None:
            raise Refused(f"Strategy '{strategy}' is named by the unfinished {plan.plan_kind} {plan.txid}.",
                          detail="Action: 'sop-recover' finishes it first.")
        sk = names.key(strategy)
        mine = [e for e in wal.committed_rows(ws, w.j).values() if names.key(e.strategy) == sk]
        # the run the slot holds: the one on the row, else the newest whose loss is not accepted, else the newest
        on_row = [e for e in mine if rows and names.key(e.run_id) == names.key(rows[0].run_id)]
        ranked = on_row or sorted((e for e in mine if not e.accepted), key=lambda e: e.seq)[-1:] \
            or sorted(mine, key=lambda e: e.seq)[-1:]
        entry = ranked[0] if ranked else None
        name = rows[0].strategy if rows else (entry.strategy if entry else strategy)
        run_id = rows[0].run_id if rows else (entry.run_id if entry else "")
        out.strategy, out.run_id = name, run_id
        steps: list[dict[str, Any]] = []
        if rows:
            out.row = rows[0].number
            steps.append({"op": "remove_row", "row_number": rows[0].number, "strategy": rows[0].strategy,
                          "run_id": rows[0].run_id, "finding": "release"})
        found = ((ws.backtests, txn.entries_by_key(ws.backtests).get(sk)),
                 (ws.runs, txn.entries_by_key(ws.runs).get(names.key(run_id)) if run_id else None))
        folders = [(top, real) for top, real in found if real is not None]
        for top, real in folders:
            rel = ws.rel(top / real)
            ident = txn.folder_id(top / real)
            if delete:
                steps.append({"op": "delete", "path": rel, "finding": "release", "id": ident})
            else:
                steps.append({"op": "rename", "src": rel, "dst": ws.rel(txn.quarantine_name(top / real, now)),
                              "finding": "release", "id": ident})
        if not steps and entry is None:
            raise Refused(f"nothing to release: strategy '{strategy}' has no row, no folder and no committed run",
                          detail="Its slot is free: 'sop-begin' can run it.")
        steps.append({"op": "release", "txid": entry.txid if entry else "", "strategy": name, "run_id": run_id,
                      "strategy_dir": next((ws.rel(t / r) for t, r in folders if t == ws.backtests), ""),
                      "run_dir": next((ws.rel(t / r) for t, r in folders if t == ws.runs), "")})
        return steps

    out.txid, skipped = txn.run_plan(session, make, kind="release", now=now, sleep=sleep,
                                     what=lambda steps: f"releasing '{strategy}' removes its row, so nothing was done")
    if out.txid is not None:
        with session.locked() as w:
            t = w.states[out.txid]
            out.moved, out.deleted = dict(t.renames), list(t.deleted)
    return out
