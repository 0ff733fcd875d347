"""Sheet shapes the writer must accept (r anywhere among the attributes, ``<sheetData />``), refusals only
when something would really move, and check_append: the writer's refusals before the commit decision."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures_xlsx import (
    assert_only_changed,
    calamine_rows,
    data_rows,
    decorated_book,
    members,
    openpyxl_book,
    openpyxl_values,
    patch_member,
    xlsxwriter_book,
)

from journal import porcelain, sheet, xlsx
from journal.errors import Refused, SheetDamaged
from journal.workspace import open_workspace
from journal.xlsx import edit

SHEET = "xl/worksheets/sheet1.xml"
X14AC = b"http://schemas.microsoft.com/office/spreadsheetml/2009/9/ac"

# ------------------------------------------------------------------------------------ r not first


def r_last(xml: bytes) -> bytes:
    """Every row and cell with its r moved to the end of its attributes, quotes and spacing varied,
    and a namespace-prefixed attribute first on every row (LibreOffice <= 4.1, old Google Docs)."""
    i = 0

    def move(m: re.Match[bytes]) -> bytes:
        nonlocal i
        i += 1
        tag, r, rest, close = m.group(1), m.group(2), m.group(3), m.group(4)
        extra = b' x14ac:dyDescent="0.25"' if tag == b"row" and b"dyDescent" not in rest else b""
        spelled = [b' r="%s"' % r, b" r='%s'" % r, b"\n  r = '%s' " % r, b'\tr="%s"' % r][i % 4]
        return b"<" + tag + extra + rest + spelled + close + b">"
    xml = re.sub(rb'<(row|c) r="([^"]*)"([^>]*?)(/?)>', move, xml)
    if b"xmlns:x14ac" not in xml:
        xml = xml.replace(b"<worksheet ", b'<worksheet xmlns:x14ac="' + X14AC + b'" ', 1)
    return xml


def reordered(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    patch_member(dst, SHEET, r_last)
    raw = members(dst)[SHEET]
    assert not re.search(rb'<row r="', raw)              # every row has r last
    assert not re.search(rb'<c r="[^"]*" ', raw)          # and every cell with other attributes
    return dst


BUILDERS: dict[str, Callable[[Path, list[list[Any]]], Path]] = {
    "xlsxwriter": lambda p, rows: xlsxwriter_book(p, rows=rows),
    "openpyxl": lambda p, rows: openpyxl_book(p, rows=rows),
}


def table(path: Path) -> list[tuple[int, dict[int, Any]]]:
    return [(r.number, r.values) for r in xlsx.read_table(path).rows]


@pytest.mark.parametrize("builder", BUILDERS.values(), ids=BUILDERS.keys())
def test_r_not_first_reads_appends_and_removes_like_the_usual_order(tmp_path: Path, builder: Any) -> None:
    usual = builder(tmp_path / "usual.xlsx", data_rows(8))
    odd = reordered(usual, tmp_path / "odd.xlsx")
    assert table(odd) == table(usual)
    before = members(odd)

    new = [{1: "strat_new", 2: "run-new", 5: 1.5, 6: 7}, {1: "strat_new2", 2: "run-new2"}]
    assert xlsx.append_rows(odd, None, new) == xlsx.append_rows(usual, None, new) == [10, 11]
    assert_only_changed(before, members(odd), {SHEET})
    assert openpyxl_values(odd) == openpyxl_values(usual)
    assert calamine_rows(odd) == calamine_rows(usual)
    assert table(odd) == table(usual)

    xlsx.remove_rows(odd, None, [3, 5, 10])
    xlsx.remove_rows(usual, None, [3, 5, 10])
    got = openpyxl_values(odd)
    assert got == openpyxl_values(usual)
    assert calamine_rows(odd) == calamine_rows(usual)
    assert got["A2"] == "strat_001" and got["A3"] == "strat_003" and got["A8"] == "strat_new2"
    assert "A9" not in got

    # and again after the removal, where the moved rows were renumbered in place
    assert xlsx.append_rows(odd, None, [{1: "last"}]) == [9]
    assert openpyxl_values(odd)["A9"] == "last"
    assert calamine_rows(odd)[8][0] == "last"


def test_r_not_first_in_a_decorated_sheet(tmp_path: Path) -> None:
    """Formulas, merges, a table, links: removal below and above them as with r first."""
    usual = decorated_book(tmp_path / "usual.xlsx", n=8)
    odd = reordered(usual, tmp_path / "odd.xlsx")
    before = members(odd)
    for path in (usual, odd):
        xlsx.remove_rows(path, None, [4, 6])
        xlsx.append_rows(path, None, [{1: "strat_x", 2: "run-x", 6: 5}])
    assert openpyxl_values(odd) == openpyxl_values(usual)
    assert calamine_rows(odd) == calamine_rows(usual)
    assert_only_changed(before, members(odd), {SHEET, "xl/tables/table1.xml", "[Content_Types].xml",
                                               "xl/_rels/workbook.xml.rels"})


def test_r_not_first_merges_into_empty_formatted_rows(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Master")
    ws.write_row(0, 0, ["Strategy", "RunID"])
    ws.write_row(1, 0, ["a", "b"])
    fmt = wb.add_format({"bg_color": "#FFFF00"})
    ws.set_row(2, 20, fmt)
    ws.write_blank(2, 1, None, fmt)          # an empty styled cell in row 3, where the new row lands
    wb.close()
    patch_member(path, SHEET, r_last)
    assert xlsx.append_rows(path, None, [{1: "x", 2: "y"}, {1: "z"}]) == [3, 4]
    raw = members(path)[SHEET].decode()
    row3 = re.search(r"<row[^>]*\br\s*=\s*['\"]3['\"][^>]*>.*?</row>", raw, re.S)
    assert row3 and "x14ac:dyDescent" in row3.group(0) and 'ht="20' in row3.group(0)
    assert raw.count("r='3'") + raw.count('r="3"') + raw.count("r = '3'") == 1     # one row 3
    assert openpyxl_values(path) == {"A1": "Strategy", "B1": "RunID", "A2": "a", "B2": "b",
                                     "A3": "x", "B3": "y", "A4": "z"}
    import openpyxl

    assert openpyxl.load_workbook(path)["Master"]["B3"].fill.fgColor.rgb.endswith("FFFF00")


@pytest.mark.parametrize("op", ["append", "remove"])
def test_a_row_or_cell_truly_without_r_is_still_refused(tmp_path: Path, op: str) -> None:
    path = reordered(xlsxwriter_book(tmp_path / "u.xlsx", rows=data_rows(3)), tmp_path / "m.xlsx")
    patch_member(path, SHEET, lambda b: re.sub(rb"""\s+r\s*=\s*['"]B3['"]\s*""", b" ", b, count=1))
    raw = path.read_bytes()
    with pytest.raises(SheetDamaged, match="without an r attribute"):
        if op == "append":
            xlsx.append_rows(path, None, [{1: "x"}])
        else:
            xlsx.remove_rows(path, None, [2])
    with pytest.raises(SheetDamaged, match="without an r attribute"):
        xlsx.check_append(path, None, 1)
    assert path.read_bytes() == raw


# ------------------------------------------------------------------------------------ <sheetData />


@pytest.mark.parametrize("spelling", [b"<sheetData />", b"<sheetData\n\t/>", b"<sheetData/>"])
def test_empty_sheet_data_with_a_space(tmp_path: Path, spelling: bytes) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    wb.add_worksheet("Master")
    wb.close()
    patch_member(path, SHEET, lambda b: b.replace(b"<sheetData/>", spelling))
    assert spelling in members(path)[SHEET]
    t = xlsx.read_table(path)
    assert (t.header_row, t.rows) == (0, [])
    xlsx.remove_rows(path, None, [2])                     # nothing to move: accepted, nothing lost
    xlsx.check_append(path, None, 2)
    assert xlsx.append_rows(path, None, [{1: "Strategy", 2: "RunID"}, {1: "a", 2: "b"}]) == [1, 2]
    assert openpyxl_values(path) == {"A1": "Strategy", "B1": "RunID", "A2": "a", "B2": "b"}
    assert calamine_rows(path) == [["Strategy", "RunID"], ["a", "b"]]
    xlsx.remove_rows(path, None, [1])
    assert openpyxl_values(path) == {"A1": "a", "B1": "b"}


# ------------------------------------------------------------------------------------ cells outside the grid


def workspace_with(tmp_path: Path, patch: Callable[[bytes], bytes]) -> Path:
    root = tmp_path / "w"
    (root / "backtests").mkdir(parents=True)
    path = xlsxwriter_book(root / "backtests" / "Strategy_Master_Filter.xlsx", rows=data_rows(3))
    patch_member(path, SHEET, patch)
    return root


@pytest.mark.parametrize("patch, match", [
    (lambda b: b.replace(b'r="A1"', b'r="XFE1"'), "XFE1 past column XFD"),
    (lambda b: b.replace(b'r="B1"', b'r="ZZZ1"'), "ZZZ1 past column XFD"),
    (lambda b: b.replace(b'<row r="1" ', b'<row r="1048577" '), "row 1,048,577, past Excel's last row"),
    (lambda b: b.replace(b'r="B2"', b'r="B1048577"'), "row 1,048,577, past Excel's last row"),
], ids=["XFE1", "ZZZ1", "header-row-1048577", "cell-B1048577"])
def test_init_refuses_cells_outside_the_sheet(tmp_path: Path, patch: Any, match: str) -> None:
    root = workspace_with(tmp_path, patch)
    with pytest.raises(SheetDamaged, match=match) as e:
        porcelain.init(root)
    assert e.value.exit_code == 5


# ------------------------------------------------------------------------------------ removal refusals


def with_tail(path: Path, after_sheet_data: bytes = b"", before_end: bytes = b"") -> Path:
    def fix(b: bytes) -> bytes:
        if after_sheet_data:
            b = b.replace(b"</sheetData>", b"</sheetData>" + after_sheet_data, 1)
        if before_end:
            b = b.replace(b"</worksheet>", before_end + b"</worksheet>", 1)
        return b
    patch_member(path, SHEET, fix)
    return path


def consolidation(*refs: bytes) -> bytes:
    if not refs:
        return b"<dataConsolidate/>"
    return (b'<dataConsolidate function="sum"><dataRefs count="%d">' % len(refs) + b"".join(refs)
            + b"</dataRefs></dataConsolidate>")


QUIET = {
    "empty-consolidation": (consolidation(), b""),
    "consolidation-without-refs": (b'<dataConsolidate function="sum" topLabels="1"/>', b""),
    "consolidation-of-other-sheets": (consolidation(b'<dataRef ref="A1:B9" sheet="Other"/>'), b""),
    "consolidation-above": (consolidation(b'<dataRef ref="A1:B2" sheet="Master"/>'), b""),
    "consolidation-whole-columns": (consolidation(b'<dataRef ref="A:B" sheet="Master"/>'), b""),
    "consolidation-by-name": (consolidation(b'<dataRef name="Trades"/>'), b""),
    "empty-scenarios": (b"<scenarios/>", b""),
    "scenario-above": (b'<scenarios><scenario name="s" count="1"><inputCells r="B2" val="1"/></scenario>'
                       b"</scenarios>", b""),
    "smart-tag-above": (b"", b'<smartTags><cellSmartTags r="A1"><cellSmartTag type="0"/></cellSmartTags>'
                             b"</smartTags>"),
}
MOVING = {
    "consolidation-below": (consolidation(b'<dataRef ref="A1:B2" sheet="Other"/>',
                                          b'<dataRef ref="A2:B5" sheet="Master"/>'),
                            b"", "data consolidation on A2:B5"),
    "consolidation-no-sheet": (consolidation(b'<dataRef ref="C4"/>'), b"", "data consolidation on C4"),
    "scenario-below": (b'<scenarios><scenario name="s" count="1"><inputCells r="B4" val="1"/></scenario>'
                       b"</scenarios>", b"", "scenarios on B4"),
    "scenario-sqref": (b'<scenarios sqref="C3:C9"/>', b"", "scenarios on C3:C9"),
    "smart-tag-below": (b"", b'<smartTags><cellSmartTags r="A3"><cellSmartTag type="0"/></cellSmartTags>'
                             b"</smartTags>", "smart tags on A3"),
}


@pytest.mark.parametrize("name", QUIET)
def test_removal_accepted_when_nothing_there_would_move(tmp_path: Path, name: str) -> None:
    after, end = QUIET[name]
    path = with_tail(xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(4)), after, end)
    xlsx.remove_rows(path, None, [3])
    raw = members(path)[SHEET]
    assert (after or end) in raw                          # kept exactly
    assert [r[0] for r in calamine_rows(path)] == ["Strategy", "strat_001", "strat_003", "strat_004"]


@pytest.mark.parametrize("name", MOVING)
def test_removal_refused_when_a_reference_would_move(tmp_path: Path, name: str) -> None:
    after, end, match = MOVING[name]
    path = with_tail(xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(4)), after, end)
    raw = path.read_bytes()
    with pytest.raises(SheetDamaged, match=match + ", which sop cannot move when removing row 3"):
        xlsx.remove_rows(path, None, [3])
    assert path.read_bytes() == raw
    if name != "scenario-sqref":
        xlsx.remove_rows(path, None, [6])                  # below every reference: nothing moves, accepted


# ------------------------------------------------------------------------------------ check_append


def full_sheet(path: Path) -> Path:
    """Content in Excel's last row."""
    xlsxwriter_book(path, rows=data_rows(3))
    patch_member(path, SHEET, lambda b: re.sub(rb'r="([A-Z]*)4"', rb'r="\g<1>1048576"', b))
    return path


HOSTILE: dict[str, tuple[Callable[[Path], Path], type[Exception], str]] = {
    "rows-out-of-order": (lambda p: (xlsxwriter_book(p, rows=data_rows(3)), patch_member(
        p, SHEET, lambda b: b.replace(b'<row r="3" ', b'<row r="9" ')))[0], SheetDamaged, "out of order"),
    "cell-without-r": (lambda p: (xlsxwriter_book(p, rows=data_rows(3)), patch_member(
        p, SHEET, lambda b: b.replace(b'<c r="B3" ', b"<c ")))[0], SheetDamaged, "without an r attribute"),
    "row-past-the-last": (lambda p: (xlsxwriter_book(p, rows=data_rows(3)), patch_member(
        p, SHEET, lambda b: b.replace(b'<row r="4" ', b'<row r="1048577" ')))[0], SheetDamaged, "past the last row"),
    "sheet-full": (full_sheet, Refused, "the Master Sheet is full"),
    "malformed": (lambda p: (xlsxwriter_book(p, rows=data_rows(3)), patch_member(
        p, SHEET, lambda b: b.replace(b"</c></row>", b"</c></rwo>", 1)))[0], SheetDamaged, "not well-formed"),
    "comment": (lambda p: (xlsxwriter_book(p, rows=data_rows(3)), patch_member(
        p, SHEET, lambda b: b.replace(b"</row>", b"</row><!-- x -->", 1)))[0], SheetDamaged, "an XML comment"),
}


@pytest.mark.parametrize("child", [False, True], ids=["inline", "child"])
@pytest.mark.parametrize("name", HOSTILE)
def test_check_append_refuses_what_append_rows_refuses_with_the_same_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, child: bool) -> None:
    if child:       # the XML check in a child process, as for big sheets
        monkeypatch.setattr(edit, "VALIDATOR_MIN_BYTES", 0)
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
    else:
        monkeypatch.setattr(os, "cpu_count", lambda: 1)
    make, kind, match = HOSTILE[name]
    path = make(tmp_path / "m.xlsx")
    raw = path.read_bytes()
    with pytest.raises(kind, match=match) as by_append:
        xlsx.append_rows(path, None, [{1: "x"}])
    with pytest.raises(kind, match=match) as by_check:
        xlsx.check_append(path, None, 1)
    assert str(by_check.value) == str(by_append.value)
    assert by_check.value.exit_code == by_append.value.exit_code
    assert path.read_bytes() == raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.xlsx"]


def test_check_append_counts_the_rows(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(3))
    patch_member(path, SHEET, lambda b: re.sub(rb'r="([A-Z]*)4"', rb'r="\g<1>1048574"', b))
    raw = path.read_bytes()
    xlsx.check_append(path, None, 2)                       # rows 1048575-1048576: room
    with pytest.raises(Refused, match="is full") as e:
        xlsx.check_append(path, None, 3)
    with pytest.raises(Refused) as e2:
        xlsx.append_rows(path, None, [{1: "x"}] * 3)
    assert str(e.value) == str(e2.value)
    with pytest.raises(Refused):
        xlsx.check_append(path, None, 0)
    assert path.read_bytes() == raw
    assert xlsx.append_rows(path, None, [{1: "x"}] * 2) == [1048575, 1048576]


def test_check_append_table_totals_depends_on_the_columns(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Master")
    ws.add_table("C1:D4", {"total_row": True, "data": [["a", 1], ["b", 2]],
                           "columns": [{"header": "Strategy", "total_string": "Total"},
                                       {"header": "RunID", "total_function": "count"}]})
    wb.close()
    with pytest.raises(SheetDamaged, match="totals row") as e:
        xlsx.check_append(path, None, 1, [3, 4])
    with pytest.raises(SheetDamaged) as e2:
        xlsx.append_rows(path, None, [{3: "x", 4: "y"}])
    assert str(e.value) == str(e2.value)
    xlsx.check_append(path, None, 1, [1])                  # a row beside the table does not grow it


def test_check_append_accepts_r_not_first_and_sheets_it_can_write(tmp_path: Path) -> None:
    path = reordered(xlsxwriter_book(tmp_path / "u.xlsx", rows=data_rows(5)), tmp_path / "m.xlsx")
    raw = path.read_bytes()
    xlsx.check_append(path, None, 3, [1, 2, 3])
    assert path.read_bytes() == raw
    decorated = decorated_book(tmp_path / "d.xlsx")
    xlsx.check_append(decorated, None, 1, range(1, 8))
    xlsx.check_append(decorated, "Master", 1)


def test_sheet_check_writable(tmp_path: Path) -> None:
    root = tmp_path / "w"
    (root / "backtests").mkdir(parents=True)
    path = xlsxwriter_book(root / "backtests" / "Strategy_Master_Filter.xlsx", rows=data_rows(3))
    porcelain.init(root)
    ws = open_workspace(root)
    sheet.check_writable(ws)
    sheet.check_writable(ws, 2, rows=[{"Strategy": "s", "RunID": "r", "Sharpe": 1.0}])
    patch_member(path, SHEET, lambda b: b.replace(b'<row r="3" ', b'<row r="9" '))
    with pytest.raises(SheetDamaged, match="out of order"):
        sheet.check_writable(ws)
    full_sheet(path)
    with pytest.raises(Refused, match="is full"):
        sheet.check_writable(ws, view=sheet.read(ws))
