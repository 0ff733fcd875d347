"""Appending rows after the last row that holds content (see the package docstring, *Appending*)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from journal.errors import Refused

from .constants import MAX_COL, MAX_ROW
from .edit import Trusted, Validator, editing, opened, remember_scan, write_workbook
from .package import (
    FLUSH,
    Copied,
    Flush,
    Package,
    Replacement,
    SheetInfo,
    Written,
    damaged,
    sheet_tables,
    table_element,
)
from .ranges import Range, col_index, col_letters
from .scan import Scan, Sx, open_sheetdata, reread, row_spans
from .splice import Layout, Pieces, copy_rows, layout_of, stamp_of, verify
from .text import Value, cell_xml, encode_rows, get_attr, set_attr, tag_re


def _grow(text: str, contains_row: int, cols: tuple[int, int], new_last: int) -> str | None:
    """A range that holds ``contains_row`` and shares a column with ``cols``, grown down to ``new_last``."""
    try:
        rg = Range.parse(text)
    except ValueError:
        return None
    if not (rg.r1 <= contains_row <= rg.r2) or rg.c2 < cols[0] or rg.c1 > cols[1] or rg.r2 >= new_last:
        return None
    if rg.r2 == MAX_ROW:
        return None
    rg.r2 = new_last
    return str(rg)


def _merge_row(row_xml: bytes, number: int, cells: list[tuple[int, bytes, str]], sx: Sx,
               pkg: Package) -> bytes:
    """Put new cells into an empty (formatted) row element, keeping its attributes and cell styles."""
    p = sx.prefix
    m = sx.row_re.match(row_xml)
    if not m:
        raise damaged(pkg.path, f"row {number} cannot be parsed")
    attrs = m.group(1) or b""
    body = b"" if m.group(2) else row_xml[m.end():len(row_xml) - len(sx.row_end)]
    existing: dict[int, bytes] = {}
    for cm in sx.cell_re.finditer(body):
        ref = sx.cell_ref(cm.group(1))
        if ref is None:
            raise damaged(pkg.path, f"row {number} has a cell without an r attribute")
        col = col_index(ref[0])
        if col > MAX_COL:
            raise damaged(pkg.path, f"row {number} has a cell {ref[0].decode()}{ref[1].decode()} past the last "
                          f"column XFD", "Open and re-save the workbook in Excel.")
        existing[col] = cm.group(0)
    if sx.cell_re.sub(b"", body).strip():
        raise damaged(pkg.path, f"row {number} holds something other than cells, which sop does not edit")
    out: dict[int, bytes] = dict(existing)
    for col, t, payload in cells:
        style = None
        old = existing.get(col)
        if old is not None:
            sm = sx.cell_s_re.search(old[:old.find(b">") + 1])
            style = sm.group(1) if sm else None
        out[col] = cell_xml(p, f"{col_letters(col)}{number}", t, payload, style)
    spans = get_attr(attrs, b"spans")
    if spans and cells and re.fullmatch(r"\d+:\d+", spans):
        a, b = (int(x) for x in spans.split(":"))
        attrs = set_attr(attrs, b"spans", f"{min(a, cells[0][0])}:{max(b, cells[-1][0])}")
    return b"<" + p + b"row" + attrs + b">" + b"".join(out[c] for c in sorted(out)) + b"</" + p + b"row>"


def _new_row_xml(p: bytes, number: int, cells: list[tuple[int, bytes, str]]) -> bytes:
    return (b"<" + p + b'row r="' + str(number).encode() + b'">'
            + b"".join(cell_xml(p, f"{col_letters(c)}{number}", t, v, None) for c, t, v in cells)
            + b"</" + p + b"row>")


def _append_rest(rest: bytes, first: int, encoded: list[list[tuple[int, bytes, str]]], sx: Sx,
                 pkg: Package) -> bytes:
    """The sheetData body after the last content row: empty rows merged with the new ones."""
    existing: list[tuple[int, bytes]] = []
    pos = 0
    for r, s0, _s1, e in row_spans(rest, sx):
        if rest[pos:s0].strip():
            raise damaged(pkg.path, "the sheet data holds something other than rows, which sop does not edit")
        existing.append((r or 0, rest[s0:e]))
        pos = e
    if rest[pos:].strip():
        raise damaged(pkg.path, "the sheet data holds something other than rows, which sop does not edit")
    out: list[bytes] = []
    new = {first + i: cells for i, cells in enumerate(encoded)}
    pending = sorted(new)
    for r, xml in existing:
        while pending and pending[0] < r:
            n = pending.pop(0)
            out.append(_new_row_xml(sx.prefix, n, new[n]))
        if pending and pending[0] == r:
            pending.pop(0)
            out.append(_merge_row(xml, r, new[r], sx, pkg))
        else:
            out.append(xml)
    for n in pending:
        out.append(_new_row_xml(sx.prefix, n, new[n]))
    return b"".join(out)


def _grow_dimension(head: bytes, sx: Sx, last_row: int, cols: tuple[int, int]) -> bytes:
    m = tag_re(sx.prefix, b"dimension").search(head)
    if not m:
        return head
    ref = get_attr(m.group(0), b"ref")
    try:
        rg = Range.parse(ref or "")
    except ValueError:
        return head
    grown = Range(min(rg.c1, cols[0]), rg.r1, max(rg.c2, cols[1]), max(rg.r2, last_row))
    if str(grown) == ref:
        return head
    return head[:m.start()] + set_attr(m.group(0), b"ref", str(grown)) + head[m.end():]


def _grow_ranges_in(xml: bytes, tags: re.Pattern[bytes], contains_row: int, cols: tuple[int, int],
                    new_last: int) -> bytes:
    def fix(m: re.Match[bytes]) -> bytes:
        tag = m.group(0)
        ref = get_attr(tag, b"ref")
        grown = _grow(ref, contains_row, cols, new_last) if ref else None
        return set_attr(tag, b"ref", grown) if grown else tag
    return tags.sub(fix, xml)


@dataclass
class _Plan:
    """What an append writes, worked out (and every refusal raised) before anything is written."""

    numbers: list[int]
    head: bytes
    rest: bytes                 # the sheetData body after the last content row, new rows merged in
    tail: bytes
    replace: dict[str, Replacement]


def _plan(pkg: Package, info: SheetInfo, scan: Scan, encoded: list[list[tuple[int, bytes, str]]]) -> _Plan:
    """Where the new rows go and every part that changes; raises every refusal of an append."""
    sx = scan.sx
    first = _clear_of_merges(scan.seg.tail, sx, scan.last_content_row + 1, len(encoded))
    numbers = list(range(first, first + len(encoded)))
    if numbers[-1] > MAX_ROW:
        last = scan.last_content_row
        raise Refused(f"the Master Sheet is full: {len(encoded)} new row{'s' if len(encoded) > 1 else ''} "
                      f"after row {last:,} would end at row {numbers[-1]:,}, past Excel's last row {MAX_ROW:,}",
                      detail="Start a new Master Sheet (set [sheet] path in .sop/config.toml), or remove "
                             "rows from this one.")
    used = [c for cells in encoded for c, _, _ in cells]
    cols = (min(used), max(used)) if used else (1, 1)
    head, tail = open_sheetdata(scan.seg, sx)
    head = _grow_dimension(head, sx, numbers[-1], cols)
    anchor = scan.last_content_row or first
    tail = _grow_ranges_in(tail, tag_re(sx.prefix, b"autoFilter"), anchor, cols, numbers[-1])
    replace: dict[str, Replacement] = {}
    for tpart in sheet_tables(pkg, info.part):
        txml = pkg.read(tpart)
        new = _grow_table(pkg, tpart, txml, anchor, cols, numbers[-1])
        if new != txml:
            replace[tpart] = new
    assert scan.rest is not None            # scanned with keep_rest
    rest = _append_rest(b"".join(scan.rest), first, encoded, sx, pkg)
    return _Plan(numbers, head, rest, tail, replace)


def _last_new_end(rest: bytes, last: int, sx: Sx) -> int:
    """Where, in the merged sheetData body after the old last content row, the last new row ends."""
    for r, _s0, _s1, e in row_spans(rest, sx):
        if r == last:
            return e
    raise AssertionError(f"row {last} was just written")


def append_rows(path: str | os.PathLike[str], worksheet: str | None,
                rows: list[dict[int, Value]],
                before_replace: Callable[[list[int], os.stat_result, Layout | None], None] | None = None,
                *, layout: Layout | None = None, checked: Sequence[int] | None = None) -> list[int]:
    """Append rows after the last row holding content; returns their Excel row numbers.

    The master sheet is written in three deflate pieces (see :mod:`.splice`), so that the next
    append can copy the rows compressed: with the ``layout`` this function reported for the
    very file it is given, only the head, the new rows and the tail are deflated, and nothing
    is inflated but the head and the tail.  Without one (or with one that does not describe the
    file) the part is read and rewritten whole, and laid out for the next append.

    Args:
        path: the workbook.
        worksheet: the master worksheet's name; None or "" means the first worksheet.
        rows: each a {1-based column index: value}; None values are skipped.
        before_replace: a plain hook, called with the new rows' numbers, the new file's stat
            and its :class:`Layout` (None if the sheet could not be laid out) once the new file
            is complete and checked, just before it replaces the old one (see
            :func:`journal.fsops.atomic_write`): a cache keyed on that stat is in place the
            moment the file is.  If it raises, the old file stays.
        layout: what the hook reported for the file now at ``path``, if anything; verified
            against the file before it is trusted.
        checked: the stat stamp (size, mtime_ns, inode, device) of a version of the file whose
            checks passed (:func:`check_append` or this function wrote it): when the file opened
            is that version, the whole-part XML check is skipped.

    Raises:
        Refused: a value cannot be stored (type, illegal character, over 32,767 characters),
            or the sheet has no room for the rows (its last row is Excel's last row).
        SheetDamaged: the workbook cannot be edited safely; it is left untouched.
        PermissionError: the file cannot be replaced (locked); it is left untouched.
    """
    encoded = encode_rows(rows)
    if not rows:
        return []
    with opened(path, worksheet) as (pkg, info):
        pieces = verify(pkg, info.part, layout) if layout is not None else None
        if pieces is not None:
            return _splice(path, pkg, info, pieces, encoded, before_replace)
        with editing(path, worksheet, keep_rest=True, checked=checked, opened_pkg=(pkg, info)) as (
                pkg, info, validator, scan):
            plan = _plan(pkg, info, scan, encoded)
            split = _last_new_end(plan.rest, plan.numbers[-1], scan.sx)

            def body() -> Iterator[bytes | Flush | Copied]:
                yield plan.head
                yield FLUSH
                offset = 0
                for chunk in reread(pkg, info.part, scan):
                    n = len(chunk)
                    if offset + n <= scan.last_content_end:
                        yield chunk
                    elif offset < scan.last_content_end:
                        yield chunk[:scan.last_content_end - offset]
                    offset += n
                yield plan.rest[:split]
                yield FLUSH
                yield plan.rest[split:]
                yield plan.tail

            return _write(path, pkg, info, validator, plan, body, before_replace)


def _splice(path: str | os.PathLike[str], pkg: Package, info: SheetInfo, pieces: Pieces,
            encoded: list[list[tuple[int, bytes, str]]],
            before_replace: Callable[[list[int], os.stat_result, Layout | None], None] | None) -> list[int]:
    """The append on a laid-out sheet: copy the rows piece, deflate a new head, the new rows and the tail."""
    scan = pieces.scan
    plan = _plan(pkg, info, scan, encoded)
    split = _last_new_end(plan.rest, plan.numbers[-1], scan.sx)
    rows = copy_rows(pkg, pieces)

    def body() -> Iterator[bytes | Flush | Copied]:
        yield plan.head
        yield FLUSH
        yield rows
        yield plan.rest[:split]
        yield FLUSH
        yield plan.rest[split:]
        yield plan.tail

    return _write(path, pkg, info, Trusted(pkg, info.part), plan, body, before_replace)


def _write(path: str | os.PathLike[str], pkg: Package, info: SheetInfo, validator: Validator, plan: _Plan,
           body: Callable[[], Iterator[bytes | Flush | Copied]],
           before_replace: Callable[[list[int], os.stat_result, Layout | None], None] | None) -> list[int]:
    replace = dict(plan.replace)
    replace[info.part] = body
    numbers = plan.numbers

    def hook(st: os.stat_result, written: dict[str, Written]) -> None:
        if before_replace is not None:
            w = written.get(info.part)
            lay = None if w is None else layout_of(stamp_of(st), info.part, w, numbers[-1])
            before_replace(numbers, st, lay)
    write_workbook(path, pkg, validator, replace, set(), hook)
    return numbers


def check_append(path: str | os.PathLike[str], worksheet: str | None, count: int = 1,
                 columns: Iterable[int] | None = None) -> None:
    """Refuse, as :func:`append_rows` would, an append of ``count`` rows; writes nothing.

    Runs the very checks of an append up to the point where it would start writing: the
    workbook and the worksheet part (zip, Strict, DOCTYPE, well-formed XML, comments…), the
    shape of its rows (rows out of order or past the last row, rows or cells without ``r``,
    namespace declarations, other content among the rows), room for ``count`` rows below the
    last content row and any merged range there, and the tables that would have to grow.
    ``columns`` are the 1-based columns the rows would fill (a table grows only when it
    shares one); None means column A.  Values are not checked: :func:`encode_rows` does that.

    Raises:
        Refused: the sheet has no room for ``count`` rows (or ``count``/``columns`` are not valid).
        SheetDamaged: append_rows would refuse the workbook, with the same message.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise Refused(f"{count!r} is not a number of rows to append")
    cols = sorted(set(columns)) if columns else [1]
    encoded = encode_rows([dict.fromkeys(cols, 0)]) * min(count, MAX_ROW + 1)
    with editing(path, worksheet, keep_rest=True) as (pkg, info, validator, scan):
        _plan(pkg, info, scan, encoded)
        validator.join()
        remember_scan(pkg, info.part, scan)


def _clear_of_merges(tail: bytes, sx: Sx, first: int, count: int) -> int:
    """The first row from ``first`` where ``count`` new rows overlap no merged range (they would hide)."""
    spans = []
    for m in tag_re(sx.prefix, b"mergeCell").finditer(tail):
        ref = get_attr(m.group(0), b"ref")
        try:
            rg = Range.parse(ref or "")
        except ValueError:
            continue
        spans.append((rg.r1, rg.r2))
    moved = True
    while moved:
        moved = False
        for r1, r2 in spans:
            if r1 <= first + count - 1 and r2 >= first:
                first = r2 + 1
                moved = True
    return first


def _grow_table(pkg: Package, part: str, xml: bytes, anchor: int, cols: tuple[int, int], new_last: int) -> bytes:
    """A table part whose range grows to ``new_last`` when it holds the last content row."""
    m = table_element(pkg, part, xml)
    prefix = m.group(1) or b""
    tag = m.group(0)
    ref = get_attr(tag, b"ref")
    grown = _grow(ref, anchor, cols, new_last) if ref else None
    if not grown:
        return xml
    totals = get_attr(tag, b"totalsRowCount")
    if totals and totals != "0":
        raise damaged(pkg.path, f"table {get_attr(tag, b'name')!r} has a totals row; sop cannot append below it",
                      "Turn off the table's Total Row in Excel, or move it.")
    new_tag = set_attr(tag, b"ref", grown)
    xml = xml[:m.start()] + new_tag + xml[m.end():]
    af = tag_re(prefix, b"autoFilter")
    return af.sub(lambda a: set_attr(a.group(0), b"ref", grown) if get_attr(a.group(0), b"ref") == ref
                  else a.group(0), xml, count=1)
