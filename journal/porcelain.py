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
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from . import child, fsops, inputs, locks, names, pgstore, sheet, txn, wal
from .errors import Busy, Refused, SheetDamaged, SheetLocked, SopError, UnsafeStore, UsageError, WrongState
from .owner import owner_of
from .render import NOT_JSON
from .states import COMMITTABLE_STATES
from .txn import AbortResult, Session, TxInfo, clock
from .when import parse_duration
from .workspace import CONFIG_TEMPLATE, RootArg, Workspace, load_config, open_workspace, parse_config, with_store

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
class Handle(BeginResult):
    """What :func:`transaction` yields: the begun run, and once the block is left, what became of it.

    ``committed`` holds the commit's result (its row); ``aborted`` says where
    the run's folders went when it was rolled back (``moved``: old -> new path).
    """

    committed: CommitResult | None = None
    aborted: AbortResult | None = None


# ---------------------------------------------------------------- helpers

def _directive_value(d: dict[str, Any], key: str, what: str, path: object) -> str | None:
    """A directive's ``Strategy`` or ``RunID``: text (a run id may also be an integer), else Refused."""
    for k, v in d.items():
        if names.header_key(k) == key and v is not None:
            if isinstance(v, str):
                return v
            if key == "runid" and isinstance(v, int) and not isinstance(v, bool):
                return str(v)
            raise Refused(f"directive {path}: {k} must be text, not a {type(v).__name__} ({v!r:.60})",
                          detail=f"Action: write the {what} as a quoted string.")
    return None


# ---------------------------------------------------------------- init

def init(root: PathArg = None, *, from_journal: bool = False, store: str | None = None, dsn: str | None = None,
         now: datetime | None = None) -> InitResult:
    """Create ``.sop/`` and, when missing, the Master Sheet; accept an existing sheet as it is.

    In a workspace whose journal holds committed rows, a missing sheet is not
    created empty (the next sweep would take their folders for zombies):
    SheetDamaged (exit 5) says how to get it back, and ``from_journal``
    rebuilds it from the journal — a new sheet whose headers are the columns
    those rows filled, and every committed row put back (``sop-restore``).

    ``store="postgresql"`` (with ``dsn``, else ``$SOP_JOURNAL_DSN`` or the
    config's) creates the PostgreSQL store's tables, moves a file journal
    into it with its chain intact, and sets ``[journal]`` in the config.
    """
    r = Path(root if root is not None else os.getcwd()).absolute()
    if not r.is_dir():
        raise UsageError(f"no such folder: {r}")
    if store not in (None, "files", "postgresql"):
        raise UsageError(f"unknown store {store!r}", detail="Use --store files or --store postgresql.")
    created: list[str] = []
    sop = r / ".sop"
    config_path = sop / "config.toml"
    cfg = load_config(r) if config_path.exists() else None
    ws = Workspace(r, cfg or load_config(r))
    if store == "files" and ws.config.store == "postgresql":
        raise UsageError("this workspace's journal is in PostgreSQL; sop does not move it back to files",
                         detail="Copy it out with 'sop-log --json' if you need the records as files.")
    if dsn is not None and store != "postgresql":
        raise UsageError("--dsn goes with --store postgresql")
    if store == "postgresql":
        created += _to_postgresql(ws, config_path, dsn)
        ws = Workspace(r, load_config(r))
    ws.check_store()              # on a network file system: refused before .sop/ is made (after a move to
                                  # PostgreSQL, which is the way out, it passes)
    if ws.sheet.exists():
        if from_journal:
            raise UsageError(f"the Master Sheet exists: {ws.rel(ws.sheet)}",
                             detail="--from-journal only rebuilds a missing sheet; 'sop-restore' puts lost rows "
                                    "back into an existing one.")
        sheet.read(ws, cache=False)   # refuse (exit 5) one we cannot read, or without Strategy/RunID
    rows: list[dict[str, Any]] = []
    if sop.is_dir() and (ws.journal_dir.is_dir() or ws.anchor_path.exists() or wal.is_pg(ws)):
        rows = _committed_values(ws)  # a damaged journal refuses here (exit 5)
        if rows and not ws.sheet.exists() and not from_journal:
            raise SheetDamaged(f"the Master Sheet {ws.rel(ws.sheet)} is missing, but the journal holds "
                               f"{len(rows)} committed row(s); an empty sheet would orphan their folders",
                               detail="Action: restore the workbook from a backup (or move it back, or set [sheet] "
                                      "path), or rebuild it from the journal with 'sop init --from-journal'.")
    elif from_journal:
        raise UsageError(f"no journal to rebuild the sheet from in {r}")
    if not sop.is_dir():
        fsops.mkdir(sop)
        created.append(".sop/")
    if not wal.is_pg(ws) and not ws.journal_dir.is_dir():
        fsops.mkdir(ws.journal_dir)
        if not ws.anchor_path.exists():
            wal.write_anchor(ws, 0, wal.GENESIS)
    if not config_path.exists():
        fsops.atomic_write(config_path, CONFIG_TEMPLATE.encode())
        created.append(".sop/config.toml")
    gitignore = sop / ".gitignore"
    if not gitignore.exists():
        fsops.atomic_write(gitignore, b"lock\nsheet.lock\ncache/\n")
    if not ws.sheet.exists():
        fsops.mkdir(ws.sheet.parent, parents=True, exist_ok=True)
        sheet.create(ws.sheet, _headers(rows) if from_journal else None)
        created.append(ws.rel(ws.sheet))
    if from_journal and rows:
        from .repair import restore  # the rebuild is a restore of every committed row
        res = restore(root=ws, now=now)
        created += [f"row {it.row}: {it.strategy}" if it.done else f"not restored: {it.strategy} ({it.action})"
                    for it in res.items]
    return InitResult(str(r), created)


def _to_postgresql(ws: Workspace, config_path: Path, dsn: str | None) -> list[str]:
    """Create the PostgreSQL store, move a file journal into it, then point the config at it.

    In this order, so that a crash at any step is finished by running the
    command again: the records are copied in one database transaction (a
    second run finds the same history there and copies nothing), then the
    config is replaced atomically, then ``.sop/journal/`` is renamed to
    ``.sop/journal.moved/`` (kept as it was; a host still configured for
    files finds no journal and its anchor says so: exit 5, never a fork).
    """
    done: list[str] = []
    text = config_path.read_text(encoding="utf-8") if config_path.exists() else CONFIG_TEMPLATE
    new_text = with_store(text, "postgresql", dsn)
    pg = Workspace(ws.root, parse_config(new_text))
    if not ws.sop_dir.is_dir():
        fsops.mkdir(ws.sop_dir)
        done.append(".sop/")
    pgstore.create(pg)
    files = Workspace(ws.root, dataclasses.replace(ws.config, store="files"))
    with _file_writers_stopped(files):
        n = wal.move_to_pg(files, pg) if ws.config.store == "files" and files.journal_dir.is_dir() else 0
        done.append(f"the journal store in {pgstore.shown(pgstore.dsn_of(pg))}"
                    + (f", with the {n} record(s) of .sop/journal/" if n else ""))
        if new_text != text or not config_path.exists():
            fsops.atomic_write(config_path, new_text.encode())
            done.append(".sop/config.toml ([journal] store = \"postgresql\")")
        if files.journal_dir.is_dir():
            moved = ws.sop_dir / "journal.moved"
            if moved.exists():
                moved = ws.sop_dir / f"journal.moved-{names.stamp(wal.utcnow())}"
            fsops.rename(files.journal_dir, moved)
            done.append(f"{ws.rel(moved)}/ (the file journal, kept as it was)")
    return done


@contextlib.contextmanager
def _file_writers_stopped(files: Workspace) -> Iterator[None]:
    """The file store's workspace lock around the move, so that no file-store writer appends meanwhile.

    Where the file system refuses the lock (the network folders this move is
    the way out of), the move goes on without it: stop the writers first.
    """
    with contextlib.ExitStack() as stack:
        if files.journal_dir.is_dir():
            with contextlib.suppress(UnsafeStore):
                stack.enter_context(locks.hold(files.lock_path, files.config.lock_timeout))
        yield


def _committed_values(ws: Workspace) -> list[dict[str, Any]]:
    """The decided rows of every committed run the ledger holds (not accepted losses), oldest first."""
    with Session(ws).locked() as w:
        entries = sorted((e for e in wal.committed_rows(ws, w.j).values() if not e.accepted), key=lambda e: e.seq)
        out = []
        for e in entries:
            tx = wal.find_transaction(ws, e.txid, w.j)
            out.append(dict(tx.row) if tx is not None and tx.row else {"strategy": e.strategy, "runid": e.run_id})
        return out


def _headers(rows: list[dict[str, Any]]) -> list[str]:
    """A rebuilt sheet's header row: sop's four columns, then every other column the rows filled."""
    heads = list(sheet.DEFAULT_HEADERS)
    seen = {names.header_key(h) for h in heads}
    for row in rows:
        for k in row:
            if names.header_key(k) not in seen:
                seen.add(names.header_key(k))
                heads.append(k)
    return heads


# ---------------------------------------------------------------- begin

def begin(strategy: str | None = None, *, run_id: str | None = None, directive: PathArg = None,
          owner_pid: int | None = None, root: RootArg = None, env: dict[str, str] | None = None,
          now: datetime | None = None) -> BeginResult:
    """The gatekeeper: refuse (Refused, exit 1, nothing created) or open a transaction.

    ``owner_pid`` names the process that owns the transaction; None means the
    calling process (the CLI passes ``$SOP_OWNER_PID`` or its parent).
    ``root`` is a folder or an open :class:`~journal.workspace.Workspace`.
    """
    now = clock(now)
    ws = open_workspace(root, env)
    if directive is not None:
        d = inputs.read_directive(directive)
        d_strategy = _directive_value(d, "strategy", "strategy name", directive)
        d_run = _directive_value(d, "runid", "run id", directive)
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
    limit = names.name_max(ws.root)
    names.check_safe(strategy, "strategy name", limit=limit)
    if run_id is not None:
        names.check_safe(run_id, "run id", limit=limit)
    txn.check_tops(ws)
    owner = owner_of(owner_pid if owner_pid is not None else os.getpid())
    txid = txn.new_txid(now)
    hold = _lease(ws, txid, owner)                 # the PostgreSQL store: held before the begin is on record
    try:
        res = _begin(ws, txid, strategy, run_id, owner, now)
    except BaseException:
        hold.let_go()
        raise
    hold.begun()
    return res


class _Lease:
    """Who holds a new transaction's lease: this process, a keeper, or nobody (the file store)."""

    def __init__(self, ws: Workspace, txid: str, keeper: Any = None, mine: bool = False) -> None:
        self.ws, self.txid, self.keeper, self.mine = ws, txid, keeper, mine

    def begun(self) -> None:
        if self.keeper is not None:
            self.keeper.go()
        if self.mine:
            pgstore.lease_begun(self.txid)

    def let_go(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()
        if self.mine:
            pgstore.drop_lease(self.ws, self.txid)


def _lease(ws: Workspace, txid: str, owner: Any) -> _Lease:
    if not wal.is_pg(ws):
        return _Lease(ws, txid)
    if owner.pid == os.getpid():
        pgstore.hold_lease(ws, txid)               # on a thread of its own, kept through lost sessions
        return _Lease(ws, txid, mine=True)
    from . import keeper
    return _Lease(ws, txid, keeper=keeper.start(ws, txid, owner))


def _begin(ws: Workspace, txid: str, strategy: str, run_id: str | None, owner: Any, now: datetime) -> BeginResult:
    with Session(ws).locked() as w:
        view = sheet.read(ws)
        skey = names.key(strategy)
        plan = txn.unfinished_plan(w, strategy, run_id)
        if plan is not None:                    # an unfinished plan still acts on the names it holds
            raise Refused(f"Strategy '{strategy}' is named by an unfinished {plan.plan_kind} {plan.txid}.",
                          detail=f"Action: 'sop-recover' finishes it (or 'sop-abort {plan.txid}' gives it up), "
                                 "then run this again.")
        for tx in w.j.open_transactions():
            if tx.kind == "run" and names.key(tx.strategy) == skey:
                raise Refused(f"Strategy '{strategy}' is held by {txn.describe(tx)}.",
                              detail="Action: wait for it to commit, or 'sop-abort TXID' it; "
                                     "'sop-recover' rolls back abandoned ones.")
            if run_id is not None and tx.kind == "run" and names.key(tx.run_id) == names.key(run_id):
                raise Refused(f"Run id '{run_id}' is held by {txn.describe(tx)}.",
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
        run_dirs = txn.entries_by_key(ws.runs)
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
        existing = txn.entries_by_key(ws.backtests).get(skey)
        if existing is not None:
            lost = next((e for e in wal.committed_rows(ws, w.j).values()
                         if names.key(e.strategy) == skey and not e.accepted), None)
            if lost is not None:
                raise Refused(f"Strategy '{lost.strategy}' was committed ({lost.txid}, run {lost.run_id}, row "
                              f"{lost.row or '?'}) but its row is missing from the Master Sheet: a lost row, not "
                              "a zombie.",
                              detail=f"Action: 'sop-restore {lost.txid}' puts the row back (its values are in the "
                                     f"journal), or 'sop-release {lost.strategy}' frees the slot for a new run.")
            raise Refused("Zombie Artifact detected. Strategy folder exists but is unindexed. "
                          "Action: Run cleanup tool or manually delete folder.",
                          detail=f"Folder: backtests/{existing}/ — 'sop-sweep' reports it, 'sop-sweep --fix' "
                                 "deletes it.")
        sdir, rdir = ws.strategy_dir(strategy), ws.run_dir(run_id)
        rec: dict[str, Any] = {"strategy": strategy, "run_id": run_id, "owner": txn.owner_record(owner),
                               "strategy_dir": ws.rel(sdir), "run_dir": ws.rel(rdir)}
        if wal.is_pg(ws):
            rec["lease"] = True
        w.append(txid, "begin", rec, now=now)
        for folder in (sdir, rdir):
            if not folder.parent.is_dir():
                w.append(txid, "mkdir", {"path": ws.rel(folder.parent)}, now=now)
                fsops.mkdir(folder.parent, parents=True, exist_ok=True)
            w.append(txid, "mkdir", {"path": ws.rel(folder)}, now=now)
            fsops.mkdir(folder)
    return BeginResult(txid, strategy, run_id, str(sdir), str(rdir))


# ---------------------------------------------------------------- commit

def _own_row(ws: Workspace, tx: wal.TxState) -> int | None:
    """The row number of a decided run already on the sheet (its run id, with its strategy), else None.

    Read without any lock (the sheet is only ever replaced whole): once the row is there
    the commit is durable, and the process that wrote it records it (or recovery does).
    """
    try:
        present = sheet.read(ws).run_rows(tx.run_id)
    except (SopError, OSError):
        return None
    if present and names.key(present[0].strategy) == names.key(tx.strategy):
        return present[0].number
    return None


def _committed(tx: wal.TxState, **kw: Any) -> CommitResult:
    return CommitResult(tx.txid, tx.strategy, tx.run_id, "committed", row=tx.row_number or None, **kw)


def _gate(ws: Workspace, tx: wal.TxState, now: datetime) -> dict[str, Any]:
    """The validation gate (SPEC §5 sop-commit); Refused with the reason, the transaction left open."""
    meta_path = ws.strategy_dir(tx.strategy) / "run_metadata.json"
    where = ws.rel(meta_path)
    hint = f"Fix it, then 'sop-commit {tx.txid}' again, or 'sop-abort {tx.txid}'."
    try:
        meta = inputs.read_metadata(meta_path)
    except FileNotFoundError:
        raise Refused(f"Validation failed: {where} does not exist.", detail=hint) from None
    except inputs.Unreadable as e:
        raise Refused(f"Validation failed: {where} {e}.", detail=hint) from None
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
    view = sheet.read(ws, writing=True)
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
        raise Refused(f"Validation failed: the run snapshot {ws.rel(rdir)}/ does not exist.", detail=hint)
    row = sheet.row_from_metadata(meta, tx.strategy, tx.run_id, tx.txid, now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    try:
        sheet.check_row(view, row)
    except Refused as e:
        raise Refused(f"Validation failed: {where}: {e.message}", detail=hint) from None
    try:                        # everything the writer would refuse, before the decision (never a stuck commit)
        sheet.check_writable(ws, rows=[row], view=view)
    except (Refused, SheetDamaged) as e:
        raise Refused(f"Validation failed: the Master Sheet cannot take the row: {e.message}",
                      detail=f"{e.detail + ' ' if e.detail else ''}Nothing was decided: fix the sheet, then "
                             f"'sop-commit {tx.txid}' again, or 'sop-abort {tx.txid}'.") from None
    except PermissionError:
        pass                    # held open (Windows): the writer retries, then rolls back or defers
    return row



def commit(txid: str, *, defer_on_lock: bool = False, root: RootArg = None, now: datetime | None = None,
           env: dict[str, str] | None = None, sleep: Callable[[float], None] = time.sleep) -> CommitResult:
    """The validation gate, the commit decision, then the row (SPEC §5 sop-commit).

    Raises Refused (gate), SheetLocked (exit 3: rolled back or deferred),
    NoSuchTransaction/WrongState (exit 4).
    """
    now = clock(now)
    ws = open_workspace(root, env)
    session = Session(ws)

    def check(tx: wal.TxState) -> None:
        if tx.state not in COMMITTABLE_STATES:
            raise WrongState(f"transaction {txid} is {tx.state}; only a begun or deferred transaction can be "
                             "committed", detail="Action: start a new run with 'sop-begin'.")

    tx = session.current(txid)
    if tx.state == "committed":
        return CommitResult(txid, tx.strategy, tx.run_id, "committed", already=True)
    check(tx)
    was_deferred = tx.state == "deferred"           # deferred once: it stays deferred, never scrubbed later
    if tx.state == "begun":
        # The gate reads the sheet and the metadata without the workspace lock, so that
        # concurrent commits check in parallel; the state is looked at again before deciding.
        hint = txn.announce(ws, txid)
        try:
            try:
                row = _gate(ws, tx, now)
            except BaseException:
                sheet.forget_checks()       # an XML check started beside the gate's read is not needed
                raise
            with session.locked() as w:
                tx = session.get(w, txid)
                if tx.state == "begun":
                    w.append(txid, "decide", {"row": row}, now=now)
                elif tx.state != "committed":
                    check(tx)
        finally:
            if hint is not None:
                fsops.remove_hint(hint)
    try:
        result = txn.flush(session, want=txid, now=now, sleep=sleep)
    except Busy:
        # Another commit held the sheet writer's lock through our timeout: it writes every
        # decided row in one rewrite, ours among them.  If our row is there, we are done.
        number = _own_row(ws, tx)
        if number is None:
            raise
        return CommitResult(txid, tx.strategy, tx.run_id, "committed", row=number)
    if txid in result.blocked and result.stale:      # the sheet cannot be trusted now: exit 5, the decision kept
        raise SheetDamaged(f"the row of {txid} was not written: {result.stale}",
                           detail=f"The commit decision is on record: {txid} stays committing, and "
                                  "'sop-recover' writes its row once the sheet holds the rows sop wrote last.")
    if txid in result.blocked:
        raise Refused(f"the row of {txid} cannot be stored: {result.blocked[txid]}",
                      detail="The commit decision is on record. Fix the sheet's column, then 'sop-commit "
                             f"{txid}' again (or 'sop-recover'), or 'sop-abort {txid}'.")
    if result.locked_by is None:
        tx = result.states.get(txid) or session.current(txid)
        if tx.state != "committed":
            raise WrongState(f"transaction {txid} is {tx.state}: it was rolled back while it waited for the sheet")
        return _committed(tx, also_committed=[t for t in result.committed if t != txid])
    locked_by = result.locked_by or "unknown user"
    if defer_on_lock or was_deferred or ws.config.on_locked == "defer":
        with session.locked() as w:
            tx = session.get(w, txid)
            if tx.state == "committed":                 # another process wrote it meanwhile
                return _committed(tx)
            if tx.state == "committing":
                w.append(txid, "defer", {"reason": "sheet locked", "locked_by": locked_by}, now=now)
        raise SheetLocked(f"Indexing deferred: the Master Sheet is locked by {locked_by}.",
                          locked_by=locked_by,
                          detail=f"The artifacts are kept and transaction {txid} is deferred; it still holds "
                                 f"strategy '{tx.strategy}'. 'sop-recover' adds the row once the sheet is free "
                                 f"(close it in Excel first).{txn.owner_hint(ws)}")
    try:
        moved = txn.rollback(session, txid, reason=f"sheet locked by {locked_by}", delete=False, now=now)
    except WrongState:
        tx = session.current(txid)
        if tx.state != "committed":
            raise
        return _committed(tx)
    where = ", ".join(f"{k} -> {v}" for k, v in moved.moved.items()) or "nothing to move"
    raise SheetLocked(SCRUBBED, locked_by=locked_by,
                      detail=f"The Master Sheet was locked by {locked_by} through {ws.config.retries} attempt(s). "
                             f"Quarantined: {where}. Close the sheet and run the backtest again."
                             f"{txn.owner_hint(ws)}")


# ---------------------------------------------------------------- abort

def abort(txid: str, *, delete: bool = False, root: RootArg = None, now: datetime | None = None,
          env: dict[str, str] | None = None, reason: str = "aborted by sop-abort") -> AbortResult:
    """Roll a transaction back: quarantine its folders to ``_FAILED_<ts>``, or delete them.

    A sweep (or release, or restore) left ``planned`` that cannot go on is
    abandoned instead: recorded as given up, what it did stays done and the
    rest is left undone.
    """
    ws = open_workspace(root, env)
    session = Session(ws)
    gave_up = txn.abandon_plan(session, txid, reason=reason, now=now)
    if gave_up is not None:
        return gave_up
    return txn.rollback(session, txid, reason=reason, delete=delete, now=now)


# ---------------------------------------------------------------- the context manager and sop-run

@contextlib.contextmanager
def transaction(strategy: str | None = None, *, run_id: str | None = None, directive: PathArg = None,
                root: RootArg = None, defer_on_lock: bool = False,
                now: datetime | None = None) -> Iterator[Handle]:
    """Begin; yield the transaction; commit when the block ends, abort when it raises.

    A failed commit gate rolls back too: the caller owns the transaction and
    is about to move on.  The commit's errors propagate.  Whatever happens,
    the yielded :class:`Handle` reports it afterwards: ``committed`` (the
    row) or ``aborted`` (where the run's folders were quarantined).
    """
    ws = open_workspace(root)
    b = begin(strategy, run_id=run_id, directive=directive, owner_pid=os.getpid(), root=ws, now=now)
    tx = Handle(b.txid, b.strategy, b.run_id, b.strategy_dir, b.run_dir)
    with _leased(ws, b.txid):
        yield from _settle(ws, tx, defer_on_lock, now)


@contextlib.contextmanager
def _leased(ws: Workspace, txid: str) -> Iterator[None]:
    """This process's lease on ``txid`` (PostgreSQL store) is let go when the block ends."""
    try:
        yield
    finally:
        if wal.is_pg(ws):
            pgstore.drop_lease(ws, txid)


def _settle(ws: Workspace, tx: Handle, defer_on_lock: bool, now: datetime | None) -> Iterator[Handle]:
    try:
        yield tx
    except BaseException as e:
        with contextlib.suppress(SopError):
            tx.aborted = abort(tx.txid, root=ws, now=now, reason=f"the block raised {type(e).__name__}")
        raise
    try:
        tx.committed = commit(tx.txid, defer_on_lock=defer_on_lock, root=ws, now=now)
    except Refused as e:
        with contextlib.suppress(SopError):
            if Session(ws).state_of(tx.txid) == "begun":   # only a gate refusal rolls back: a decided run is kept
                tx.aborted = abort(tx.txid, root=ws, now=now, reason="the commit gate refused the run")
                e.detail = _rolled_back_detail(tx.aborted)
        raise
    except SheetLocked:
        if Session(ws).state_of(tx.txid) == "aborted":     # the sheet stayed locked: the commit rolled it back
            tx.aborted = _aborted_result(ws, tx.txid)
        raise


def _aborted_result(ws: Workspace, txid: str) -> AbortResult:
    """Where a rolled-back run's folders went, from its journaled renames and deletes."""
    t = Session(ws).current(txid)
    return AbortResult(t.txid, t.strategy, t.run_id, t.state, moved=dict(t.renames), deleted=list(t.deleted))


@dataclass
class RunResult:
    txid: str
    strategy: str
    run_id: str
    command_status: int
    state: str
    status: int
    error: SopError | None = field(default=None, metadata=NOT_JSON)
    commit: CommitResult | None = field(default=None, metadata=NOT_JSON)
    abort: AbortResult | None = field(default=None, metadata=NOT_JSON)

    @property
    def row(self) -> int | None:
        """The row the run's commit wrote, if it did."""
        return self.commit.row if self.commit is not None else None

    @property
    def json_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.commit is not None:
            extra["row"] = self.row
        if self.error is not None:
            extra["error"] = self.error
        return extra


def run(cmd: Sequence[str], strategy: str | None = None, *, run_id: str | None = None,
        directive: PathArg = None, root: RootArg = None, defer_on_lock: bool = False,
        stdout: int | None = None, env: dict[str, str] | None = None) -> RunResult:
    """Begin, run ``cmd`` with the SOP_* environment, commit on exit 0, abort otherwise.

    SIGINT and SIGTERM received meanwhile are forwarded to the command (on
    Windows, Ctrl-C and Ctrl-Break as CTRL_BREAK_EVENT, see :mod:`journal.child`).  The
    result's ``status`` is the command's status when it failed, else the commit's.
    """
    base_env = dict(os.environ if env is None else env)
    ws = open_workspace(root, base_env)
    tx = begin(strategy, run_id=run_id, directive=directive, owner_pid=os.getpid(), root=ws)
    with _leased(ws, tx.txid):
        return _run_child(ws, tx, cmd, base_env, defer_on_lock, stdout)


def _run_child(ws: Workspace, tx: BeginResult, cmd: Sequence[str], base_env: dict[str, str], defer_on_lock: bool,
               stdout: int | None) -> RunResult:
    child_env = {**base_env, "SOP_ROOT": str(ws.root), "SOP_TXID": tx.txid, "SOP_STRATEGY": tx.strategy,
                 "SOP_RUN_ID": tx.run_id, "SOP_STRATEGY_DIR": tx.strategy_dir, "SOP_RUN_DIR": tx.run_dir}
    try:
        proc = child.spawn(cmd, child_env, stdout)
    except OSError as e:
        ab = abort(tx.txid, root=ws, reason=f"the command could not start: {e.strerror}")
        err = Refused(f"cannot run {cmd[0]!r}: {e.strerror}; transaction {tx.txid} rolled back")
        return RunResult(tx.txid, tx.strategy, tx.run_id, 127, ab.state, 127, error=err, abort=ab)

    with child.forwarding(proc):
        status = proc.wait()
    if status < 0:
        status = 128 - status
    if status != 0:
        ab = abort(tx.txid, root=ws, reason=f"the command exited with status {status}")
        return RunResult(tx.txid, tx.strategy, tx.run_id, status, ab.state, status, abort=ab)
    try:
        c = commit(tx.txid, defer_on_lock=defer_on_lock, root=ws)
        return RunResult(tx.txid, tx.strategy, tx.run_id, 0, c.state, 0, commit=c)
    except Refused as e:
        state = Session(ws).state_of(tx.txid)
        if state != "begun":                          # decided after all: recovery finishes it, never scrub it
            return RunResult(tx.txid, tx.strategy, tx.run_id, 0, state, e.exit_code, error=e)
        ab = abort(tx.txid, root=ws, reason="the commit gate refused the run")
        e.detail = _rolled_back_detail(ab)
        return RunResult(tx.txid, tx.strategy, tx.run_id, 0, ab.state, e.exit_code, error=e, abort=ab)
    except SopError as e:
        return RunResult(tx.txid, tx.strategy, tx.run_id, 0, Session(ws).state_of(tx.txid), e.exit_code, error=e)


def _rolled_back_detail(ab: AbortResult) -> str:
    moved = ", ".join(f"{k} -> {v}" for k, v in ab.moved.items()) or "nothing to move"
    return f"The run was rolled back ({ab.txid}); quarantined: {moved}. Fix the cause and run it again."


# ---------------------------------------------------------------- status

@dataclass
class StatusResult:
    root: str
    transactions: list[TxInfo]
    sheet: dict[str, Any]
    journal: dict[str, Any]
    lost: txn.LostReport = field(default_factory=txn.LostReport)   # committed rows the sheet no longer holds


def status(*, root: RootArg = None, older_than: str | timedelta = "24h", now: datetime | None = None,
           env: dict[str, str] | None = None) -> StatusResult:
    """Open transactions with owners and liveness, the sheet's lock, the journal's health (read-only)."""
    now = clock(now)
    ws = open_workspace(root, env)
    ws.check_store(write=False)   # read-only: a warning on a network file system
    ot = parse_duration(older_than)
    journal: dict[str, Any] = {"ok": True, "records": 0, "torn": None, "damage": None}
    owner_file = locks.owner_file(ws.sheet, stale_hours=ws.config.stale_owner_hours)
    sheet_doc: dict[str, Any] = {"path": ws.rel(ws.sheet), "locked_by": None if owner_file is None else str(owner_file),
                                 "exists": ws.sheet.exists(), "damage": None, "lost_rows": 0,
                                 "owner_file": None if owner_file is None else {
                                     "path": ws.rel(owner_file.path), "user": owner_file.user,
                                     "age_seconds": int(owner_file.age_seconds), "stale": owner_file.stale,
                                     "hint": owner_file.hint()}}
    txs: list[TxInfo] = []
    lost = txn.LostReport()
    try:
        j = wal.load(ws)
        journal["records"] = j.seq
        if j.torn:
            journal["torn"] = f"{j.torn.segment.name} at byte {j.torn.offset} ({j.torn.why}); " \
                              "'sop-recover' cuts it off"
        txs = [txn.info(ws, t, now, ot) for t in j.open_transactions()]
    except SopError as e:
        journal["ok"] = False
        journal["damage"] = e.message
    else:
        try:
            found, _rows = txn.lost_rows(ws, j, sheet.read(ws))
            lost = txn.lost_report(ws, found)
        except SopError as e:
            sheet_doc["damage"] = e.message
            if not ws.sheet.exists() and (rows := wal.committed_rows(ws, j)):
                sheet_doc["damage"] += (f"; the journal holds {len(rows)} committed row(s): restore the sheet from "
                                        "a backup, or rebuild it with 'sop init --from-journal'")
    sheet_doc["lost_rows"] = len(lost.rows)
    return StatusResult(str(ws.root), txs, sheet_doc, journal, lost)
