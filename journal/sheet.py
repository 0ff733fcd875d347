"""Plumbing: the Master Sheet as sop sees it — strategies, run ids, and their rows.

This layer knows the SPEC's rules (which columns are required, how names
compare, how values are typed) and leaves the bytes of the workbook to
:mod:`journal.xlsx`.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from . import fsops, names
from .errors import Refused, SheetDamaged
from .workspace import Workspace

if TYPE_CHECKING:
    from types import ModuleType

    from . import xlsx


def _x() -> ModuleType:
    """The workbook engine, imported on first use: a cached index needs none of it."""
    from . import xlsx
    return xlsx

STRATEGY = "strategy"
RUNID = "runid"
TXID = "txid"
COMMITTED_AT = "committedat"
DEFAULT_HEADERS = ["Strategy", "RunID", "TxID", "CommittedAt"]


@dataclass(frozen=True)
class SheetRow:
    number: int
    strategy: str
    run_id: str
    values: dict[int, Any] = field(default_factory=dict)


class SheetView:
    """The master worksheet's index: who is on which row.

    Held as three parallel lists (row numbers, strategies, run ids) and two
    key maps built on first use; :class:`SheetRow` objects are made only
    when asked for, so a cached index of 100k rows loads in milliseconds.
    """

    def __init__(self, path: Path, worksheet: str, header_row: int, headers: dict[int, str],
                 columns: dict[str, int], rows: list[SheetRow] | None = None, *,
                 lists: tuple[list[int], list[str], list[str]] | None = None,
                 keys: tuple[list[str], list[str]] | None = None) -> None:
        self.path, self.worksheet, self.header_row = path, worksheet, header_row
        self.headers, self.columns = headers, columns
        self._rows = rows
        if lists is None:
            rs = rows or []
            lists = ([r.number for r in rs], [r.strategy for r in rs], [r.run_id for r in rs])
        self.numbers, self.strategies, self.run_ids = lists
        self._keylists = keys
        self._maps: tuple[dict[str, list[int]], dict[str, list[int]]] | None = None
        self.stamp: list[int] = []                  # the file version this index describes
        self.writable = False                       # this version passed the writer's checks (sop wrote it)
        self.layout: list[Any] | None = None        # where sop's writer laid this version out (xlsx.Layout)

    @property
    def rows(self) -> list[SheetRow]:
        if self._rows is None:
            self._rows = [SheetRow(n, s, r) for n, s, r in zip(self.numbers, self.strategies, self.run_ids,
                                                                strict=True)]
        return self._rows

    def keylists(self) -> tuple[list[str], list[str]]:
        """The comparison keys of every row's strategy and run id ("" where empty)."""
        if self._keylists is None:
            key = names.key
            self._keylists = ([key(s) if s else "" for s in self.strategies],
                              [key(r) if r else "" for r in self.run_ids])
        return self._keylists

    def _index(self) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        if self._maps is None:
            maps: list[dict[str, list[int]]] = []
            for keys in self.keylists():
                m: dict[str, list[int]] = {}
                for i, k in enumerate(keys):
                    if k:
                        got = m.get(k)
                        if got is None:
                            m[k] = [i]
                        else:
                            got.append(i)
                maps.append(m)
            self._maps = (maps[0], maps[1])
        return self._maps

    def _row(self, i: int) -> SheetRow:
        if self._rows is not None:
            return self._rows[i]
        return SheetRow(self.numbers[i], self.strategies[i], self.run_ids[i])

    @property
    def by_strategy(self) -> dict[str, list[SheetRow]]:
        return {k: [self._row(i) for i in v] for k, v in self._index()[0].items()}

    @property
    def by_run(self) -> dict[str, list[SheetRow]]:
        return {k: [self._row(i) for i in v] for k, v in self._index()[1].items()}

    def _find(self, which: int, name: str) -> list[SheetRow]:
        k = names.key(name)
        if self._maps is not None:
            return [self._row(i) for i in self._maps[which].get(k, [])]
        keys = self.keylists()[which]          # a few look-ups: a scan in C beats building a map
        out: list[SheetRow] = []
        i = -1
        while True:
            try:
                i = keys.index(k, i + 1)
            except ValueError:
                return out
            out.append(self._row(i))

    def strategy_rows(self, strategy: str) -> list[SheetRow]:
        return self._find(0, strategy)

    def run_rows(self, run_id: str) -> list[SheetRow]:
        return self._find(1, run_id)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise SheetDamaged(f"Master Sheet not found: {path}",
                           detail="Action: move it back or restore it from a backup, or set [sheet] path in "
                                  ".sop/config.toml; 'sop-status' says whether the journal holds committed rows "
                                  "('sop init --from-journal' rebuilds it from them).")
    if path.is_dir():
        raise SheetDamaged(f"Master Sheet is a folder, not a workbook: {path}")


class _Index(msgspec.Struct, array_like=True):
    """The cached index of a sheet: valid while the file's identity and stat are unchanged."""

    stamp: list[int]
    worksheet: str
    header_row: int
    headers: dict[int, str]
    columns: dict[str, int]
    numbers: list[int]
    strategies: list[str]
    run_ids: list[str]
    skeys: list[str]
    rkeys: list[str]
    writable: bool = False          # the writer's checks passed on this version (it wrote it, or checked it)
    layout: list[Any] | None = None  # xlsx.Layout.to_list() of this version, when sop's writer laid it out


_encode_index = msgspec.msgpack.Encoder().encode
_decode_index = msgspec.msgpack.Decoder(_Index).decode


def _stamp(path: Path, st: os.stat_result | None = None) -> list[int]:
    """What identifies one version of the sheet: a save by anyone makes a new inode or mtime."""
    st = st or os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def _cache_path(ws: Workspace, path: Path) -> Path:
    h = hashlib.sha256(f"{path}\0{ws.config.worksheet}".encode()).hexdigest()[:16]
    return ws.cache_dir / f"sheet-index-{h}.msgpack"


def read(ws: Workspace, *, all_columns: bool = False, path: Path | None = None, cache: bool = True) -> SheetView:
    """Read the Master Sheet's index; refuse (exit 5) one without Strategy and RunID columns.

    The index (strategies and run ids with their rows) is cached in
    ``.sop/cache/`` under the sheet's size, mtime, inode and device:
    any save (by Excel or by sop's atomic replace) changes them, and an
    unchanged sheet is not parsed again, so ``sop-begin`` starts fast.
    """
    path = path or ws.sheet
    _check_readable(path)
    if all_columns or not cache:
        return _read(ws, path, all_columns)
    stamp = _stamp(path)
    try:
        idx = _decode_index(_cache_path(ws, path).read_bytes())
        if idx.stamp == stamp:
            view = SheetView(path, idx.worksheet, idx.header_row, idx.headers, idx.columns,
                             lists=(idx.numbers, idx.strategies, idx.run_ids), keys=(idx.skeys, idx.rkeys))
            view.stamp = stamp
            view.writable = idx.writable
            view.layout = idx.layout
            return view
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        pass
    view = _read(ws, path, False)
    if _stamp(path) == stamp:                      # not saved while we read it
        view.stamp = stamp
        _save_index(ws, view)
    return view


def _save_index(ws: Workspace, view: SheetView) -> None:
    sk, rk = view.keylists()
    idx = _Index(view.stamp, view.worksheet, view.header_row, view.headers, view.columns,
                 view.numbers, view.strategies, view.run_ids, sk, rk, view.writable, view.layout)
    try:
        if not ws.cache_dir.is_dir():
            fsops.mkdir(ws.cache_dir, parents=True, exist_ok=True)
        fsops.atomic_write(_cache_path(ws, view.path), _encode_index(idx))
    except OSError:
        pass                                       # a cache that cannot be written costs only time


def _read(ws: Workspace, path: Path, all_columns: bool) -> SheetView:
    try:
        table = _x().read_table(path, ws.config.worksheet or None, None if all_columns else [STRATEGY, RUNID])
    except PermissionError as e:
        raise SheetDamaged(f"cannot read the Master Sheet {path}: {e.strerror}") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise SheetDamaged(f"cannot read the Master Sheet {path}: {e}") from None
    missing = [h for h, k in (("Strategy", STRATEGY), ("RunID", RUNID)) if k not in table.columns]
    if missing:
        raise SheetDamaged(
            f"the Master Sheet {path.name} (worksheet '{table.worksheet}') has no "
            f"{' or '.join(missing)} column in its first 10 rows",
            detail="Action: add the header cells 'Strategy' and 'RunID' (any case; spaces, '_' and '-' are ignored).")
    sc, rc = table.columns[STRATEGY], table.columns[RUNID]
    rows = [SheetRow(r.number, names.cell_text(r.values.get(sc)), names.cell_text(r.values.get(rc)),
                     dict(r.values) if all_columns else {})
            for r in table.rows]
    return SheetView(path, table.worksheet, table.header_row, dict(table.headers), dict(table.columns), rows)


def cell_value(v: Any) -> xlsx.Value | None:
    """The typed cell for a value: numbers, booleans, or text (SPEC §2)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v if len(str(abs(v))) <= 15 else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return str(v)


def build_row(view: SheetView, values: dict[str, Any]) -> dict[int, xlsx.Value]:
    """Cells by column index for a row given by header name; unknown headers are skipped."""
    out: dict[int, xlsx.Value] = {}
    for name, v in values.items():
        col = view.columns.get(names.header_key(name))
        cv = cell_value(v)
        if col is not None and cv is not None and col not in out:
            out[col] = cv
    return out


def row_from_metadata(meta: dict[str, Any], strategy: str, run_id: str, txid: str,
                      committed_at: str) -> dict[str, Any]:
    """Columns from the metadata's top-level scalars and its ``metrics`` (top level wins)."""
    row: dict[str, Any] = {}
    metrics = meta.get("metrics")
    for source in (metrics if isinstance(metrics, dict) else {}, meta):
        for k, v in source.items():
            if v is None or isinstance(v, (list, dict)):
                continue
            row[names.header_key(k)] = v
    for k in (STRATEGY, RUNID, TXID, COMMITTED_AT):
        row.pop(k, None)
    row[STRATEGY] = strategy
    row[RUNID] = run_id
    row[TXID] = txid
    row[COMMITTED_AT] = committed_at
    return row


def check_row(view: SheetView, row: dict[str, Any]) -> None:
    """Refuse (exit 1) a row the workbook cannot store, before the commit decision is recorded.

    A decided row that the writer then refused would block every commit
    waiting behind it, so the gate runs the writer's own checks (length,
    characters XML cannot carry, types) first.
    """
    _x().encode_rows([build_row(view, row)])


def check_writable(ws: Workspace, count: int = 1, *, rows: list[dict[str, Any]] | None = None,
                   view: SheetView | None = None) -> None:
    """Refuse, before the commit decision is recorded, a Master Sheet the writer would refuse.

    Runs :func:`journal.xlsx.check_append` on the configured worksheet: every check
    :func:`append` makes before it writes (the workbook's shape, rows out of order or without
    ``r``, what sop does not edit, a malformed part, room for ``count`` rows, a table with a
    totals row that would have to grow), with the same errors, writing nothing.  The rows'
    columns decide which tables grow: those of ``rows`` (by header name) when given, else
    every header column.  Values are checked by :func:`check_row`.

    Raises:
        SheetDamaged: the writer would refuse the workbook (exit 5).
        Refused: the sheet has no room for ``count`` rows.
        PermissionError: the file cannot be read (locked).
    """
    path = ws.sheet
    _check_readable(path)
    if view is None or not view.stamp or view.stamp != _stamp(path):
        view = read(ws)
    if view.writable and view.stamp == _stamp(path):
        last = max(view.numbers, default=view.header_row)      # sop wrote this version: only the room is new
        if last + count > _x().MAX_ROW:
            raise Refused(f"the Master Sheet is full: {count} new row(s) after row {last:,} would pass Excel's "
                          f"last row {_x().MAX_ROW:,}", detail="Start a new Master Sheet ([sheet] path).")
        return
    if rows is not None:
        columns = sorted({c for r in rows for c in build_row(view, r)}) or sorted(view.headers)
    else:
        columns = sorted(view.headers)
    _x().check_append(path, ws.config.worksheet or None, count, columns)
    if view.stamp and view.stamp == _stamp(path):           # trust this version from now on (keyed on its stat)
        view.writable = True
        _save_index(ws, view)


def append(ws: Workspace, rows: list[dict[str, Any]], view: SheetView | None = None) -> list[int]:
    """Append rows given by header name; returns their Excel row numbers.

    The index of the new file (old index plus the new rows, keyed on the
    stat of the bytes just written) is cached before the file takes the
    sheet's place, so no gate or ``sop-begin`` ever parses it again.  A PermissionError (the
    file is open elsewhere on Windows) propagates.
    """
    path = ws.sheet
    if view is None or not view.stamp or view.stamp != _stamp(path):
        view = read(ws)
    cells = [build_row(view, r) for r in rows]
    for c in cells:
        for v in c.values():
            if isinstance(v, str) and len(v) > 32767:
                raise Refused("a value is longer than 32,767 characters, the most an Excel cell holds")
    sc, rc = view.columns[STRATEGY], view.columns[RUNID]
    old = view

    def cache_new_index(numbers: list[int], st: os.stat_result, layout: xlsx.Layout | None) -> None:
        if not old.stamp or _stamp(path) != old.stamp:
            return                  # the sheet was saved by someone else meanwhile: let the next read parse it
        strategies = [names.cell_text(c.get(sc)) for c in cells]
        run_ids = [names.cell_text(c.get(rc)) for c in cells]
        sk, rk = old.keylists()     # the old keys (cached with the index) and the new rows': no row keyed twice
        key = names.key
        new = SheetView(path, old.worksheet, old.header_row, old.headers, old.columns,
                        lists=(old.numbers + numbers, old.strategies + strategies, old.run_ids + run_ids),
                        keys=(sk + [key(v) if v else "" for v in strategies],
                              rk + [key(v) if v else "" for v in run_ids]))
        new.stamp = _stamp(path, st)
        new.writable = True         # sop's own output, which its writer accepts
        new.layout = layout.to_list() if layout is not None else None
        _save_index(ws, new)

    x = _x()
    layout = x.Layout.from_list(view.layout) if view.layout else None
    numbers: list[int] = x.append_rows(path, ws.config.worksheet or None, cells, cache_new_index,
                                       layout=layout, checked=view.stamp if view.writable else None)
    return numbers


def remove(ws: Workspace, numbers: list[int]) -> None:
    """Remove rows by Excel row number in one rewrite (Excel's Delete Row: the rows below move up).

    A PermissionError (the file is open elsewhere on Windows) propagates.
    """
    _x().remove_rows(ws.sheet, ws.config.worksheet or None, sorted(set(numbers)))


def create(path: Path, headers: list[str] | None = None) -> None:
    _x().create_workbook(path, headers or DEFAULT_HEADERS)
