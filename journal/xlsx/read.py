"""Reading the master worksheet's header and data rows (see the package docstring, *Reading*)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from ..names import header_key as normalize_header
from .constants import HEADER_SCAN_ROWS, MAX_COL, MAX_ROW
from .edit import Prescan
from .package import Package, SharedStrings, damaged, load_shared_strings
from .ranges import col_index, col_letters
from .scan import Segments, Sx, iter_sheet, row_spans
from .text import Value, parse_number, xml_text


class _OutOfSheet(ValueError):
    """A cell or row outside the sheet's grid (column XFD, row 1,048,576): read_table refuses the part."""


def _check_row(r: int) -> int:
    if r > MAX_ROW:
        raise _OutOfSheet(f"row {r:,}, past Excel's last row {MAX_ROW:,}")
    return r


Sink = Callable[[list[int], list[dict[int, Value]], dict[str, int]], None]


class _Rows:
    """Data rows as they are read: their numbers and their values, side by side."""

    __slots__ = ("numbers", "values")

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.values: list[dict[int, Value]] = []

    def add(self, number: int, values: dict[int, Value]) -> None:
        self.numbers.append(number)
        self.values.append(values)

    def add_rows(self, rows: list[Row]) -> None:
        for r in rows:
            self.add(r.number, r.values)


class Row(NamedTuple):
    number: int                      # the Excel row number (1-based)
    values: dict[int, Value]         # 1-based column index -> value; only requested columns, only non-empty cells


@dataclass(frozen=True)
class Table:
    worksheet: str                   # the master worksheet's name
    header_row: int                  # Excel row number of the header row
    headers: dict[int, str]          # 1-based column index -> header text as written
    columns: dict[str, int]          # normalize_header(text) -> column index (first occurrence wins)
    rows: list[Row] = field(default_factory=list)  # data rows that hold at least one value, in sheet order


def _parse_cells(body: bytes, sx: Sx, sst: SharedStrings,
                 wanted: set[int] | None) -> tuple[dict[int, Value], bool]:
    """Every cell of one row body (handles implied positions); returns (values, row holds a value)."""
    out: dict[int, Value] = {}
    col = 0
    any_value = False
    for m in sx.cell_re.finditer(body):
        attrs = m.group(1) or b""
        ref = sx.cell_ref(attrs)
        if ref is None:
            col += 1
        else:
            col = col_index(ref[0])
            if col > MAX_COL or int(ref[1]) > MAX_ROW:
                raise _OutOfSheet(f"a cell {(ref[0] + ref[1]).decode()} past column XFD or row {MAX_ROW:,}")
        v = sx.cell_value(attrs, m.group(2), sst)
        if v is None:
            continue
        any_value = True
        if wanted is None or col in wanted:
            out[col] = v
    return out, any_value


def read_table(path: str | os.PathLike[str], worksheet: str | None = None,
               columns: list[str] | None = None,
               sink: Sink | None = None, prescan: bool = False) -> Table:
    """Read the master worksheet's header and data rows, streaming its XML.

    Args:
        path: the workbook.
        worksheet: the worksheet's name; None or "" means the first worksheet.
        columns: normalized header names whose values to load; None loads every column.
        sink: called with each chunk's data rows, as their numbers and their values (and the
            header's column map), as they are read, instead of keeping them in ``Table.rows``
            (which stays empty): the caller keeps what it needs in its own form, and the rows of
            a large sheet never exist all at once.
        prescan: make, in the same pass, the first pass of an append to this file, and start
            its XML check in a child (:class:`.edit.Prescan`): an append or check right after,
            on the same file, starts from them.

    Returns:
        A Table; ``header_row`` is 0 (and ``headers``/``columns`` empty) when none of rows
        1–10 holds a ``Strategy`` cell: the caller decides to refuse.

    Raises:
        SheetDamaged: the file is not a workbook this package can read (see the package docstring).
    """
    with Package(path) as pkg:
        info = pkg.sheet(worksheet)
        sst = load_shared_strings(pkg)
        seg = Segments()
        pre = Prescan(pkg, info.part, seg) if prescan else None
        header_row = 0
        headers: dict[int, str] = {}
        colmap: dict[str, int] = {}
        decided = False
        wanted: set[int] | None = None
        fast: re.Pattern[bytes] | None = None
        early: list[Row] = []          # rows 1-10 above the header (or of a sheet without one)
        out = _Rows()
        last_r = 0
        try:
            for chunk in iter_sheet(pkg, info.part, False, seg):
                sx = seg.sx
                assert sx is not None
                if pre is not None:
                    pre.feed(chunk)
                if not decided:
                    pos = 0
                    for r, _s0, s1, e in row_spans(chunk, sx):
                        r = _check_row(r if r is not None else last_r + 1)
                        if r > HEADER_SCAN_ROWS:
                            decided = True
                            break
                        last_r, pos = r, e
                        vals, _ = _parse_cells(chunk[s1:e], sx, sst, None)
                        if any(isinstance(v, str) and normalize_header(v) == "strategy" for v in vals.values()):
                            header_row = r
                            headers = {c: str(v).strip() for c, v in sorted(vals.items())}
                            for c, text in headers.items():
                                colmap.setdefault(normalize_header(text), c)
                            decided = True
                            break
                        if vals:
                            early.append(Row(r, vals))
                    if not decided:
                        continue
                    wanted, fast = _wanted(columns, colmap, sx)
                    if not header_row:
                        out.add_rows(_only(early, wanted))
                    chunk = chunk[pos:]
                last_r = _read_chunk(chunk, sx, sst, wanted, fast, out, last_r)
                if sink is not None and out.numbers:
                    sink(out.numbers, out.values, colmap)
                    out = _Rows()
        except _OutOfSheet as e:
            raise damaged(pkg.path, f"{info.part} has {e}",
                          "Open and repair the workbook in Excel, or restore it from a backup.") from None
        except BaseException:
            if pre is not None:
                pre.drop()
            raise
        if pre is not None:
            pre.finish()
        if not decided:
            wanted, _ = _wanted(columns, colmap, None)
            out.add_rows(_only(early, wanted))
        if sink is not None and out.numbers:
            sink(out.numbers, out.values, colmap)
            out = _Rows()
        return Table(info.name, header_row, headers, colmap, list(map(Row, out.numbers, out.values)))


def _wanted(columns: list[str] | None, colmap: dict[str, int],
            sx: Sx | None) -> tuple[set[int] | None, re.Pattern[bytes] | None]:
    """The column indexes asked for, and a regex that finds only their cells."""
    if columns is None:
        wanted = None
        letters = rb"[A-Z]{1,3}"
    else:
        wanted = {colmap[n] for n in (normalize_header(c) for c in columns) if n in colmap}
        letters = b"|".join(col_letters(c).encode() for c in sorted(wanted)) or b"(?!)"
    if sx is None:
        return wanted, None
    p = re.escape(sx.prefix)
    return wanted, re.compile(
        rb"<" + p + rb'c r="(' + letters + rb')(\d+)"([^>]*?)(?:/>|><' + p + rb"v>([^<]*)</" + p + rb"v></" + p
        + rb"c>|><" + p + rb"is><" + p + rb't(?: xml:space="preserve")?>([^<]*)</' + p + rb"t></" + p + rb"is></"
        + p + rb"c>|>(.*?)</" + p + rb"c>)", re.S)


def _only(rows: list[Row], wanted: set[int] | None) -> list[Row]:
    if wanted is None:
        return rows
    return [Row(r.number, {c: v for c, v in r.values.items() if c in wanted}) for r in rows]


_COL_INDEX: dict[bytes, int] = {}


def _col_of(letters: bytes) -> int:
    c = _COL_INDEX.get(letters)
    if c is None:
        c = col_index(letters)
        if c > MAX_COL:
            raise _OutOfSheet(f"a cell in column {letters.decode()}, past Excel's last column XFD")
        _COL_INDEX[letters] = c
    return c


def _holds_value(chunk: bytes, start: int, end: int, sx: Sx, sst: SharedStrings, value_re: re.Pattern[bytes]) -> bool:
    """Whether the row at ``chunk[start:end]`` holds a value in any column (a row with none is not data).

    Decided by the cell of the first ``<v>``/``<t>`` with text, which nearly always holds a value
    (a number, a non-empty string); otherwise every cell of the row is read.  Work stays within
    the row, so reading is linear in the part whatever the rows hold.
    """
    m = value_re.search(chunk, start, end)
    if m is None:
        return False
    c = chunk.rfind(sx.cell_r, start, m.start())
    if c >= 0:
        cm = sx.cell_re.match(chunk, c, end)
        if cm is not None and cm.end() > m.start():
            attrs = cm.group(1) or b""
            if chunk[m.start() + len(sx.prefix) + 1] == 0x74 and b'"inlineStr"' in attrs:
                return True                 # an inline string's non-empty <t>: its text is the value
            if sx.cell_value(attrs, cm.group(2), sst) is not None:
                return True
    return _parse_cells(chunk[start:end], sx, sst, set())[1]


def _read_chunk(chunk: bytes, sx: Sx, sst: SharedStrings, wanted: set[int] | None,
                fast: re.Pattern[bytes] | None, out: _Rows, last_r: int) -> int:
    """Append the rows of one chunk that hold a value; returns the last row number seen.

    The fast path needs every row and cell to carry its ``r`` first, as Excel, LibreOffice,
    openpyxl and XlsxWriter write them; anything else is parsed cell by cell.
    """
    if fast is not None and sx.r_first(chunk):
        s0 = chunk.rfind(sx.row_r)          # the chunk's last row (rows ascend: the scan of a write checks)
        if s0 >= 0 and (m := sx.row_num_re.match(chunk, s0)):
            _check_row(int(m.group(1)))
        by_row: dict[bytes, dict[int, Value]] = {}
        cell_value = sx.cell_value
        v_open, v_close = sx.v_open, sx.v_close
        strings = sst.strings
        col_get = _COL_INDEX.get
        cur: bytes = b""
        d: dict[int, Value] = {}
        v: Value | None
        for letters, num, attrs, vtext, itext, inner in fast.findall(chunk):
            if vtext:
                if not attrs:
                    try:
                        v = int(vtext)
                    except ValueError:
                        v = parse_number(vtext)
                elif b't="s"' in attrs:
                    try:
                        v = strings[int(vtext)]
                    except (IndexError, ValueError):
                        v = None
                    if v is None:
                        v = sst.get(int(vtext)) if vtext.isdigit() else None
                    if not v:
                        continue
                elif b"t=" not in attrs or b't="n"' in attrs:
                    v = parse_number(vtext)
                else:
                    v = cell_value(attrs, v_open + vtext + v_close, sst)
            elif itext:
                if b"&" in itext or b"_x" in itext or b"\r" in itext:
                    v = xml_text(itext)
                else:
                    v = itext.decode("utf-8")
            elif inner:
                v = cell_value(attrs, inner, sst)
            else:
                continue
            if v is None:
                continue
            if num != cur:
                cur = num
                d = by_row.get(num) or by_row.setdefault(num, {})
            d[col_get(letters) or _col_of(letters)] = v
        if by_row and max(map(len, by_row)) > 6:
            for nb in by_row:
                _check_row(int(nb))
        if by_row and len(by_row) == chunk.count(sx.row_tag):      # every row holds a wanted value
            out.numbers.extend(map(int, by_row))
            out.values.extend(by_row.values())
            return int(next(reversed(by_row)))
        # Some rows hold no wanted value: walk the rows in order, each body cut between its
        # start and the next row's (one pass over the chunk, never a search from its start).
        value_re = sx.value_re
        starts = [(m.start(), m.group(1)) for m in sx.row_num_re.finditer(chunk)]
        starts.append((len(chunk), b""))
        for i in range(len(starts) - 1):
            start, nb = starts[i]
            d = by_row.get(nb)  # type: ignore[assignment]
            if d is not None:
                out.add(int(nb), d)
            elif _holds_value(chunk, start, starts[i + 1][0], sx, sst, value_re):
                out.add(int(nb), {})
            last_r = _check_row(int(nb))
        return last_r
    for r, _s0, s1, e in row_spans(chunk, sx):
        r = _check_row(r if r is not None else last_r + 1)
        last_r = r
        if e == s1:
            continue
        vals, any_value = _parse_cells(chunk[s1:e], sx, sst, wanted)
        if any_value:
            out.add(r, vals)
    return last_r
