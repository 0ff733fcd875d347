"""Porcelain: sop's operations as Python functions (the documented API).

Each function behaves like the command of the same name (SPEC §5) but
returns a value and never prints or exits; errors are :class:`SopError`
subclasses whose ``exit_code`` is the command's exit status.  A pipeline's
``tools/run_stage1.py`` calls these (or :func:`transaction`) instead of
shelling out::

    import journal

    with journal.transaction("MA_Cross_10_50") as tx:
        run_backtest(tx.strategy_dir, tx.run_dir, tx.run_id)
    # committed on success; rolled back (quarantined) if the block raised

Side effects come in through parameters: ``root`` (else ``$SOP_ROOT`` or the
working directory), ``now`` (a UTC datetime, for tests) and ``env``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from . import fsops, locks, names, sheet, wal
from .errors import (
    NoSuchTransaction,
    Refused,
    SheetLocked,
    SopError,
    UsageError,
    WrongState,
)
from .owner import Owner, is_abandoned, liveness, owner_of
from .workspace import CONFIG_TEMPLATE, Workspace, find_root, load_config, open_workspace

PathArg = str | os.PathLike[str] | None

SCRUBBED = "Run passed but Indexing failed. Artifacts scrubbed to maintain consistency."


# ---------------------------------------------------------------- results

@dataclass
class InitResult:
    root: str
    created: list[str]


@dataclass
class BeginResult:
    txid: str
    strategy: str
    run_id: str
    strategy_dir: str
    run_dir: str


@dataclass
class CommitResult:
    txid: str
    strategy: str
    run_id: str
    state: str
    row: int | None = None
    already: bool = False
    also_committed: list[str] = field(default_factory=list)


@dataclass
class AbortResult:
    txid: str
    strategy: str
    run_id: str
    state: str
    moved: dict[str, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    already: bool = False


# ---------------------------------------------------------------- helpers

def _now(now: datetime | None) -> datetime:
    return now if now is not None else wal.utcnow()


@contextlib.contextmanager
def _locked(ws: Workspace) -> Iterator[wal.Writer]:
    """Hold the workspace lock and give a journal writer over its current tail."""
    with locks.hold(ws.lock_path, ws.config.lock_timeout):
        yield wal.Writer(ws)


def _rel(ws: Workspace, p: Path) -> str:
    return ws.rel(p)


def _entries_by_key(folder: Path) -> dict[str, str]:
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


def _describe(tx: wal.TxState) -> str:
    who = f"pid {tx.owner.pid} on {tx.owner.host}" if tx.owner else "unknown owner"
    return f"transaction {tx.txid} ({tx.state}, owner {who}, since {tx.begun_at})"


def _directive(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Refused(f"cannot read directive {p}: {e}") from None
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # each parser has its own error class
        raise Refused(f"directive {p} is not valid {suffix.lstrip('.').upper() or 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise Refused(f"directive {p} must be a mapping with a 'Strategy' key")
    return data


def _directive_value(d: dict[str, Any], key: str) -> str | None:
    for k, v in d.items():
        if names.key(str(k)).replace("_", "").replace(" ", "").replace("-", "") == key and v is not None:
            return names.cell_text(v)
    return None


# ---------------------------------------------------------------- init

def init(root: PathArg = None, *, now: datetime | None = None) -> InitResult:
    """Create ``.sop/`` and, when missing, the Master Sheet; accept an existing sheet as it is."""
    r = Path(root if root is not None else os.getcwd()).absolute()
    if not r.is_dir():
        raise UsageError(f"no such folder: {r}")
    created: list[str] = []
    sop = r / ".sop"
    config_path = sop / "config.toml"
    cfg = load_config(r) if config_path.exists() else None
    ws = Workspace(r, cfg or load_config(r))
    if ws.sheet.exists():
        sheet.read(ws, cache=False)   # refuse (exit 5) one we cannot read, or without Strategy/RunID
    if not sop.is_dir():
        fsops.mkdir(sop)
        created.append(".sop/")
    for d in (ws.journal_dir,):
        if not d.is_dir():
            fsops.mkdir(d)
    if not config_path.exists():
        fsops.atomic_write(config_path, CONFIG_TEMPLATE.encode())
        created.append(".sop/config.toml")
    gitignore = sop / ".gitignore"
    if not gitignore.exists():
        fsops.atomic_write(gitignore, b"lock\nsheet.lock\ncache/\n")
    if not ws.sheet.exists():
        fsops.mkdir(ws.sheet.parent, parents=True, exist_ok=True)
        sheet.create(ws.sheet)
        created.append(ws.rel(ws.sheet))
    return InitResult(str(r), created)


# ---------------------------------------------------------------- begin

def begin(strategy: str | None = None, *, run_id: str | None = None, directive: PathArg = None,
          owner_pid: int | None = None, root: PathArg = None, env: dict[str, str] | None = None,
          now: datetime | None = None) -> BeginResult:
    """The gatekeeper: refuse (Refused, exit 1, nothing created) or open a transaction.

    ``owner_pid`` names the process that owns the transaction; None means the
    calling process (the CLI passes ``$SOP_OWNER_PID`` or its parent).
    """
    now = _now(now)
    ws = open_workspace(root, env)
    if directive is not None:
        d = _directive(directive)
        d_strategy = _directive_value(d, "strategy")
        d_run = _directive_value(d, "runid")
        if d_strategy is None and strategy is None:
            raise Refused(f"directive {directive} has no 'Strategy' key",
                          detail="Action: add Strategy to the directive, or pass --strategy NAME.")
        if strategy is not None and d_strategy is not None and names.key(strategy) != names.key(d_strategy):
            raise Refused(f"--strategy {strategy!r} differs from the directive's Strategy {d_strategy!r}",
                          detail="Action: pass one of them, or make them agree.")
        if run_id is not None and d_run is not None and names.key(run_id) != names.key(d_run):
            raise Refused(f"--run-id {run_id!r} differs from the directive's RunID {d_run!r}")
        strategy = strategy if strategy is not None else d_strategy
        run_id = run_id if run_id is not None else d_run
    if strategy is None:
        raise UsageError("no strategy given", detail="Pass --strategy NAME or --directive FILE.")
    names.check_safe(strategy, "strategy name")
    if run_id is not None:
        names.check_safe(run_id, "run id")
    owner = owner_of(owner_pid if owner_pid is not None else os.getpid())

    with _locked(ws) as w:
        view = sheet.read(ws)
        skey = names.key(strategy)
        for tx in w.j.open_transactions():
            if tx.kind == "run" and names.key(tx.strategy) == skey:
                raise Refused(f"Strategy '{strategy}' is held by {_describe(tx)}.",
                              detail="Action: wait for it to commit, or 'sop-abort TXID' it; "
                                     "'sop-recover' rolls back abandoned ones.")
            if run_id is not None and tx.kind == "run" and names.key(tx.run_id) == names.key(run_id):
                raise Refused(f"Run id '{run_id}' is held by {_describe(tx)}.",
                              detail="Action: choose another run id, or leave it out to get a fresh one.")
        rows = view.strategy_rows(strategy)
        if rows:
            r = rows[0]
            if r.strategy == strategy:
                raise Refused(f"Strategy '{strategy}' already exists in Master Sheet (Row {r.number}). "
                              "Verification Failed: 1-Strategy-1-Row Invariant. "
                              "Action: Remove row from Master Sheet to proceed.")
            raise Refused(f"Strategy '{strategy}' already exists in Master Sheet as '{r.strategy}' "
                          f"(Row {r.number}); names compare case-insensitively. "
                          "Verification Failed: 1-Strategy-1-Row Invariant. "
                          "Action: Remove row from Master Sheet to proceed.")
        run_dirs = _entries_by_key(ws.runs)
        if run_id is not None:
            rr = view.run_rows(run_id)
            if rr:
                raise Refused(f"Run id '{run_id}' is already on Master Sheet row {rr[0].number} "
                              f"(strategy '{rr[0].strategy}').",
                              detail="Action: choose another run id, or leave it out to get a fresh one.")
            if names.key(run_id) in run_dirs:
                raise Refused(f"Run folder runs/{run_dirs[names.key(run_id)]}/ already exists.",
                              detail="Action: choose another run id, or run 'sop-sweep' to clean up.")
        else:
            taken = {names.key(t.run_id) for t in w.j.open_transactions()}
            while True:
                run_id = names.new_run_id(now, os.urandom(3).hex())
                k = names.key(run_id)
                if k not in run_dirs and k not in taken and not view.run_rows(run_id):
                    break
        existing = _entries_by_key(ws.backtests).get(skey)
        if existing is not None:
            raise Refused("Zombie Artifact detected. Strategy folder exists but is unindexed. "
                          "Action: Run cleanup tool or manually delete folder.",
                          detail=f"Folder: backtests/{existing}/ — 'sop-sweep' reports it, 'sop-sweep --fix' "
                                 "deletes it.")
        txid = f"tx-{names.stamp(now)}-{os.urandom(3).hex()}"
        sdir, rdir = ws.strategy_dir(strategy), ws.run_dir(run_id)
        w.append(txid, "begin", {"strategy": strategy, "run_id": run_id, "owner": _owner_dict(owner),
                                 "strategy_dir": _rel(ws, sdir), "run_dir": _rel(ws, rdir)}, now=now)
        for folder in (sdir, rdir):
            if not folder.parent.is_dir():
                w.append(txid, "mkdir", {"path": _rel(ws, folder.parent)}, now=now)
                fsops.mkdir(folder.parent, parents=True, exist_ok=True)
            w.append(txid, "mkdir", {"path": _rel(ws, folder)}, now=now)
            fsops.mkdir(folder)
    return BeginResult(txid, strategy, run_id, str(sdir), str(rdir))


def _owner_dict(o: Owner) -> dict[str, Any]:
    return {"host": o.host, "pid": o.pid, "start": o.start, "boot": o.boot, "user": o.user}


# ---------------------------------------------------------------- commit

def _get(ws: Workspace, w: wal.Writer, txid: str) -> wal.TxState:
    tx = wal.find_transaction(ws, txid, w.j)
    if tx is None or tx.kind != "run":
        raise NoSuchTransaction(f"no such transaction: {txid}",
                                detail="Action: 'sop-status' lists the open ones, 'sop-log' all of them.")
    return tx


def _current(ws: Workspace, txid: str) -> wal.TxState:
    """A transaction's state as the journal says now (read under the workspace lock)."""
    with _locked(ws) as w:
        return _get(ws, w, txid)


def _committed(tx: wal.TxState, **kw: Any) -> CommitResult:
    return CommitResult(tx.txid, tx.strategy, tx.run_id, "committed", row=tx.row_number or None, **kw)


def _gate(ws: Workspace, tx: wal.TxState, now: datetime) -> dict[str, Any]:
    """The validation gate (SPEC §5 sop-commit); Refused with the reason, the transaction left open."""
    meta_path = ws.strategy_dir(tx.strategy) / "run_metadata.json"
    where = _rel(ws, meta_path)
    hint = f"Fix it, then 'sop-commit {tx.txid}' again, or 'sop-abort {tx.txid}'."
    try:
        raw = meta_path.read_bytes()
    except FileNotFoundError:
        raise Refused(f"Validation failed: {where} does not exist.", detail=hint) from None
    except OSError as e:
        raise Refused(f"Validation failed: cannot read {where}: {e.strerror}.", detail=hint) from None
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(f"Validation failed: {where} is not valid JSON ({e}).", detail=hint) from None
    if not isinstance(meta, dict):
        raise Refused(f"Validation failed: {where} must hold a JSON object.", detail=hint)
    rid = meta.get("run_id")
    if not isinstance(rid, str):
        raise Refused(f"Validation failed: {where} has no string 'run_id' (it must be {tx.run_id!r}).",
                      detail=hint)
    if rid != tx.run_id:
        raise Refused(f"Validation failed: {where} says run_id {rid!r}, but the transaction's run id is "
                      f"{tx.run_id!r}.", detail=hint)
    ms = meta.get("strategy")
    if ms is not None and (not isinstance(ms, str) or names.key(ms) != names.key(tx.strategy)):
        raise Refused(f"Validation failed: {where} says strategy {ms!r}, but the transaction is for "
                      f"{tx.strategy!r}.", detail=hint)
    view = sheet.read(ws)
    if view.strategy_rows(tx.strategy):
        r = view.strategy_rows(tx.strategy)[0]
        raise Refused(f"Validation failed: Strategy '{tx.strategy}' is already on Master Sheet row {r.number} "
                      "(added since the run began). 1-Strategy-1-Row Invariant.",
                      detail=f"Remove that row, then 'sop-commit {tx.txid}' again, or 'sop-abort {tx.txid}'.")
    if view.run_rows(tx.run_id):
        r = view.run_rows(tx.run_id)[0]
        raise Refused(f"Validation failed: run id '{tx.run_id}' is already on Master Sheet row {r.number}.",
                      detail=hint)
    rdir = ws.run_dir(tx.run_id)
    if not rdir.is_dir() or rdir.is_symlink():
        raise Refused(f"Validation failed: the run snapshot {_rel(ws, rdir)}/ does not exist.", detail=hint)
    row = sheet.row_from_metadata(meta, tx.strategy, tx.run_id, tx.txid, now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    try:
        sheet.check_row(view, row)
    except Refused as e:
        raise Refused(f"Validation failed: {where}: {e.message}", detail=hint) from None
    return row


def commit(txid: str, *, defer_on_lock: bool = False, root: PathArg = None, now: datetime | None = None,
           env: dict[str, str] | None = None, sleep: Callable[[float], None] = time.sleep) -> CommitResult:
    """The validation gate, the commit decision, then the row (SPEC §5 sop-commit).

    Raises Refused (gate), SheetLocked (exit 3: rolled back or deferred),
    NoSuchTransaction/WrongState (exit 4).
    """
    now = _now(now)
    ws = open_workspace(root, env)
    def check(tx: wal.TxState) -> None:
        if tx.state not in ("begun", "committing", "deferred"):
            raise WrongState(f"transaction {txid} is {tx.state}; only a begun or deferred transaction can be "
                             "committed", detail="Action: start a new run with 'sop-begin'.")

    tx = _current(ws, txid)
    if tx.state == "committed":
        return CommitResult(txid, tx.strategy, tx.run_id, "committed", already=True)
    check(tx)
    was_deferred = tx.state == "deferred"           # deferred once: it stays deferred, never scrubbed later
    if tx.state == "begun":
        # The gate reads the sheet and the metadata without the workspace lock, so that
        # concurrent commits check in parallel; the state is looked at again before deciding.
        hint = _announce(ws, txid)
        try:
            row = _gate(ws, tx, now)
            with _locked(ws) as w:
                tx = _get(ws, w, txid)
                if tx.state == "begun":
                    w.append(txid, "decide", {"row": row}, now=now)
                elif tx.state != "committed":
                    check(tx)
        finally:
            if hint is not None:
                fsops.remove_hint(hint)
    result = flush(ws, want=txid, now=now, sleep=sleep)
    if txid in result.blocked:
        raise Refused(f"the row of {txid} cannot be stored: {result.blocked[txid]}",
                      detail="The commit decision is on record. Fix the sheet's column, then 'sop-commit "
                             f"{txid}' again (or 'sop-recover'), or 'sop-abort {txid}'.")
    if result.locked_by is None:
        tx = _current(ws, txid)
        if tx.state != "committed":
            raise WrongState(f"transaction {txid} is {tx.state}: it was rolled back while it waited for the sheet")
        return _committed(tx, also_committed=[t for t in result.committed if t != txid])
    locked_by = result.locked_by or "unknown user"
    if defer_on_lock or was_deferred or ws.config.on_locked == "defer":
        with _locked(ws) as w:
            tx = _get(ws, w, txid)
            if tx.state == "committed":                 # another process wrote it meanwhile
                return _committed(tx)
            if tx.state == "committing":
                w.append(txid, "defer", {"reason": "sheet locked", "locked_by": locked_by}, now=now)
        raise SheetLocked(f"Indexing deferred: the Master Sheet is locked by {locked_by}.",
                          locked_by=locked_by,
                          detail=f"The artifacts are kept and transaction {txid} is deferred; it still holds "
                                 f"strategy '{tx.strategy}'. 'sop-recover' adds the row once the sheet is free "
                                 "(close it in Excel first).")
    try:
        moved = rollback(ws, txid, reason=f"sheet locked by {locked_by}", delete=False, now=now)
    except WrongState:
        tx = _current(ws, txid)
        if tx.state != "committed":
            raise
        return _committed(tx)
    where = ", ".join(f"{k} -> {v}" for k, v in moved.moved.items()) or "nothing to move"
    raise SheetLocked(SCRUBBED, locked_by=locked_by,
                      detail=f"The Master Sheet was locked by {locked_by} through {ws.config.retries} attempt(s). "
                             f"Quarantined: {where}. Close the sheet and run the backtest again.")


GATHER_SECONDS = 1.0      # the longest a sheet writer waits for commits that are about to decide


def _announce(ws: Workspace, txid: str) -> Path | None:
    """Say that a commit is on its way to a decision, so a writer may wait for its row."""
    try:
        if not ws.pending_dir.is_dir():
            fsops.mkdir(ws.pending_dir, exist_ok=True)
        path = ws.pending_dir / f"{txid}.{os.getpid()}"
        fsops.write_hint(path)
        return path
    except OSError:
        return None                                # a missing hint costs only a second rewrite


def _gather(ws: Workspace, sleep: Callable[[float], None]) -> None:
    """Wait briefly while other commits are between their start and their decision.

    Group commit: their rows then go into this rewrite instead of the next
    one.  A hint whose process is gone is ignored (and removed by recovery).
    """
    from .owner import pid_running
    deadline = time.monotonic() + GATHER_SECONDS
    while time.monotonic() < deadline:
        try:
            names_ = os.listdir(ws.pending_dir)
        except OSError:
            return
        live = [n for n in names_ if n.rpartition(".")[2].isdigit() and pid_running(int(n.rpartition(".")[2]))]
        if not live:
            return
        sleep(0.02)


@dataclass
class FlushResult:
    states: dict[str, wal.TxState]
    committed: list[str]
    locked_by: str | None
    blocked: dict[str, str] = field(default_factory=dict)   # txid -> why its row cannot be stored now


def flush(ws: Workspace, *, want: str | None = None, now: datetime | None = None,
          sleep: Callable[[float], None] = time.sleep, attempts: int | None = None) -> FlushResult:
    """Write every decided row that is waiting, in one rewrite of the sheet (group commit).

    Tries ``[lock].retries`` times while a person holds the sheet open, with
    doubling backoff.  Returns with ``locked_by`` set when it stayed locked.
    """
    now = _now(now)
    attempts = attempts or ws.config.retries
    committed: list[str] = []
    locked_by: str | None = None
    states: dict[str, wal.TxState] = {}
    for attempt in range(attempts):
        if attempt:
            sleep(ws.config.backoff * (2 ** (attempt - 1)))
        with locks.hold(ws.sheet_lock_path, ws.config.lock_timeout, "Master Sheet writer"):
            _gather(ws, sleep)
            with _locked(ws) as w:
                mine = w.states.get(want) if want is not None else None
                if mine is not None and mine.state == "committed":
                    return FlushResult(w.states, committed, None)
                waiting = [t for t in w.j.open_transactions() if t.state in wal.DECIDED_STATES]
                if not waiting:
                    return FlushResult(w.states, committed, None)
                view = sheet.read(ws)
                todo: list[wal.TxState] = []
                blocked: dict[str, str] = {}
                for t in waiting:
                    present = view.run_rows(t.run_id)
                    if present:                         # redo: the row is already there
                        w.append(t.txid, "committed", {"row_number": present[0].number}, now=now)
                        committed.append(t.txid)
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
                locked_by = locks.sheet_locked_by(ws.sheet)
                if locked_by is not None:
                    continue
                for t in todo:
                    w.append(t.txid, "append", {"row": t.row, "sheet": ws.rel(ws.sheet)}, now=now)
            if todo:
                try:
                    numbers = sheet.append(ws, [t.row or {} for t in todo], view)
                except PermissionError as e:
                    locked_by = f"another program ({e.strerror})"
                    continue
                with _locked(ws) as w:
                    for t, n in zip(todo, numbers, strict=True):
                        w.append(t.txid, "committed", {"row_number": n}, now=now)
                        committed.append(t.txid)
                    states = w.states
            return FlushResult(states, committed, None, blocked)
    return FlushResult(states, committed, locked_by)


# ---------------------------------------------------------------- abort / rollback

def _quarantine_name(path: Path, now: datetime) -> Path:
    base = f"{path.name}_FAILED_{names.stamp(now)}"
    cand = path.with_name(base)
    n = 2
    while os.path.lexists(cand):
        cand = path.with_name(f"{base}-{n}")
        n += 1
    return cand


def rollback(ws: Workspace, txid: str, *, reason: str, delete: bool, now: datetime | None = None) -> AbortResult:
    """Record the rollback decision, then quarantine (or delete) the run's folders; idempotent."""
    now = _now(now)
    with _locked(ws) as w:
        decided = _get(ws, w, txid).state in wal.DECIDED_STATES
    # A decided row may already be on the sheet (a writer crashed before recording it, or
    # another process is writing it now): look, holding the sheet writer's lock, before deciding.
    sheet_lock = locks.hold(ws.sheet_lock_path, ws.config.lock_timeout, "Master Sheet writer") if decided \
        else contextlib.nullcontext()
    with sheet_lock, _locked(ws) as w:
        tx = _get(ws, w, txid)
        if tx.state == "aborted":
            return AbortResult(txid, tx.strategy, tx.run_id, "aborted", already=True)
        if tx.state in wal.DECIDED_STATES:
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
        return _finish_rollback(ws, w, tx, now)


def _finish_rollback(ws: Workspace, w: wal.Writer, tx: wal.TxState, now: datetime) -> AbortResult:
    """Move or delete what is still there; each step announced first, each looked at before acting."""
    res = AbortResult(tx.txid, tx.strategy, tx.run_id, "aborted")
    for d in (ws.strategy_dir(tx.strategy), ws.run_dir(tx.run_id)):
        src = _rel(ws, d)
        if not os.path.lexists(d):
            if src in tx.renames:
                res.moved[src] = tx.renames[src]
            continue
        if d.is_symlink() or not d.is_dir():
            continue                                       # never follow or remove what is not our folder
        if tx.delete:
            w.append(tx.txid, "delete", {"path": src, "files": fsops.file_list(d)}, now=now)
            fsops.rmtree(d)
            res.deleted.append(src)
        else:
            announced = tx.renames.get(src)
            dst = ws.root / announced if announced and not os.path.lexists(ws.root / announced) \
                else _quarantine_name(d, now)
            w.append(tx.txid, "rename", {"src": src, "dst": _rel(ws, dst)}, now=now)
            fsops.rename(d, dst)
            res.moved[src] = _rel(ws, dst)
    w.append(tx.txid, "aborted", {}, now=now)
    return res


def abort(txid: str, *, delete: bool = False, root: PathArg = None, now: datetime | None = None,
          env: dict[str, str] | None = None, reason: str = "aborted by sop-abort") -> AbortResult:
    """Roll a transaction back: quarantine its folders to ``_FAILED_<ts>``, or delete them."""
    ws = open_workspace(root, env)
    return rollback(ws, txid, reason=reason, delete=delete, now=now)


# ---------------------------------------------------------------- the context manager and sop-run

@contextlib.contextmanager
def transaction(strategy: str | None = None, *, run_id: str | None = None, directive: PathArg = None,
                root: PathArg = None, defer_on_lock: bool = False,
                now: datetime | None = None) -> Iterator[BeginResult]:
    """Begin; yield the transaction; commit when the block ends, abort when it raises.

    A failed commit gate rolls back too: the caller owns the transaction and
    is about to move on.  The commit's errors propagate.
    """
    tx = begin(strategy, run_id=run_id, directive=directive, owner_pid=os.getpid(), root=root, now=now)
    try:
        yield tx
    except BaseException as e:
        with contextlib.suppress(SopError):
            abort(tx.txid, root=root, now=now, reason=f"the block raised {type(e).__name__}")
        raise
    try:
        commit(tx.txid, defer_on_lock=defer_on_lock, root=root, now=now)
    except Refused as e:
        with contextlib.suppress(SopError):
            if _state_of(root, tx.txid) == "begun":    # only a gate refusal rolls back: a decided run is kept
                ab = abort(tx.txid, root=root, now=now, reason="the commit gate refused the run")
                e.detail = _rolled_back_detail(ab)
        raise


@dataclass
class RunResult:
    txid: str
    strategy: str
    run_id: str
    command_status: int
    state: str
    status: int
    error: SopError | None = None
    commit: CommitResult | None = None
    abort: AbortResult | None = None


def run(cmd: Sequence[str], strategy: str | None = None, *, run_id: str | None = None,
        directive: PathArg = None, root: PathArg = None, defer_on_lock: bool = False,
        stdout: int | None = None, env: dict[str, str] | None = None) -> RunResult:
    """Begin, run ``cmd`` with the SOP_* environment, commit on exit 0, abort otherwise.

    SIGINT and SIGTERM received meanwhile are forwarded to the command.  The
    result's ``status`` is the command's status when it failed, else the commit's.
    """
    base_env = dict(os.environ if env is None else env)
    tx = begin(strategy, run_id=run_id, directive=directive, owner_pid=os.getpid(), root=root, env=base_env)
    ws_root = str(find_root(root, base_env))
    child_env = {**base_env, "SOP_ROOT": ws_root, "SOP_TXID": tx.txid, "SOP_STRATEGY": tx.strategy,
                 "SOP_RUN_ID": tx.run_id, "SOP_STRATEGY_DIR": tx.strategy_dir, "SOP_RUN_DIR": tx.run_dir}
    root = ws_root
    try:
        proc = subprocess.Popen(list(cmd), env=child_env, stdout=stdout)
    except OSError as e:
        ab = abort(tx.txid, root=root, reason=f"the command could not start: {e.strerror}")
        err = Refused(f"cannot run {cmd[0]!r}: {e.strerror}; transaction {tx.txid} rolled back")
        return RunResult(tx.txid, tx.strategy, tx.run_id, 127, ab.state, 127, error=err, abort=ab)

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if status < 0:
        status = 128 - status
    if status != 0:
        ab = abort(tx.txid, root=root, reason=f"the command exited with status {status}")
        return RunResult(tx.txid, tx.strategy, tx.run_id, status, ab.state, status, abort=ab)
    try:
        c = commit(tx.txid, defer_on_lock=defer_on_lock, root=root)
        return RunResult(tx.txid, tx.strategy, tx.run_id, 0, c.state, 0, commit=c)
    except Refused as e:
        state = _state_of(root, tx.txid)
        if state != "begun":                          # decided after all: recovery finishes it, never scrub it
            return RunResult(tx.txid, tx.strategy, tx.run_id, 0, state, e.exit_code, error=e)
        ab = abort(tx.txid, root=root, reason="the commit gate refused the run")
        e.detail = _rolled_back_detail(ab)
        return RunResult(tx.txid, tx.strategy, tx.run_id, 0, ab.state, e.exit_code, error=e, abort=ab)
    except SopError as e:
        return RunResult(tx.txid, tx.strategy, tx.run_id, 0, _state_of(root, tx.txid), e.exit_code, error=e)


def _rolled_back_detail(ab: AbortResult) -> str:
    moved = ", ".join(f"{k} -> {v}" for k, v in ab.moved.items()) or "nothing to move"
    return f"The run was rolled back ({ab.txid}); quarantined: {moved}. Fix the cause and run it again."


def _state_of(root: PathArg, txid: str) -> str:
    try:
        return _current(open_workspace(root), txid).state
    except NoSuchTransaction:
        return "unknown"


# ---------------------------------------------------------------- status

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


@dataclass
class StatusResult:
    root: str
    transactions: list[TxInfo]
    sheet: dict[str, Any]
    journal: dict[str, Any]


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d``, ``2w`` (a bare number is seconds)."""
    t = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        if t and t[-1] in units:
            return timedelta(seconds=float(t[:-1]) * units[t[-1]])
        return timedelta(seconds=float(t))
    except ValueError:
        raise UsageError(f"not a duration: {text!r}", detail="Use a number with s, m, h, d or w, e.g. 24h.") \
            from None


def _info(tx: wal.TxState, now: datetime, older_than: timedelta) -> TxInfo:
    owner = tx.owner
    if owner is None:
        live_alive, why, abandoned = None, "no owner recorded", True
    else:
        lv = liveness(owner)
        live_alive, why = lv.alive, lv.why
        abandoned = is_abandoned(owner, wal.parse_time(tx.begun_at), now, older_than)
    return TxInfo(tx.txid, tx.strategy, tx.run_id, tx.state,
                  _owner_dict(owner) if owner else None, abandoned, live_alive, why, tx.begun_at)


def status(*, root: PathArg = None, older_than: str | timedelta = "24h", now: datetime | None = None,
           env: dict[str, str] | None = None) -> StatusResult:
    """Open transactions with owners and liveness, the sheet's lock, the journal's health (read-only)."""
    now = _now(now)
    ws = open_workspace(root, env)
    ot = parse_duration(older_than) if isinstance(older_than, str) else older_than
    journal: dict[str, Any] = {"ok": True, "records": 0, "torn": None, "damage": None}
    txs: list[TxInfo] = []
    try:
        j = wal.load(ws)
        journal["records"] = j.seq
        if j.torn:
            journal["torn"] = f"{j.torn.segment.name} at byte {j.torn.offset} ({j.torn.why}); " \
                              "'sop-recover' cuts it off"
        txs = [_info(t, now, ot) for t in j.open_transactions()]
    except SopError as e:
        journal["ok"] = False
        journal["damage"] = e.message
    return StatusResult(str(ws.root), txs, {"path": ws.rel(ws.sheet), "locked_by": locks.sheet_locked_by(ws.sheet),
                                            "exists": ws.sheet.exists()}, journal)


def as_dict(obj: Any) -> Any:
    """A result as plain JSON-able data."""
    return asdict(obj)
