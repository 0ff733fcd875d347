r"""Task module: ``sop-sweep`` — the janitor that compares the Master Sheet with the disk (SPEC §5).

What it does
============
1. With ``fix``: :func:`journal.recovery.recover` first.  A dry run asks
   :func:`journal.recovery.plan` what recovery would do instead and reports
   it as ``abandoned`` findings.
2. Reads the sheet's ``Strategy`` and ``RunID`` columns, lists
   ``backtests/`` and ``runs/`` with :func:`os.scandir` (never following a
   link), reads ``run_metadata.json`` of every indexed strategy folder, and
   classifies (see :data:`KINDS`).  Names compare with
   :func:`journal.names.key`.  The sheet itself, Office/LibreOffice owner
   files, sop's temporary files and the report are never artifacts; a folder
   held by an open transaction is ``in_flight`` (``abandoned`` in a dry run
   when recovery would act on it), never a zombie.
3. With ``fix``: one journaled transaction, under the sheet-writer lock and
   then the workspace lock (in that order), held from classification to
   ``done``, so nobody begins a run between the look and the act.
4. Writes the Markdown report (atomically) and returns a :class:`SweepResult`.

The plan record
===============
A sweep's transaction has no ``begin``: its first record is ``plan``, whose
``data`` is::

    {"steps": [STEP, …], "owner": {"host", "pid", "start", "boot", "user"},
     "zombie_action": "delete" | "quarantine", "sweep": 1}

and each ``STEP`` is one of::

    {"op": "remove_row", "row_number": N, "strategy": S, "run_id": R}
    {"op": "delete", "path": "backtests/NAME", "finding": KIND}
    {"op": "rename", "src": "runs/NAME", "dst": "runs/NAME_FAILED_<ts>", "finding": KIND}

``finding`` is ``zombie_folder``, ``zombie_run`` or ``quarantined`` (a purge).
Row steps come first (the sheet is the truth: a removed orphaned row's
folders then become zombies, deleted by later steps of the same plan).
Then, each announced by its own record before the act:

``remove_row``  ``{"step": i, "row_number", "strategy", "run_id", "values": {header: value}}``
                — one per planned row, all written before the single sheet
                rewrite that removes them (Excel's Delete Row);
``delete``      ``{"step": i, "path", "files": [[name, size], …], "finding"}``;
``rename``      ``{"step": i, "src", "dst", "finding"}``;
``done``        ``{"steps": n, "skipped": {i: why}}`` — the sweep is committed.

Redo (:func:`journal.txn.finish_plan`, called by ``sop-recover`` for a sweep left
``planned``) looks before it acts: a row is removed only while a row with
the step's strategy *and* run id is on the sheet (matched by name, since row
numbers shift); a folder is deleted only while it is still there, a real
folder, not indexed again and not held by an open transaction; a rename
happens only while ``src`` exists, to the announced ``dst`` when it is free.
Each act is announced again by a fresh record just before it, even on redo:
after a crash the folder or row may not be the one first announced, and the
journal must hold what was actually destroyed.
"""

from __future__ import annotations

import os
import re
import stat
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, overload

from . import fsops, inputs, ledger, locks, names, sheet, txn, wal
from .errors import UsageError
from .render import NOT_JSON
from .txn import Progress, Session
from .when import parse_duration
from .workspace import RootArg, Workspace, open_workspace

KINDS = ("orphaned_row", "zombie_folder", "zombie_run", "identity_mismatch", "lost_row", "duplicate_row",
         "quarantined", "in_flight", "abandoned", "unsafe_entry")
BENIGN = frozenset({"quarantined", "in_flight", "abandoned"})     # never make --exit-code fail
NEEDS_PERSON = ("duplicate_row", "identity_mismatch", "unsafe_entry")
RECOVERY_OLDER_THAN = timedelta(hours=24)                          # sop-recover's default
REPORT_ONLY = "report only"
CASCADE = "trust the sheet:"
METADATA_THREADS = 16                 # concurrent reads of run_metadata.json (see _read_identities)
METADATA_BATCH = 2048                 # fewer files than this are read one by one
METADATA_PROBE = 512                  # read first, one by one, to tell a warm page cache from a cold disk
WARM_SECONDS_PER_FILE = 50e-6         # faster than this, the page cache serves them: no threads


@dataclass(slots=True)
class Finding:
    """One thing the sweep found, and what it did or would do about it."""

    kind: str
    strategy: str = ""
    run_id: str = ""
    path: str = ""
    action: str = ""
    done: bool = False
    detail: str = ""
    row: int | None = None
    steps: list[int] = field(default_factory=list, repr=False, metadata=NOT_JSON)   # the plan steps that fix it


STALE_HOLD = " (the sheet looks like a stale save; restore or accept it first)"


class _Orphans:
    """The orphaned rows, held compactly: the sheet view's row indexes and which folders are missing.

    They are the one finding that comes by the million (every row, once
    ``runs/`` is emptied), so each costs five bytes here, not a
    :class:`Finding` with its texts and steps (~1 KB); :meth:`finding` makes
    one when asked.  The orphan ``k``'s plan step is step ``k``: row steps
    come first in a plan (:meth:`_Plan.add_orphan` checks it).
    """

    def __init__(self, view: sheet.SheetView | None = None, bt_rel: str = "", rn_rel: str = "") -> None:
        self.numbers: list[int] = view.numbers if view is not None else []
        self.strategies: list[str] = view.strategies if view is not None else []
        self.run_ids: list[str] = view.run_ids if view is not None else []
        self.bt_rel, self.rn_rel = bt_rel, rn_rel
        self.at = array("I")                # the view's row index of each orphaned row, in the order found
        self.missing = bytearray()          # per orphaned row: 1 its strategy folder, 2 its run folder, 3 both
        self.order: list[int] | None = None  # report order, when rows were not in ascending order on the sheet
        self.held = False                   # a stale save: nothing planned
        self.skipped: dict[int, str] | None = None   # after --fix: the plan's steps that were not done

    def __len__(self) -> int:
        return len(self.at)

    def add(self, i: int, missing: int) -> None:
        self.at.append(i)
        self.missing.append(missing)

    def sort(self) -> None:
        """Report order (row, then path), kept apart from the step order the plan uses."""
        nums, at = self.numbers, self.at
        if any(nums[at[k]] > nums[at[k + 1]] for k in range(len(at) - 1)):
            self.order = sorted(range(len(at)), key=lambda k: (nums[at[k]], f"{self.bt_rel}/{self.strategies[at[k]]}"))

    def row_numbers(self) -> Iterator[tuple[int, int]]:
        """(step index, row number) of each orphaned row."""
        nums = self.numbers
        return ((k, nums[i]) for k, i in enumerate(self.at))

    def steps(self) -> list[dict[str, Any]]:
        """The plan's row steps, one per orphaned row (made when a fix journals them)."""
        if self.held:
            return []
        nums, strats, rids = self.numbers, self.strategies, self.run_ids
        return [{"op": "remove_row", "row_number": nums[i], "strategy": strats[i], "run_id": rids[i]}
                for i in self.at]

    def not_done(self) -> int:
        """How many a fix did not do (all of them before a fix, or when nothing was planned)."""
        if self.skipped is None or self.held:
            return len(self.at)
        return sum(1 for k, why in self.skipped.items() if k < len(self.at) and why != "already gone")

    def finding(self, k: int) -> Finding:
        """The orphaned row ``k`` (in step order) as a :class:`Finding`."""
        i = self.at[k]
        num, strat, rid, m = self.numbers[i], self.strategies[i], self.run_ids[i], self.missing[k]
        missing = " and ".join(p for p, bit in ((f"{self.bt_rel}/{strat}/", 1), (f"{self.rn_rel}/{rid}/", 2))
                               if m & bit)
        f = Finding("orphaned_row", strat, rid, f"{self.bt_rel}/{strat}", f"remove row {num}",
                    detail=f"{missing} is missing", row=num, steps=[k])
        if self.held:
            f.action, f.steps = f"held back: {f.action}{STALE_HOLD}", []
        elif self.skipped is not None:
            why = self.skipped.get(k)
            f.done = why is None or why == "already gone"
            if not f.done:
                f.detail += f"; not done: {why}"
        return f

    def __iter__(self) -> Iterator[Finding]:
        return map(self.finding, range(len(self.at)) if self.order is None else self.order)


@dataclass
class Tally:
    """One kind's findings: how many, how many have steps (planned), how many are done."""

    found: int = 0
    planned: int = 0
    done: int = 0


class Findings(Sequence[Finding]):
    """A sweep's findings in report order: by kind (as :data:`KINDS`), then row, then path.

    A sequence of :class:`Finding`; orphaned rows (the first kind) are
    kept compactly (see :class:`_Orphans`) and made one at a time as they
    are iterated, so a sweep with a million of them holds no million
    objects.  :meth:`tally` and :meth:`of_kind` answer without making them
    all.  An orphaned row's Finding is made afresh each time it is taken,
    so changing one changes nothing here.
    """

    def __init__(self, others: list[Finding] | None = None, orphans: _Orphans | None = None) -> None:
        self.others = others if others is not None else []     # every other finding, sorted
        self.orphans = orphans if orphans is not None else _Orphans()

    def __len__(self) -> int:
        return len(self.orphans) + len(self.others)

    def __iter__(self) -> Iterator[Finding]:
        yield from self.orphans
        yield from self.others

    @overload
    def __getitem__(self, i: int) -> Finding: ...
    @overload
    def __getitem__(self, i: slice) -> list[Finding]: ...

    def __getitem__(self, i: int | slice) -> Finding | list[Finding]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self.orphans)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("finding index out of range")
        if i >= n:
            return self.others[i - n]
        o = self.orphans
        return o.finding(i if o.order is None else o.order[i])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Findings, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None          # type: ignore[assignment]   # a sequence that compares by value, like a list

    def __repr__(self) -> str:
        return f"<Findings: {len(self)}>"

    def of_kind(self, kind: str) -> Iterator[Finding]:
        if kind == "orphaned_row":
            yield from self.orphans
        yield from (f for f in self.others if f.kind == kind)

    def tally(self) -> dict[str, Tally]:
        """Per kind (every kind in :data:`KINDS`, then any other): found, planned (with steps), done."""
        t = {k: Tally() for k in KINDS}
        o = self.orphans
        if len(o):
            t["orphaned_row"] = Tally(len(o), 0 if o.held else len(o), len(o) - o.not_done())
        for f in self.others:
            c = t.get(f.kind) or t.setdefault(f.kind, Tally())
            c.found += 1
            c.planned += bool(f.steps)
            c.done += f.done
        return t

    def needing_person(self) -> Iterator[Finding]:
        """What :func:`wants_person` picks, in order (never an orphaned row)."""
        return (f for f in self.others if wants_person(f))


@dataclass
class SweepResult:
    """What a sweep found and did; ``remaining`` counts what makes ``--exit-code`` fail."""

    dry_run: bool
    when: str
    root: str
    findings: Findings
    report: str
    txid: str | None = None
    recovery: list[Any] = field(default_factory=list)          # what recovery did first (recovery.Action)
    lost: txn.LostReport = field(default_factory=txn.LostReport)   # committed rows the sheet lost
    rows: int = field(default=0, metadata=NOT_JSON)
    folders: int = field(default=0, metadata=NOT_JSON)

    @property
    def tally(self) -> dict[str, Tally]:
        return self.findings.tally()

    @property
    def counts(self) -> dict[str, int]:
        return {k: t.found for k, t in self.tally.items()}

    @property
    def remaining(self) -> list[Finding]:
        return [f for f in self.findings if f.kind not in BENIGN and not f.done]

    @property
    def remaining_count(self) -> int:
        """``len(remaining)``, without making the findings."""
        return sum(t.found - t.done for k, t in self.tally.items() if k not in BENIGN)

    @property
    def needs_person(self) -> list[Finding]:
        """What the sweep leaves for a person: duplicates, mismatches, unsafe entries, lost rows it held back."""
        return list(self.findings.needing_person())

    @property
    def json_extra(self) -> dict[str, Any]:
        return {"counts": self.counts, "remaining": self.remaining_count}


# ---------------------------------------------------------------- scanning

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

@dataclass(frozen=True)
class _Entry:
    name: str
    what: str             # "dir", "link" or "file"


def _scan(top: Path, skip: Callable[[str], bool]) -> tuple[list[_Entry], str | None]:
    """The entries of ``backtests/`` or ``runs/``, without a stat per entry; (entries, why not entered).

    Where the platform allows, the folder is opened with ``O_NOFOLLOW`` and
    listed through that descriptor, so a link swapped in after the check is
    not followed either.
    """
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return [], "missing"
    if stat.S_ISLNK(st.st_mode):
        return [], "a symbolic link; not entered"
    if not stat.S_ISDIR(st.st_mode):
        return [], "a file, not a folder"
    fd = None
    if _O_DIRECTORY and os.scandir in os.supports_fd:
        try:
            fd = os.open(top, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | fsops.O_BINARY)
        except OSError:
            return [], "not a folder sop can enter (it changed while being looked at)"
    out: list[_Entry] = []
    try:
        with os.scandir(top if fd is None else fd) as it:
            for e in it:
                if skip(e.name):
                    continue
                if e.is_symlink():
                    out.append(_Entry(e.name, "link"))
                elif e.is_dir(follow_symlinks=False):
                    out.append(_Entry(e.name, "dir"))
                else:
                    out.append(_Entry(e.name, "file"))
    finally:
        if fd is not None:
            os.close(fd)
    return out, None




def read_identity(path: str) -> tuple[inputs.Identity | None, str]:
    """``run_id`` and ``strategy`` of a ``run_metadata.json``, or None and why it cannot be read.

    The commit gate's own reader (:func:`journal.inputs.read_metadata`), so the two never disagree.
    A link is not followed; a broken file is reported, never a reason to delete.
    """
    try:
        return inputs.read_metadata(path, identity=True), ""
    except FileNotFoundError:
        return None, "run_metadata.json is missing"
    except inputs.Unreadable as e:
        return None, f"run_metadata.json {e}"


_PLAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,118}[A-Za-z0-9_\-])?\Z")


def _unsafe(name: str, limit: int) -> str | None:
    """:func:`journal.names.unsafe_reason`, with a fast path for plain ASCII names (most of them)."""
    if (_PLAIN.match(name) and "_FAILED_" not in name and name.split(".", 1)[0].upper() not in names.RESERVED
            and len(name) <= names.max_name_bytes(limit)):
        return None
    return names.unsafe_reason(name, limit=limit)


# ---------------------------------------------------------------- classification

@dataclass
class _Plan:
    """The findings and the steps that fix them: the orphaned rows' row steps first, then ``later`` ones."""

    findings: list[Finding] = field(default_factory=list)     # all but the orphaned rows
    orphans: _Orphans = field(default_factory=_Orphans)
    later: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    folders: int = 0

    @property
    def steps(self) -> list[dict[str, Any]]:
        """Every step, in order (a fix journals them all in its plan record)."""
        return self.orphans.steps() + self.later

    def add(self, f: Finding, *steps: dict[str, Any]) -> Finding:
        for s in steps:
            f.steps.append(len(self.orphans) + len(self.later))
            self.later.append(s)
        self.findings.append(f)
        return f

    def add_orphan(self, i: int, missing: int) -> None:
        """The view's row ``i`` is orphaned (``missing``: 1 its strategy folder, 2 its run folder, 3 both)."""
        assert not self.later, "row steps come first"
        self.orphans.add(i, missing)

    def result(self) -> Findings:
        return Findings(self.findings, self.orphans)


@dataclass
class _Holder:
    """An open transaction that owns some folders, and what a dry run says recovery will do with it."""

    tx: wal.TxState
    kind: str             # "in_flight" or "abandoned"
    action: str
    detail: str


def _holder(tx: wal.TxState, recovery_actions: dict[str, Any]) -> _Holder:
    a = recovery_actions.get(tx.txid)
    if a is not None:
        return _Holder(tx, "abandoned", a.action, a.detail)
    return _Holder(tx, "in_flight", "leave alone", "")


def _holders(open_txs: Iterable[wal.TxState], recovery_actions: dict[str, Any],
             ws: Workspace) -> tuple[dict[tuple[str, str], _Holder], dict[str, _Holder]]:
    """Folders held by open transactions: by (top, name key), and by exact relative path."""
    by_key: dict[tuple[str, str], _Holder] = {}
    by_path: dict[str, _Holder] = {}
    bt, rn = ws.rel(ws.backtests), ws.rel(ws.runs)
    for tx in open_txs:
        h = _holder(tx, recovery_actions)
        if tx.kind == "run":
            by_key[(bt, names.key(tx.strategy))] = h
            by_key[(rn, names.key(tx.run_id))] = h
        for dst in tx.renames.values():
            by_path[dst] = h
        for s in tx.plan:
            for k in ("path", "src", "dst"):
                if s.get(k):
                    by_path[s[k]] = h
    return by_key, by_path


def _age(ts: str, now: datetime) -> timedelta | None:
    try:
        return now - names.parse_stamp(ts)
    except ValueError:
        return None


def _fmt_age(d: timedelta) -> str:
    s = int(d.total_seconds())
    if s < 0:
        return "in the future"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def classify(ws: Workspace, view: sheet.SheetView, open_txs: list[wal.TxState], *, now: datetime,
             recovery_actions: dict[str, Any] | None = None, purge_older_than: timedelta | None = None,
             report_path: Path | None = None, progress: Progress | None = None,
             lost: ledger.Lost | None = None, accept_sheet: bool = False,
             committed: dict[str, ledger.Entry] | None = None) -> _Plan:
    """Compare the sheet with ``backtests/`` and ``runs/``; the findings and the plan that fixes them.

    Reads, never writes.  ``recovery_actions`` (txid -> recovery Action) turns
    the held folders of those transactions into ``abandoned`` findings.
    ``lost`` (committed rows missing from the sheet) turns their folders
    into ``lost_row`` findings: quarantined, never deleted, and when the
    sheet looks like a stale save (unless ``accept_sheet``) nothing at all is
    planned.  A zombie that belongs to a run in ``committed`` (the ledger:
    an orphaned committed row's other folder, an accepted loss's folder
    moved back) is quarantined whatever ``zombie_action`` says (invariant 8).
    """
    ledger_s = {names.key(e.strategy): e for e in (committed or {}).values()}
    ledger_r = dict(committed or {})
    bt_rel, rn_rel = ws.rel(ws.backtests), ws.rel(ws.runs)
    plan = _Plan(orphans=_Orphans(view, bt_rel, rn_rel), rows=len(view.numbers))
    limit = names.name_max(ws.root)
    tick = progress or (lambda phase, done, total: None)
    sheet_name = ws.sheet.name if ws.sheet.parent == ws.backtests else None
    report_names = {top: report_path.name for top in (ws.backtests, ws.runs)
                    if report_path is not None and report_path.parent == top}

    def skipper(top: Path) -> Callable[[str], bool]:
        own = {n for n in (report_names.get(top), sheet_name if top == ws.backtests else None) if n}
        return lambda n: n in own or (n[0] in "~." and (locks.is_owner_file_name(n) or fsops.is_temp_name(n))) \
            or names.is_os_junk(n)

    by_key, by_path = _holders(open_txs, recovery_actions or {}, ws)
    holding: set[str] = set()                         # txids reported with a folder

    def held(h: _Holder, path: str) -> None:
        holding.add(h.tx.txid)
        plan.add(Finding(h.kind, h.tx.strategy, h.tx.run_id, path, h.action, detail=_held_detail(h.tx, h.detail)))
    tops: dict[str, dict[str, list[str]]] = {}        # top -> name key -> real folder names
    unsafe: dict[tuple[str, str], Finding] = {}       # (top, key) -> the unsafe entry's finding
    unchecked: dict[str, str] = {}                    # top -> why its rows cannot be checked
    quarantined: list[tuple[str, str]] = []
    for top_dir, rel in ((ws.backtests, bt_rel), (ws.runs, rn_rel)):
        tick(f"scanning {rel}/", 0, 0)
        entries, why = _scan(top_dir, skipper(top_dir))
        tops[rel] = {}
        if why is not None:
            unchecked[rel] = why
            if why != "missing":
                plan.add(Finding("unsafe_entry", path=rel, action=REPORT_ONLY, detail=f"{rel}/ is {why}"))
            continue
        plan.folders += len(entries)
        folders = tops[rel]
        for e in entries:
            name = e.name
            if e.what == "dir" and (reason := _unsafe(name, limit)) is None:
                k = names.key(name)
                if k in folders:
                    folders[k].append(name)
                else:
                    folders[k] = [name]
                continue
            path = f"{rel}/{name}"
            if e.what != "dir":
                what = "a symbolic link (never followed)" if e.what == "link" else "a file, not a folder"
                unsafe[(rel, names.key(name))] = plan.add(
                    Finding("unsafe_entry", path=path, action=REPORT_ONLY, detail=f"{path} is {what}"))
            elif names.FAILED_RE.match(name):
                quarantined.append((rel, name))
            else:
                unsafe[(rel, names.key(name))] = plan.add(
                    Finding("unsafe_entry", path=path, action=REPORT_ONLY,
                            detail=f"sop would refuse the name {name!r}: {reason}"))

    # ---- rows (the view's parallel lists: no object per row on the common path)
    numbers, strategies, run_ids = view.numbers, view.strategies, view.run_ids
    skeys, rkeys = view.keylists()
    dups: dict[tuple[int, str], list[int]] = {}                       # (0 strategy | 1 run id, key) -> rows
    if _repeats(skeys) or _repeats(rkeys):
        for which, keys in ((0, skeys), (1, rkeys)):
            count = Counter(keys)
            for num, k in zip(numbers, keys, strict=True):
                if k and count[k] > 1:
                    dups.setdefault((which, k), []).append(num)
            del count
    bt_dir = os.fspath(ws.backtests)
    indexed: dict[str, dict[str, str]] = {bt_rel: {}, rn_rel: {}}     # top -> key -> the exact name indexed
    indexed_s, indexed_r = indexed[bt_rel], indexed[rn_rel]
    protected: dict[str, set[str]] = {bt_rel: set(), rn_rel: set()}   # keys a person must look at first
    cascade: dict[tuple[str, str], int] = {}                          # (top, key) -> orphaned row number

    def folder_of(top: str, name: str, k: str, row: sheet.SheetRow) -> tuple[str | None, Finding | None]:
        """The real folder a row names (None when missing), or the unsafe finding that stops the check."""
        u = unsafe.get((top, k))
        if u is not None:
            u.strategy, u.run_id, u.row = row.strategy, row.run_id, row.number
            u.detail += f"; row {row.number} names it, so the row is left alone"
            return None, u
        found = tops[top].get(k, [])
        if len(found) > 1:
            exact = [n for n in found if n == name]
            if len(exact) != 1:
                f = plan.add(Finding("unsafe_entry", row.strategy, row.run_id, f"{top}/{name}", REPORT_ONLY,
                                     detail=f"row {row.number}: {len(found)} folders differ from {name!r} only "
                                            f"in case ({', '.join(sorted(found))})", row=row.number))
                return None, f
            protected[top].add(k)
            for other in found:
                if other != name:
                    plan.add(Finding("unsafe_entry", row.strategy, row.run_id, f"{top}/{other}", REPORT_ONLY,
                                     detail=f"differs only in case from {top}/{name}, which row {row.number} "
                                            "indexes", row=row.number))
            return name, None
        return (found[0] if found else None), None

    def leave_alone(sk: str, rk: str) -> None:
        protected[bt_rel].add(sk)
        protected[rn_rel].add(rk)

    n_rows = len(numbers)
    bt_folders, rn_folders = tops[bt_rel], tops[rn_rel]
    rows_checked = bt_rel not in unchecked and rn_rel not in unchecked
    checks: list[tuple[int, str, str, str, bool]] = []               # identity checks, read in one batch
    for i in range(n_rows):
        if not i % 4096:
            tick("checking rows", i, n_rows)
        num, strat, rid, sk, rk = numbers[i], strategies[i], run_ids[i], skeys[i], rkeys[i]
        if not strat and not rid:
            continue
        dup = dups.get((0, sk)) if sk else None
        dup_r = dups.get((1, rk)) if rk else None
        if dup or dup_r:
            what = f"strategy '{strat}'" if dup else f"run id '{rid}'"
            plan.add(Finding("duplicate_row", strat, rid, f"{bt_rel}/{strat}" if strat else "",
                             "none: a person decides; its rows and folders are left alone",
                             detail=f"{what} is on rows {', '.join(map(str, dup or dup_r or []))}", row=num))
            leave_alone(sk, rk)
            continue
        bad = [(what, v, why) for what, v in (("strategy", strat), ("run id", rid))
               if (why := _unsafe(v, limit)) is not None]
        if bad:
            what, v, why = bad[0]
            plan.add(Finding("unsafe_entry", strat, rid, "", REPORT_ONLY,
                             detail=f"row {num}: the {what} {v!r} is not a folder name sop accepts: {why}", row=num))
            leave_alone(sk, rk)
            continue
        if not rows_checked:
            leave_alone(sk, rk)
            continue                                   # reported once for the whole folder, below
        found_s, found_r = bt_folders.get(sk), rn_folders.get(rk)
        if (found_s is None or len(found_s) == 1) and (bt_rel, sk) not in unsafe:
            sname: str | None = found_s[0] if found_s else None    # the common cases, without a call
        else:
            sname, su = folder_of(bt_rel, strat, sk, sheet.SheetRow(num, strat, rid))
            if su is not None:
                leave_alone(sk, rk)
                continue
        if (found_r is None or len(found_r) == 1) and (rn_rel, rk) not in unsafe:
            rname: str | None = found_r[0] if found_r else None
        else:
            rname, ru = folder_of(rn_rel, rid, rk, sheet.SheetRow(num, strat, rid))
            if ru is not None:
                leave_alone(sk, rk)
                continue
        if sname is not None:
            checks.append((num, strat, rid, sname, rname is None))
        if sname is None or rname is None:
            plan.add_orphan(i, (sname is None) | (rname is None) << 1)       # the finding and its row step
            for top, folder, k in ((bt_rel, sname, sk), (rn_rel, rname, rk)):
                if folder is not None:
                    cascade[(top, k)] = num
            continue
        indexed_s[sk] = sname
        indexed_r[rk] = rname
    tick("checking rows", n_rows, n_rows)
    metas = _read_identities([os.path.join(bt_dir, c[3], "run_metadata.json") for c in checks], tick)
    for (num, strat, rid, sname, run_missing), (meta, why) in zip(checks, metas, strict=True):
        _check_identity(plan, bt_rel, num, strat, rid, sname, run_missing, meta, why)

    for top, why in unchecked.items():
        if n_rows:
            plan.add(Finding("unsafe_entry", path=top, action=REPORT_ONLY,
                             detail=f"{top}/ is {why}: rows were not checked against the disk and nothing was "
                                    "removed (is a drive not mounted?)"))

    # ---- committed rows the sheet lost: their folders are theirs, not zombies
    lost_keys: set[tuple[str, str]] = set()
    stale = bool(lost and lost.rows and lost.stale_save and not accept_sheet)
    for lr in (lost.rows if lost else []):
        sk, rk = names.key(lr.strategy), names.key(lr.run_id)
        free_s = sk not in indexed_s and sk not in protected[bt_rel]          # no row indexes the folder
        free_r = rk not in indexed_r and rk not in protected[rn_rel]
        cands = [(bt_rel, n) for n in bt_folders.get(sk, []) if free_s]
        cands += [(rn_rel, n) for n in rn_folders.get(rk, []) if free_r]
        mine = [(t, n) for t, n in cands if (t, names.key(n)) not in by_key]
        cause = ("the sheet looks like a stale save (the newest rows sop wrote are the ones missing)"
                 if lost and lost.stale_save else "its row was removed without a journaled removal")
        detail = f"committed by {lr.txid} (row {lr.row or '?'}); {cause}"
        path = f"{mine[0][0]}/{mine[0][1]}" if mine else f"{bt_rel}/{lr.strategy}"
        steps: list[dict[str, Any]] = []
        if stale:
            action = ("none: restore the rows with 'sop-restore', or accept the sheet as it is with "
                      "'sop-sweep --fix --accept-sheet'")
        else:
            for t, n in mine:
                dst = txn.quarantine_name(ws.root / t / n, now)
                steps.append({"op": "rename", "src": f"{t}/{n}", "dst": ws.rel(dst), "finding": "lost_row",
                              "txid": lr.txid, "strategy": lr.strategy, "run_id": lr.run_id,
                              "id": txn.folder_id(ws.root / t / n)})
            steps.append({"op": "accept_lost", "txid": lr.txid, "strategy": lr.strategy, "run_id": lr.run_id,
                          "strategy_dir": next((f"{t}/{n}" for t, n in mine if t == bt_rel), ""),
                          "run_dir": next((f"{t}/{n}" for t, n in mine if t == rn_rel), "")})
            action = (f"quarantine {', '.join(s['src'] for s in steps if s['op'] == 'rename') or 'nothing'}; "
                      f"'sop-restore {lr.txid}' puts it back")
        plan.add(Finding("lost_row", lr.strategy, lr.run_id, path, action, detail=detail, row=lr.row or None), *steps)
        lost_keys |= {(t, names.key(n)) for t, n in mine}

    # ---- folders: zombies, and those held by open transactions
    zombie_action = ws.config.zombie_action
    for top, kind in ((bt_rel, "zombie_folder"), (rn_rel, "zombie_run")):
        tick(f"checking {top}/", 0, 0)
        for k, found in tops[top].items():
            exact = indexed[top].get(k)
            for name in found:
                path = f"{top}/{name}"
                h = by_key.get((top, k)) or by_path.get(path)
                if h is not None:
                    held(h, path)
                    continue
                if exact is not None or k in protected[top] or (top, k) in lost_keys:
                    continue                            # indexed (a case twin was reported above), or a lost row's
                row = cascade.get((top, k))
                detail = (f"left behind by orphaned row {row}" if row is not None
                          else f"no row has {'strategy' if kind == 'zombie_folder' else 'run id'} '{name}'")
                owner = (ledger_s if kind == "zombie_folder" else ledger_r).get(k)
                if owner is not None:
                    detail += f"; it belongs to committed {owner.txid}, so it is quarantined, never deleted"
                step = _zombie_step(ws, top, name, kind, "quarantine" if owner is not None else zombie_action, now)
                plan.add(Finding(kind, name if kind == "zombie_folder" else "",
                                 name if kind == "zombie_run" else "", path, _step_action(step),
                                 detail=detail, row=row), step)

    # ---- quarantined
    for top, name in quarantined:
        path = f"{top}/{name}"
        h = by_path.get(path)
        if h is not None:
            held(h, path)
            continue
        m = names.FAILED_RE.match(name)
        assert m is not None
        age = _age(m["ts"], now)
        base = m["base"]
        s, rid = (base, "") if top == bt_rel else ("", base)
        if age is None:
            plan.add(Finding("quarantined", s, rid, path, "keep", detail="the timestamp in its name is not a date"))
        elif purge_older_than is not None and age > purge_older_than:
            plan.add(Finding("quarantined", s, rid, path, "delete",
                             detail=f"quarantined {_fmt_age(age)} ago (older than {_fmt_age(purge_older_than)})"),
                     {"op": "delete", "path": path, "finding": "quarantined", "id": txn.folder_id(ws.root / path)})
        else:
            young = f" (not older than {_fmt_age(purge_older_than)})" if purge_older_than is not None else ""
            plan.add(Finding("quarantined", s, rid, path, "keep", detail=f"quarantined {_fmt_age(age)} ago{young}"))

    # ---- open transactions that hold nothing on disk are still reported (a planned sweep, say)
    for tx in open_txs:
        if tx.txid not in holding:
            h = _holder(tx, recovery_actions or {})
            plan.add(Finding(h.kind, tx.strategy, tx.run_id, "", h.action, detail=_held_detail(tx, h.detail)))

    # ---- an identity mismatch whose row is orphaned is fixed by the row's and the folder's steps
    cascading = {f.row for f in plan.findings
                 if f.kind == "identity_mismatch" and f.row and f.action.startswith(CASCADE)}
    if cascading:
        fixes: dict[int, list[int]] = {}
        for at, num in plan.orphans.row_numbers():
            if num in cascading:
                fixes.setdefault(num, []).append(at)
        for g in plan.findings:
            if g.kind == "zombie_folder" and g.row in cascading:
                fixes.setdefault(g.row, []).extend(g.steps)
        for f in plan.findings:
            if f.kind == "identity_mismatch" and f.row in fixes and f.action.startswith(CASCADE):
                f.steps = list(fixes[f.row])
    if stale:                                           # a stale save: the sheet is not the truth now, change nothing
        for f in plan.findings:
            if f.steps:
                f.action = f"held back: {f.action}{STALE_HOLD}"
                f.steps = []
        plan.orphans.held = True
        plan.later = []
    plan.findings.sort(key=lambda f: (KINDS.index(f.kind), f.row or 0, f.path))
    plan.orphans.sort()
    return plan


def _repeats(keys: list[str]) -> bool:
    """Some key other than "" is on two rows: a set, not a Counter (~40 MB less at 1M rows, and faster)."""
    distinct = set(keys)
    distinct.discard("")
    return len(distinct) < len(keys) - keys.count("")


def _held_detail(tx: wal.TxState, why: str) -> str:
    return f"{tx.kind} transaction {tx.txid} ({tx.state}){': ' + why if why else ''}"


def _zombie_step(ws: Workspace, top: str, name: str, kind: str, zombie_action: str, now: datetime) -> dict[str, Any]:
    path = f"{top}/{name}"
    ident = txn.folder_id(ws.root / path)           # the redo acts on this folder only, never a newcomer's
    if zombie_action == "quarantine":
        dst = txn.quarantine_name(ws.root / path, now)
        return {"op": "rename", "src": path, "dst": ws.rel(dst), "finding": kind, "id": ident}
    return {"op": "delete", "path": path, "finding": kind, "id": ident}


def _step_action(step: dict[str, Any]) -> str:
    return f"quarantine to {step['dst']}" if step["op"] == "rename" else "delete"


def _read_chunk(paths: list[str]) -> list[tuple[inputs.Identity | None, str]]:
    return [read_identity(p) for p in paths]


def _read_identities(paths: list[str], tick: Progress) -> list[tuple[inputs.Identity | None, str]]:
    """:func:`read_identity` of many files: one by one while the page cache serves them, in threads when
    the disk does, since a cold disk serves concurrent reads several times faster (100k files: ~18 s one by
    one, ~5 s with 16 threads) while warm files only make the threads contend for the interpreter (30k warm
    files: 0.3 s one by one, 1.0-1.3 s in 2-16 threads)."""
    n = len(paths)
    if n < METADATA_BATCH:
        return _read_chunk(paths)
    started = time.monotonic()
    out = _read_chunk(paths[:METADATA_PROBE])
    tick("reading metadata", len(out), n)
    if (time.monotonic() - started) / METADATA_PROBE < WARM_SECONDS_PER_FILE:
        for i in range(METADATA_PROBE, n, 4096):
            out += _read_chunk(paths[i:i + 4096])
            tick("reading metadata", len(out), n)
        return out
    rest = paths[METADATA_PROBE:]
    size = -(-len(rest) // 64)
    got_all: list[tuple[inputs.Identity | None, str]] = [(None, "")] * len(rest)
    with ThreadPoolExecutor(METADATA_THREADS) as ex:
        futures = {ex.submit(_read_chunk, rest[i:i + size]): i for i in range(0, len(rest), size)}
        done = len(out)
        for f in as_completed(futures):
            i = futures[f]
            got = f.result()
            got_all[i:i + len(got)] = got
            done += len(got)
            tick("reading metadata", done, n)
    return out + got_all


def _check_identity(plan: _Plan, bt_rel: str, number: int, strategy: str, run_id: str, sname: str,
                    run_missing: bool, meta: inputs.Identity | None, why: str) -> None:
    """Compare ``run_metadata.json`` with the row; the sheet is trusted, a mismatch is reported."""
    if meta is not None and _same(meta.run_id, run_id) and (meta.strategy is None or _same(meta.strategy, strategy)):
        return                                      # the common case, early
    path = f"{bt_rel}/{sname}/run_metadata.json"
    if meta is None:
        plan.add(Finding("identity_mismatch", strategy, run_id, path,
                         "none: a person checks the file; it is never a reason to delete",
                         detail=f"cannot check the run id: {why}", row=number))
        return
    got = meta.run_id
    got_text = names.cell_text(got) if isinstance(got, (str, int, float)) and not isinstance(got, bool) else None
    problems = []
    if got_text is None:
        problems.append("it has no run_id")
    elif names.key(got_text) != names.key(run_id):
        problems.append(f"it says run_id {got_text!r}, the sheet says {run_id!r}")
    ms = meta.strategy
    if isinstance(ms, str) and names.key(ms) != names.key(strategy):
        problems.append(f"it says strategy {ms!r}, the sheet says {strategy!r}")
    if not problems:
        return
    if run_missing:
        action = f"{CASCADE} runs/{run_id}/ is missing, so row {number} is orphaned and the folder a zombie"
    else:
        action = f"trust the sheet (row {number}); warn"
    plan.add(Finding("identity_mismatch", strategy, run_id, path, action, detail="; ".join(problems), row=number))


def _same(value: Any, text: str) -> bool:
    """A metadata value names the same thing as a sheet cell's text (``123`` is ``"123"``)."""
    if isinstance(value, str):
        return value == text or names.key(value) == names.key(text)
    return False


# ---------------------------------------------------------------- the sweep

def sweep(*, root: RootArg = None, fix: bool = False, report: str | os.PathLike[str] | None = None,
          purge_failed: bool = False, older_than: str | timedelta | None = None, accept_sheet: bool = False,
          now: datetime | None = None, env: dict[str, str] | None = None, progress: Progress | None = None,
          sleep: Callable[[float], None] = time.sleep) -> SweepResult:
    """Compare the Master Sheet with ``backtests/`` and ``runs/``; with ``fix``, repair in one transaction.

    A dry run (the default) writes only the report.  ``purge_failed`` with
    ``older_than`` plans (with ``fix``: does) the deletion of quarantined
    ``_FAILED_<ts>`` folders older than that, by the time in their name.
    Committed rows missing from the sheet are ``lost_row`` findings: their
    folders are quarantined, never deleted; when the sheet looks like a stale
    save, ``fix`` changes nothing at all unless ``accept_sheet``.
    Raises UsageError (exit 2) for a purge without an age, SheetLocked
    (exit 3, nothing changed by the sweep) when rows are to be removed and a
    person holds the sheet through every attempt.
    """
    if purge_failed and older_than is None:
        raise UsageError("--purge-failed needs --older-than DUR",
                         detail="Say how old a quarantined folder must be to go, e.g. --older-than 7d.")
    if older_than is not None and not purge_failed:
        raise UsageError("--older-than only applies to --purge-failed",
                         detail="Pass both, e.g. --purge-failed --older-than 7d.")
    ot = parse_duration(older_than) if older_than is not None else None
    now = txn.clock(now)
    ws = open_workspace(root, env)
    session = Session(ws)
    report_path = Path(report).absolute() if report is not None else ws.report
    ws.check_report_path(report_path)
    result = SweepResult(dry_run=not fix, when=now.strftime("%Y-%m-%dT%H:%M:%SZ"), root=str(ws.root),
                         findings=Findings(), report=str(report_path))
    if not fix:
        ws.check_store(write=False)     # a dry run writes only the report: a warning on a network file system
        j = wal.load(ws)
        view = sheet.read(ws)
        actions, _live = _recovery_plan(ws, j, now, view)
        lost, ledger_rows = txn.lost_rows(ws, j, view)
        plan = classify(ws, view, j.open_transactions(), now=now, recovery_actions=actions, purge_older_than=ot,
                        report_path=report_path, progress=progress, lost=lost, accept_sheet=accept_sheet,
                        committed=ledger_rows)
        result.lost = txn.lost_report(ws, lost)
    else:
        from . import recovery
        rec = recovery.recover(root=ws, now=now, env=env, sleep=sleep)
        result.recovery = rec.actions
        plan = _Plan()

        def make(w: wal.Writer) -> list[dict[str, Any]]:
            nonlocal plan
            view = sheet.read(ws)
            lost, ledger_rows = txn.lost_rows(ws, w.j, view)
            plan = classify(ws, view, w.j.open_transactions(), now=now, purge_older_than=ot,
                            report_path=report_path, progress=progress, lost=lost, accept_sheet=accept_sheet,
                            committed=ledger_rows)
            result.lost = txn.lost_report(ws, lost)
            return plan.steps

        def what(steps: list[dict[str, Any]]) -> str:
            n = sum(1 for s in steps if s["op"] == "remove_row")
            return f"the sweep would remove {n} row(s), so it changed nothing"
        result.txid, skipped = txn.run_plan(session, make, kind="sweep", now=now, sleep=sleep, progress=progress,
                                            what=what, extra={"zombie_action": ws.config.zombie_action})
        if result.txid is not None:
            _mark_done(plan, skipped)
    result.findings, result.rows, result.folders = plan.result(), plan.rows, plan.folders
    write_report(result, report_path)
    return result


def _recovery_plan(ws: Workspace, j: wal.Loaded, now: datetime,
                   view: sheet.SheetView) -> tuple[dict[str, Any], list[Any]]:
    from . import recovery
    actions, live = recovery.plan(ws, j, now=now, older_than=RECOVERY_OLDER_THAN, force=False, view=view)
    return {a.txid: a for a in actions if a.txid}, live


def _mark_done(plan: _Plan, skipped: dict[int, str]) -> None:
    """A finding is done when every step that fixes it was done (or found already done).

    A finding without steps inside a folder that the same sweep deleted or moved (a broken
    ``run_metadata.json`` of a zombie, say) is done too: what it reported is gone.
    """
    first = len(plan.orphans)                          # the index of plan.later[0]: row steps come first
    gone = [s.get("path") or s.get("src") for i, s in enumerate(plan.later, first)
            if s["op"] in ("delete", "rename") and (i not in skipped or skipped[i] == "already gone")]
    plan.orphans.skipped = skipped
    for f in plan.findings:
        if not f.steps:
            if f.path and any(g and (f.path == g or f.path.startswith(g + "/")) for g in gone):
                f.done = True
                f.detail = (f.detail + "; " if f.detail else "") + "gone with its folder"
            continue
        why = [skipped[i] for i in f.steps if i in skipped and skipped[i] != "already gone"]
        f.done = not why
        if why:
            f.detail = (f.detail + "; " if f.detail else "") + "not done: " + "; ".join(dict.fromkeys(why))


# ---------------------------------------------------------------- the report

def _md(text: object) -> str:
    """Text for a Markdown table cell: pipes and backslashes escaped, control characters shown as escapes."""
    s = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    if s.isprintable():                      # nearly always: no character to look at one by one
        return s
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s)


def wants_person(f: Finding) -> bool:
    """A finding the sweep leaves for a person (see :attr:`SweepResult.needs_person`)."""
    return not f.done and (f.kind in NEEDS_PERSON or (f.kind == "lost_row" and not f.steps))


def report_lines(r: SweepResult) -> Iterator[str]:
    """The Markdown report, a line at a time: when, mode, txid, counts, what needs a person, a table per kind.

    A generator, so that a sweep with a million findings writes its report
    without holding it whole (nor its lines, nor its bytes) in memory.
    """
    mode = "dry run (nothing was changed)" if r.dry_run else "fix"
    tally = r.tally
    remaining = sum(t.found - t.done for k, t in tally.items() if k not in BENIGN)
    yield from ["# sop integrity report", "",
                f"- **When:** {r.when} (UTC)",
                f"- **Mode:** {mode}",
                f"- **Workspace:** `{r.root}`",
                f"- **Sweep transaction:** {('`' + r.txid + '`') if r.txid else 'none (nothing was changed)'}",
                f"- **Checked:** {r.rows} sheet row(s), {r.folders} entr{'y' if r.folders == 1 else 'ies'} "
                "under backtests/ and runs/",
                f"- **Remaining findings** (other than quarantined, in flight, abandoned): {remaining}",
                *([f"- **Lost rows:** {_md(r.lost.message)}"] if r.lost.rows else []),
                "", "## Counts", "", "| finding | count | " + ("planned |" if r.dry_run else "done |"),
                "|---|---:|---:|"]
    for k in KINDS:
        t = tally[k]
        yield f"| {k} | {t.found} | {t.planned if r.dry_run else t.done} |"
    yield from ["", "## Needs a person", ""]
    person = False
    for f in r.findings.needing_person():
        person = True
        who = f.path or f.strategy or f.run_id
        yield f"- **{f.kind}** {_md(who)}{' (row ' + str(f.row) + ')' if f.row else ''}: {_md(f.detail)}"
    if not person:
        yield "Nothing."
    if r.recovery:
        yield from ["", "## Recovery (run first)", ""]
        for a in r.recovery:
            tx = f" {a.txid}" if a.txid else ""
            yield f"- {_md(a.action)}{_md(tx)}: {_md(a.detail)} — {'done' if a.done else 'not done'}"
    for k in KINDS:
        if not tally[k].found:
            continue
        yield from ["", f"## {k} ({tally[k].found})", "",
                    "| strategy | run id | path | row | action | status | detail |", "|---|---|---|---:|---|---|---|"]
        for f in r.findings.of_kind(k):
            status = ("planned" if f.steps else "—") if r.dry_run else ("done" if f.done else
                                                                       ("not done" if f.steps else "—"))
            yield (f"| {_md(f.strategy)} | {_md(f.run_id)} | {_md(f.path)} | {f.row or ''} | {_md(f.action)} | "
                   f"{status} | {_md(f.detail)} |")


def render_report(r: SweepResult) -> str:
    """The Markdown report as one text (see :func:`report_lines`)."""
    return "".join(line + "\n" for line in report_lines(r))


def write_report(r: SweepResult, path: Path) -> None:
    """Write the report atomically, creating its folder when missing; streamed, a few thousand lines at a time."""
    if not path.parent.is_dir():
        fsops.mkdir(path.parent, parents=True, exist_ok=True)

    def write(f: BinaryIO) -> None:
        chunk: list[str] = []
        for line in report_lines(r):
            chunk.append(line)
            if len(chunk) >= 4096:
                f.write(("\n".join(chunk) + "\n").encode("utf-8"))
                chunk.clear()
        if chunk:
            f.write(("\n".join(chunk) + "\n").encode("utf-8"))
    fsops.atomic_write(path, write)


__all__ = ["sweep", "classify", "SweepResult", "Finding", "Findings", "Tally", "KINDS", "read_identity",
           "render_report"]
