"""remove_rows: Excel's Delete Row on the master worksheet, and what moves with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures_xlsx import (
    add_calc_chain,
    assert_only_changed,
    calamine_rows,
    data_rows,
    decorated_book,
    members,
    openpyxl_values,
    patch_member,
    xlsxwriter_book,
)

from journal import xlsx
from journal.errors import Refused, SheetDamaged

SHEET = "xl/worksheets/sheet1.xml"


def strategies(path: Path) -> list[tuple[int, str]]:
    return [(r.number, r.values.get(1)) for r in xlsx.read_table(path, columns=["strategy"]).rows]


def test_remove_moves_rows_up(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(6))
    before = members(path)
    xlsx.remove_rows(path, None, [5, 3, 3])                       # unordered, repeated: rows 3 and 5
    assert_only_changed(before, members(path), {SHEET})
    assert strategies(path) == [(2, "strat_001"), (3, "strat_003"), (4, "strat_005"), (5, "strat_006")]
    xml = members(path)[SHEET].decode()
    assert '<dimension ref="A1:F5"/>' in xml
    assert re.findall(r'<row r="(\d+)"', xml) == ["1", "2", "3", "4", "5"]
    assert openpyxl_values(path)["A4"] == "strat_005"
    assert [r[0] for r in calamine_rows(path)] == ["Strategy", "strat_001", "strat_003", "strat_005", "strat_006"]


def test_remove_last_and_beyond(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(3))
    xlsx.remove_rows(path, None, [4, 100])
    assert strategies(path) == [(2, "strat_001"), (3, "strat_002")]
    assert xlsx.append_rows(path, None, [{1: "next"}]) == [4]


def test_remove_nothing_writes_nothing(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    raw = path.read_bytes()
    xlsx.remove_rows(path, None, [])
    assert path.read_bytes() == raw


@pytest.mark.parametrize("bad", [0, -1, 1_048_577, "3", 2.0, True])
def test_remove_refuses_bad_numbers(tmp_path: Path, bad: object) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    raw = path.read_bytes()
    with pytest.raises(Refused):
        xlsx.remove_rows(path, None, [bad])  # type: ignore[list-item]
    assert path.read_bytes() == raw


@pytest.mark.parametrize("with_table", [True, False], ids=["table", "autofilter"])
def test_remove_moves_every_range_in_the_sheet(tmp_path: Path, with_table: bool) -> None:
    path = decorated_book(tmp_path / "d.xlsx", with_table=with_table, n=6)   # data in rows 2..7
    before = members(path)
    xlsx.remove_rows(path, None, [3, 7])
    after = members(path)
    allowed = {SHEET, "xl/tables/table1.xml"} if with_table else {SHEET}
    assert assert_only_changed(before, after, allowed) == allowed
    xml = after[SHEET].decode()
    assert '<dimension ref="A1:I10"/>' in xml
    assert '<mergeCell ref="A9:C10"/>' in xml                        # was A11:C12, below both rows
    assert '<conditionalFormatting sqref="E2:E5">' in xml              # was E2:E7
    assert '<conditionalFormatting sqref="F2:F5">' in xml
    assert "<xm:sqref>F2:F5</xm:sqref>" in xml                         # the 2010 data bar's twin
    assert 'sqref="F2:F25"' in xml                                     # validation F2:F27
    links = re.findall(r'<hyperlink ref="([A-Z]+\d+)"', xml)
    assert links == ["I2", "I6"]                                       # I7 was removed, I8 moved up
    if with_table:
        table = after["xl/tables/table1.xml"].decode()
        assert 'ref="A1:G5"' in table and '<autoFilter ref="A1:G5"/>' in table
    else:
        assert '<autoFilter ref="A1:G5"/>' in xml
        assert "<f>F3*2</f>" in xml and "<f>F5*2</f>" in xml            # same-sheet formulas follow their row
    assert strategies(path) == [(2, "strat_001"), (3, "strat_003"), (4, "strat_004"), (5, "strat_005"),
                                (6, None), (9, "merged note below the data")]
    got = openpyxl_values(path)
    assert got["A9"] == "merged note below the data" and got["I6"] == "to summary"
    summary = openpyxl_values(path, "Summary")
    assert summary["A1"] == "=Master!F2*3"                             # other sheets are left as they are


def test_remove_drops_ranges_that_lose_all_rows(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Master")
    ws.write_row(0, 0, ["Strategy", "RunID"])
    for i in range(1, 8):
        ws.write_row(i, 0, [f"s{i}", f"r{i}"])
    ws.merge_range("C3:D3", "row 3 only")
    ws.merge_range("C5:C6", "rows 5-6")
    ws.merge_range("E5:F7", "rows 5-7")
    ws.conditional_format("B3:B3", {"type": "cell", "criteria": ">", "value": 0, "format": wb.add_format()})
    ws.data_validation("B3", {"validate": "length", "criteria": "<", "value": 9})
    ws.write_url("G3", "https://example.com/gone")
    wb.close()
    xlsx.remove_rows(path, None, [3, 5])
    xml = members(path)[SHEET].decode()
    merges = re.findall(r'<mergeCell ref="([^"]+)"/>', xml)
    assert merges == ["E4:F5"]                  # C3:D3 gone, C5:C6 -> C4 (one cell: no merge), E5:F7 -> E4:F5
    assert '<mergeCells count="1">' in xml
    assert "conditionalFormatting" not in xml and "dataValidation" not in xml and "hyperlink" not in xml
    assert strategies(path) == [(2, "s1"), (3, "s3"), (4, "s5"), (5, "s6"), (6, "s7")]


def test_remove_shifts_same_sheet_formulas(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Master")
    other = wb.add_worksheet("Other")
    ws.write_row(0, 0, ["Strategy", "Val", "F"])
    for i in range(1, 7):
        ws.write_row(i, 0, [f"s{i}", i])
    ws.write_formula("C1", "=SUM(B2:B7)", None, 21)
    ws.write_formula("C2", "=B4+Master!B6+'Master'!$B$7+Other!B6", None, 0)
    ws.write_formula("C7", "=B3&\"B3\"", None, 0)
    ws.write_formula("C8", "=SUM(B3:B3)+ROWS(3:3)+COUNT(B:B)", None, 0)
    other.write_formula("A1", "=Master!B6", None, 5)
    wb.close()
    before = members(path)
    xlsx.remove_rows(path, None, [3])
    after = members(path)
    assert after["xl/worksheets/sheet2.xml"] == before["xl/worksheets/sheet2.xml"]
    got = openpyxl_values(path)
    assert got["C1"] == "=SUM(B2:B6)"
    assert got["C2"] == "=B3+Master!B5+'Master'!$B$6+Other!B6"
    assert got["C6"] == "=#REF!&\"B3\""
    assert got["C7"] == "=SUM(#REF!)+ROWS(#REF!)+COUNT(B:B)"


SHARED = (b'<c r="C2"><f t="shared" ref="C2:C7" si="0">B2*2+$B$2</f><v>4</v></c>',
          *(f'<c r="C{r}"><f t="shared" si="0"/><v>0</v></c>'.encode() for r in range(3, 8)))


def shared_formula_book(path: Path) -> Path:
    """Rows 2..7 with C = B*2+$B$2 as one shared formula group, the way Excel fills a column down."""
    xlsxwriter_book(path, headers=["Strategy", "Val", "Calc"], rows=[[f"s{i}", i] for i in range(1, 7)])

    def add_formulas(xml: bytes) -> bytes:
        for r, cell in zip(range(2, 8), SHARED, strict=True):
            xml = re.sub(rb'(<row r="%d"[^>]*>.*?)(</row>)' % r, lambda m, c=cell: m.group(1) + c + m.group(2),
                         xml, count=1, flags=re.S)
        return xml
    patch_member(path, SHEET, add_formulas)
    return path


@pytest.mark.parametrize("remove, expect", [
    ([4], {"C2": "=B2*2+$B$2", "C3": "=B3*2+$B$2", "C4": "=B4*2+$B$2", "C6": "=B6*2+$B$2"}),
    ([2], {"C2": "=B2*2+#REF!", "C3": "=B3*2+#REF!", "C6": "=B6*2+#REF!"}),   # the master's row goes
])
def test_remove_expands_shared_formulas(tmp_path: Path, remove: list[int], expect: dict[str, str]) -> None:
    path = shared_formula_book(tmp_path / "m.xlsx")
    assert openpyxl_values(path)["C5"] == "=B5*2+$B$2"
    xlsx.remove_rows(path, None, remove)
    got = openpyxl_values(path)
    for ref, formula in expect.items():
        assert got[ref] == formula
    assert "C7" not in got
    assert 't="shared"' not in members(path)[SHEET].decode()


def test_remove_refuses_to_cut_an_array_formula(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(5))
    patch_member(path, SHEET, lambda b: b.replace(b'<c r="F3"><v>20</v></c>',
                                                  b'<c r="F3"><f t="array" ref="F3:F4">E3:E4*2</f><v>1</v></c>'))
    raw = path.read_bytes()
    with pytest.raises(SheetDamaged, match="array formula"):
        xlsx.remove_rows(path, None, [4])
    assert path.read_bytes() == raw
    xlsx.remove_rows(path, None, [2])                        # above it: the array moves up whole
    assert '<f t="array" ref="F2:F3">E2:E3*2</f>' in members(path)[SHEET].decode()


def test_remove_drops_calc_chain_and_append_keeps_it(tmp_path: Path) -> None:
    path = decorated_book(tmp_path / "d.xlsx", with_table=False)
    add_calc_chain(path)
    before = members(path)
    xlsx.append_rows(path, None, [{1: "x"}])
    assert "xl/calcChain.xml" in members(path)
    xlsx.remove_rows(path, None, [2])
    after = members(path)
    assert "xl/calcChain.xml" not in after
    assert b"calcChain" not in after["[Content_Types].xml"]
    assert b"calcChain" not in after["xl/_rels/workbook.xml.rels"]
    assert after["[Content_Types].xml"] == before["[Content_Types].xml"].replace(
        b'<Override PartName="/xl/calcChain.xml" '
        b'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.calcChain+xml"/>', b"")
    assert_only_changed(before, after, {SHEET, "[Content_Types].xml", "xl/_rels/workbook.xml.rels"},
                        dropped={"xl/calcChain.xml"})
    assert openpyxl_values(path)["A2"] == "strat_002"


def test_remove_refuses_a_table_header(tmp_path: Path) -> None:
    path = decorated_book(tmp_path / "d.xlsx", with_table=True)
    raw = path.read_bytes()
    with pytest.raises(Refused, match="header row of table 'Runs'"):
        xlsx.remove_rows(path, None, [1])
    assert path.read_bytes() == raw


def test_remove_every_data_row_of_a_table_keeps_one_empty_row(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "t.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Master")
    ws.add_table("A1:B4", {"name": "Runs", "columns": [{"header": "Strategy"}, {"header": "RunID"}],
                           "data": [["a", "1"], ["b", "2"], ["c", "3"]]})
    wb.close()
    xlsx.remove_rows(path, None, [2, 3, 4])
    assert 'ref="A1:B2"' in members(path)["xl/tables/table1.xml"].decode()
    assert strategies(path) == []
    assert xlsx.append_rows(path, None, [{1: "again", 2: "r"}, {1: "more", 2: "s"}]) == [2, 3]
    assert '<table xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" id="1" name="Runs" ' \
           'displayName="Runs" ref="A1:B3"' in members(path)["xl/tables/table1.xml"].decode()
    assert calamine_rows(path) == [["Strategy", "RunID"], ["again", "r"], ["more", "s"]]


# ---------------------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("before, after", [
    ("A1+A4+A5", "A1+#REF!+A4"),
    ("SUM(F2:F7)", "SUM(F2:F6)"),
    ("SUM(F4:F4)", "SUM(#REF!)"),
    ("SUM($F$4:$F$9)", "SUM($F$4:$F$8)"),                 # the range loses its first row
    ("Master!B5*2+'Master'!B6+master!B7", "Master!B4*2+'Master'!B5+master!B6"),
    ("Summary!B5+'Other sheet'!B5+[1]Master!B5", "Summary!B5+'Other sheet'!B5+[1]Master!B5"),
    ('"A5"&A5&"say ""A5"""', '"A5"&A4&"say ""A5"""'),   # text is not a reference
    ("LOG10(A5)+ATAN2(1,2)", "LOG10(A4)+ATAN2(1,2)"),      # function names are not references
    ("Runs[@Trades]*2+Runs[[#This Row],[A5]]", "Runs[@Trades]*2+Runs[[#This Row],[A5]]"),
    ("ROWS(3:7)+ROWS(4:4)+COUNT(B:B)", "ROWS(3:6)+ROWS(#REF!)+COUNT(B:B)"),
    ("XFD5+XFE5+A1048576", "XFD4+XFE5+A1048575"),          # XFE is past the last column: a name
    ("MyName+_x+A3", "MyName+_x+A3"),
])
def test_shift_formula(before: str, after: str) -> None:
    assert xlsx.shift_formula(before, xlsx.RowMap([4]), "Master") == after


def test_shift_formula_relative_to_a_range() -> None:
    rows = xlsx.RowMap([2])
    # a conditional format on E2:E7 (now E2:E6): relative rows keep their distance to the top row
    assert xlsx.shift_formula("E2>1", rows, "M", anchor=(2, 2)) == "E2>1"
    assert xlsx.shift_formula("E3>E2", rows, "M", anchor=(2, 2)) == "E3>E2"
    assert xlsx.shift_formula("E2>$E$9", rows, "M", anchor=(2, 2)) == "E2>$E$8"
    assert xlsx.shift_formula("E5>0", xlsx.RowMap([2]), "M", anchor=(5, 4)) == "E4>0"


def test_translate_formula() -> None:
    assert xlsx.translate_formula("A2*2+$B$1+Sheet2!C2+SUM(1:2)+B$3", 3, 1) == "B5*2+$B$1+Sheet2!D5+SUM(4:5)+C$3"
    assert xlsx.translate_formula("A1", -1, 0) == "#REF!"
    assert xlsx.translate_formula('"A1"&A1', 1, 0) == '"A1"&A2'


def test_row_map() -> None:
    m = xlsx.RowMap([3, 5, 6])
    assert [m.row(r) for r in range(1, 9)] == [1, 2, None, 3, None, None, 4, 5]
    assert m.span(3, 3) is None and m.span(2, 6) == (2, 3) and m.span(5, 9) == (4, 6)
    assert m.sqref("A3 B2:B4 C5:D6 E1:E1048576") == "B2:B3 E1:E1048576"
