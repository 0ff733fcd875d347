"""The workbook engine on plain workbooks: read, append, create, typing, header detection."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fixtures_xlsx import (
    HEADERS,
    assert_only_changed,
    calamine_rows,
    data_rows,
    members,
    openpyxl_book,
    openpyxl_values,
    patch_member,
    xlsxwriter_book,
)

from journal import xlsx
from journal.errors import Refused

SHEET = "xl/worksheets/sheet1.xml"


@pytest.fixture(params=["xlsxwriter", "xlsxwriter-inline", "openpyxl"])
def book(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "Master.xlsx"
    if request.param == "openpyxl":
        return openpyxl_book(path)
    return xlsxwriter_book(path, constant_memory=request.param == "xlsxwriter-inline")


# ---------------------------------------------------------------------------------------- reading


def test_read_table_headers_and_rows(book: Path) -> None:
    t = xlsx.read_table(book)
    assert t.worksheet == "Master"
    assert t.header_row == 1
    assert t.headers == {i + 1: h for i, h in enumerate(HEADERS)}
    assert t.columns["runid"] == 2 and t.columns["committedat"] == 4
    assert [r.number for r in t.rows] == [2, 3, 4]
    assert t.rows[0].values == {1: "strat_001", 2: "run-0001", 3: "tx1", 4: "2024-01-01T00:00:00Z", 5: 0.25, 6: 10}
    assert isinstance(t.rows[0].values[6], int)


def test_read_table_only_requested_columns(book: Path) -> None:
    t = xlsx.read_table(book, columns=["strategy", "Run ID"])
    assert [r.values for r in t.rows] == [{1: f"strat_{i:03d}", 2: f"run-{i:04d}"} for i in (1, 2, 3)]


def test_rows_with_values_only_in_other_columns_are_kept(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", [["a", "r1"], [None, None, None, None, 7], ["c", "r3"]])
    t = xlsx.read_table(path, columns=["strategy", "runid"])
    assert [(r.number, r.values) for r in t.rows] == [(2, {1: "a", 2: "r1"}), (3, {}), (4, {1: "c", 2: "r3"})]


class _CountingBytes(bytes):
    """A chunk that counts the bytes its searches cover (``find``/``rfind``/``count``/``index``)."""

    scanned = 0

    def _n(self, args: tuple[Any, ...]) -> None:
        start = args[1] if len(args) > 1 and args[1] is not None else 0
        end = args[2] if len(args) > 2 and args[2] is not None else len(self)
        _CountingBytes.scanned += max(0, min(end, len(self)) - max(start, 0))

    def find(self, *a: Any) -> int:  # type: ignore[override]
        self._n(a)
        return super().find(*a)

    def rfind(self, *a: Any) -> int:  # type: ignore[override]
        self._n(a)
        return super().rfind(*a)

    def count(self, *a: Any) -> int:  # type: ignore[override]
        self._n(a)
        return super().count(*a)

    def index(self, *a: Any) -> int:  # type: ignore[override]
        self._n(a)
        return super().index(*a)

    def __getitem__(self, k: Any) -> Any:  # type: ignore[override]
        v = super().__getitem__(k)
        return _CountingBytes(v) if isinstance(k, slice) else v


def test_reading_rows_without_wanted_values_is_linear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows holding values only in columns not asked for (no Strategy/RunID) cost what other rows cost:
    the reader never searches a chunk from its start again for each row (it once took 487 s at 50k rows)."""
    from journal.xlsx import read as read_mod

    n = 4000
    path = xlsxwriter_book(tmp_path / "m.xlsx", [[None, None, f"tx{i}", "2024", i, i * 2] for i in range(n)],
                           constant_memory=True)
    real = read_mod.iter_sheet
    total = 0

    def counting(*a: Any, **k: Any) -> Any:
        nonlocal total
        for chunk in real(*a, **k):
            total += len(chunk)
            yield _CountingBytes(chunk)
    monkeypatch.setattr(read_mod, "iter_sheet", counting)
    _CountingBytes.scanned = 0
    t = xlsx.read_table(path, columns=["strategy", "runid"])
    assert [r.number for r in t.rows] == list(range(2, n + 2))
    assert all(r.values == {} for r in t.rows)
    assert _CountingBytes.scanned <= 4 * total, (_CountingBytes.scanned, total)   # quadratic: ~n/2 x total


def test_a_row_without_wanted_values_is_data_when_any_cell_shows_a_value(tmp_path: Path) -> None:
    """Which rows without Strategy/RunID count as data: an inline string, a number, a shared string that
    is not empty; not a row whose only cells are styled or an empty shared string."""
    path = xlsxwriter_book(tmp_path / "m.xlsx", [["a", "r1"]])
    rows = (b'<row r="3"><c r="C3" t="inlineStr"><is><t>tx</t></is></c></row>'
            b'<row r="4"><c r="D4"><v>4.5</v></c></row>'
            b'<row r="5"><c r="E5" s="1"/></row>'
            b'<row r="6"><c r="C6" t="s"><v>{empty}</v></c></row>'
            b'<row r="7"><c r="C7" t="s"><v>{full}</v></c></row>')

    def patch(xml: bytes) -> bytes:
        return xml.replace(b"</sheetData>", rows + b"</sheetData>")

    def sst(xml: bytes) -> bytes:
        n = xml.count(b"<si>")
        return xml.replace(b"</sst>", b"<si><t></t></si><si><t>kept</t></si></sst>"), n

    with zipfile.ZipFile(path) as z:
        new_sst, n = sst(z.read("xl/sharedStrings.xml"))
    rows = rows.replace(b"{empty}", str(n).encode()).replace(b"{full}", str(n + 1).encode())
    patch_member(path, "xl/worksheets/sheet1.xml", patch)
    patch_member(path, "xl/sharedStrings.xml", lambda _x: new_sst)
    t = xlsx.read_table(path, columns=["strategy", "runid"])
    assert [r.number for r in t.rows] == [2, 3, 4, 7]


@pytest.mark.parametrize("name", ["Run ID", "run_id", "RUNID", "run-id", " RunId "])
def test_header_detection_in_row_3_with_spellings(tmp_path: Path, name: str) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Runs")
    ws.write(0, 0, "Backtest index — do not edit by hand")
    ws.write(1, 3, 42)
    ws.write_row(2, 0, ["STRATEGY", name, "Notes"])
    ws.write_row(3, 0, ["alpha", 123.0, "x"])
    ws.write_row(5, 0, ["beta", "r2"])
    wb.close()
    t = xlsx.read_table(path, columns=["strategy", "runid"])
    assert t.header_row == 3
    assert t.headers[2] == name.strip()
    assert t.columns == {"strategy": 1, "runid": 2, "notes": 3}
    assert [(r.number, r.values) for r in t.rows] == [(4, {1: "alpha", 2: 123}), (6, {1: "beta", 2: "r2"})]
    assert isinstance(t.rows[0].values[2], int)


def test_no_header_row_gives_header_row_zero(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", headers=["Name", "RunID"], rows=[["a", "b"]])
    t = xlsx.read_table(path, columns=["strategy", "runid"])
    assert (t.header_row, t.headers, t.columns) == (0, {}, {})


def test_header_below_row_10_is_not_found(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", header_row=11)
    assert xlsx.read_table(path).header_row == 0


def test_first_duplicate_header_wins(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", headers=["Strategy", "RunID", "run id"], rows=[["a", "b", "c"]])
    t = xlsx.read_table(path)
    assert t.columns["runid"] == 2
    assert t.headers == {1: "Strategy", 2: "RunID", 3: "run id"}


def test_worksheet_by_name_and_missing(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    wb.add_worksheet("Notes").write(0, 0, "nothing here")
    wb.add_worksheet("Index").write_row(0, 0, ["Strategy", "RunID"])
    wb.close()
    assert xlsx.read_table(path).worksheet == "Notes"
    assert xlsx.read_table(path, "Index").columns == {"strategy": 1, "runid": 2}
    with pytest.raises(xlsx.SheetDamaged, match="no worksheet named 'Nope'"):
        xlsx.read_table(path, "Nope")


def test_value_types_read_back(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet()
    ws.write_row(0, 0, ["Strategy", "RunID", "Flag", "Err", "Text", "F"])
    ws.write_row(1, 0, ["s", 7.0, True])
    ws.write_formula(1, 3, "=NA()", None, "#N/A")
    ws.write_string(1, 4, "a & b <c> _x0041_ é")
    ws.write_formula(1, 5, '="x"&"y"', None, "xy")
    ws.write_row(2, 0, ["t", 2.5, False])
    wb.close()
    t = xlsx.read_table(path)
    assert t.rows[0].values == {1: "s", 2: 7, 3: True, 4: "#N/A", 5: "a & b <c> _x0041_ é", 6: "xy"}
    assert type(t.rows[0].values[2]) is int and type(t.rows[0].values[3]) is bool
    assert t.rows[1].values == {1: "t", 2: 2.5, 3: False}


# ---------------------------------------------------------------------------------------- appending


def test_append_rows_after_last_row(book: Path) -> None:
    before = members(book)
    numbers = xlsx.append_rows(book, None, [{1: "new_a", 2: "run-a", 5: 1.5, 6: 3}, {1: "new_b", 2: 77}])
    assert numbers == [5, 6]
    after = members(book)
    assert_only_changed(before, after, {SHEET})
    assert b'<dimension ref="A1:F6"/>' in after[SHEET]
    t = xlsx.read_table(book)
    assert [r.number for r in t.rows] == [2, 3, 4, 5, 6]
    assert t.rows[3].values == {1: "new_a", 2: "run-a", 5: 1.5, 6: 3}
    assert t.rows[4].values == {1: "new_b", 2: 77}
    got = openpyxl_values(book)
    assert (got["A5"], got["B5"], got["E5"], got["F5"], got["A6"], got["B6"]) == ("new_a", "run-a", 1.5, 3, "new_b", 77)
    cal = calamine_rows(book)
    assert cal[4][:2] == ["new_a", "run-a"] and cal[5][:2] == ["new_b", 77]


def test_append_keeps_shared_strings_untouched(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    sst = members(path)["xl/sharedStrings.xml"]
    xlsx.append_rows(path, None, [{1: "Strategy", 2: "fresh"}])
    assert members(path)["xl/sharedStrings.xml"] == sst


def test_append_types(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", headers=[f"C{i}" for i in range(1, 14)] + ["Strategy"])
    values = {1: "=SUM(A1:A2)", 2: "+1", 3: "-x", 4: "@me", 5: "\tindent", 6: "\rcr", 7: 12345678901234567890,
              8: 123456789012345, 9: float("nan"), 10: float("-inf"), 11: True, 12: False, 13: 0.1}
    (n,) = xlsx.append_rows(path, None, [values])
    xml = members(path)[SHEET].decode()
    assert "<f>" not in xml and "<f " not in xml
    row = xlsx.read_table(path).rows[-1]
    assert row.number == n
    assert row.values == {1: "=SUM(A1:A2)", 2: "+1", 3: "-x", 4: "@me", 5: "\tindent", 6: "\rcr",
                          7: "12345678901234567890", 8: 123456789012345, 9: "nan", 10: "-inf", 11: True, 12: False,
                          13: 0.1}
    got = openpyxl_values(path)
    assert got[f"A{n}"] == "=SUM(A1:A2)"   # openpyxl reports text that looks like a formula as is
    assert openpyxl_data_type(path, f"A{n}") == "s"
    assert got[f"K{n}"] is True and got[f"H{n}"] == 123456789012345 and got[f"G{n}"] == "12345678901234567890"
    cal = calamine_rows(path)[n - 1]
    assert cal[0] == "=SUM(A1:A2)" and cal[10] is True and cal[12] == 0.1


def openpyxl_data_type(path: Path, ref: str) -> str:
    import openpyxl

    return openpyxl.load_workbook(path).worksheets[0][ref].data_type


def test_append_text_escaping_round_trips(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    tricky = ["a<b>&c\"d'e", "  spaces kept  ", "line1\nline2", "_x0041_ stays", "ünï©ødé 🚀", "]]>"]
    (n,) = xlsx.append_rows(path, None, [{i + 1: v for i, v in enumerate(tricky)}])
    assert list(xlsx.read_table(path).rows[-1].values.values()) == tricky
    cal = calamine_rows(path)[n - 1]
    assert cal[:6] == tricky


@pytest.mark.parametrize("bad, match", [
    ("a\x00b", "U\\+0000"), ("bell\x07", "U\\+0007"), ("\ud800", "U\\+D800"), ("x" * 32768, "32,767"),
])
def test_append_refuses_bad_text_and_leaves_file(tmp_path: Path, bad: str, match: str) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    raw = path.read_bytes()
    with pytest.raises(Refused, match=match):
        xlsx.append_rows(path, None, [{1: "ok", 2: bad}])
    assert path.read_bytes() == raw


def test_append_refuses_bad_columns_and_types(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    raw = path.read_bytes()
    for row in ({0: "x"}, {16385: "x"}, {"A": "x"}, {1: [1, 2]}, {1: b"bytes"}):
        with pytest.raises(Refused):
            xlsx.append_rows(path, None, [row])  # type: ignore[list-item]
    assert path.read_bytes() == raw


def test_append_exactly_32767_chars(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    xlsx.append_rows(path, None, [{1: "y" * 32767}])
    assert xlsx.read_table(path).rows[-1].values[1] == "y" * 32767


def test_append_nothing_writes_nothing(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    raw = path.read_bytes()
    assert xlsx.append_rows(path, None, []) == []
    assert path.read_bytes() == raw


def test_append_after_gap_and_empty_formatted_rows(tmp_path: Path) -> None:
    """Formatted empty rows after the data are merged with the new rows, never duplicated."""
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Master")
    money = wb.add_format({"num_format": "0.00"})
    ws.write_row(0, 0, ["Strategy", "RunID", "PnL"])
    ws.write_row(1, 0, ["a", "r1", 1])
    ws.write_row(3, 0, ["c", "r3", 3])                   # row 3 is a gap: stays a gap
    ws.set_row(4, 30)                                     # row 5: empty, custom height
    ws.write_blank(4, 2, None, money)                     # ... with a formatted empty cell C5
    ws.write_blank(5, 1, None, money)                     # row 6: a formatted empty cell B6
    ws.set_row(9, 40)                                     # row 10: empty, after the new rows
    wb.close()
    numbers = xlsx.append_rows(path, None, [{1: "d", 2: "r4", 3: 4.25}, {1: "e", 2: "r5"}, {1: "f"}])
    assert numbers == [5, 6, 7]
    xml = members(path)[SHEET].decode()
    row_numbers = [int(x) for x in re.findall(r'<row r="(\d+)"', xml)]
    assert row_numbers == sorted(set(row_numbers)) == [1, 2, 4, 5, 6, 7, 10]
    row5 = re.search(r'<row r="5"[^>]*>.*?</row>', xml).group(0)  # type: ignore[union-attr]
    assert 'ht="30"' in row5 and re.search(r'<c r="C5" s="\d+"><v>4.25</v>', row5)
    row6 = re.search(r'<row r="6"[^>]*>.*?</row>', xml).group(0)  # type: ignore[union-attr]
    assert re.search(r'<c r="B6" s="\d+" t="inlineStr">', row6)
    t = xlsx.read_table(path)
    assert [(r.number, r.values) for r in t.rows] == [
        (2, {1: "a", 2: "r1", 3: 1}), (4, {1: "c", 2: "r3", 3: 3}), (5, {1: "d", 2: "r4", 3: 4.25}),
        (6, {1: "e", 2: "r5"}), (7, {1: "f"})]
    assert openpyxl_values(path)["C5"] == 4.25


def test_append_never_overwrites_a_formula_without_value(tmp_path: Path) -> None:
    path = openpyxl_book(tmp_path / "m.xlsx")      # openpyxl writes formulas with an empty cached value
    import openpyxl

    wb = openpyxl.load_workbook(path)
    wb.active["B5"] = "=A4"
    wb.save(path)
    assert xlsx.append_rows(path, None, [{1: "x", 2: "y"}]) == [6]
    assert openpyxl_values(path)["B5"] == "=A4"


def test_append_to_header_only_sheet(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=[])
    assert xlsx.append_rows(path, None, [{1: "first", 2: "r1"}]) == [2]
    assert [r.values for r in xlsx.read_table(path).rows] == [{1: "first", 2: "r1"}]


def test_append_named_worksheet_other_than_first(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    wb.add_worksheet("Notes").write(0, 0, "keep me")
    wb.add_worksheet("Index").write_row(0, 0, ["Strategy", "RunID"])
    wb.close()
    before = members(path)
    assert xlsx.append_rows(path, "Index", [{1: "a", 2: "b"}]) == [2]
    assert_only_changed(before, members(path), {"xl/worksheets/sheet2.xml"})
    assert xlsx.read_table(path, "Index").rows[0].values == {1: "a", 2: "b"}


def test_append_many_rows_in_one_write(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(50))
    numbers = xlsx.append_rows(path, None, [{1: f"n{i}", 2: i} for i in range(200)])
    assert numbers == list(range(52, 252))
    t = xlsx.read_table(path, columns=["strategy", "runid"])
    assert len(t.rows) == 250 and t.rows[-1].values == {1: "n199", 2: 199}
    assert b'<dimension ref="A1:F251"/>' in members(path)[SHEET]


def test_zip_entries_keep_names_times_and_order(book: Path) -> None:
    with zipfile.ZipFile(book) as z:
        before = [(i.filename, i.date_time, i.external_attr) for i in z.infolist()]
    xlsx.append_rows(book, None, [{1: "x"}])
    with zipfile.ZipFile(book) as z:
        assert z.testzip() is None
        assert [(i.filename, i.date_time, i.external_attr) for i in z.infolist()] == before


# ---------------------------------------------------------------------------------------- creating


def test_create_workbook_reads_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "Strategy_Master_Filter.xlsx"
    xlsx.create_workbook(path, ["Strategy", "RunID", "TxID", "CommittedAt"])
    t = xlsx.read_table(path)
    assert (t.worksheet, t.header_row, t.rows) == ("Master", 1, [])
    assert t.columns == {"strategy": 1, "runid": 2, "txid": 3, "committedat": 4}
    assert openpyxl_values(path) == {"A1": "Strategy", "B1": "RunID", "C1": "TxID", "D1": "CommittedAt"}
    assert calamine_rows(path) == [["Strategy", "RunID", "TxID", "CommittedAt"]]
    assert xlsx.append_rows(path, None, [{1: "a", 2: "b"}]) == [2]
    assert calamine_rows(path)[1][:2] == ["a", "b"]
    assert not [p for p in tmp_path.iterdir() if p.name != path.name]   # no temp file left


def test_create_workbook_refuses_to_overwrite(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    raw = path.read_bytes()
    with pytest.raises(FileExistsError):
        xlsx.create_workbook(path, ["Strategy", "RunID"])
    assert path.read_bytes() == raw


PREFIXED = (b'<?xml version="1.0" encoding="utf-8"?>'
            b'<x:worksheet xmlns:x="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
            b'<x:dimension ref="A1:B3"/><x:sheetData>'
            b'<x:row r="1"><x:c r="A1" t="inlineStr"><x:is><x:t>Strategy</x:t></x:is></x:c>'
            b'<x:c r="B1" t="inlineStr"><x:is><x:t>Run ID</x:t></x:is></x:c></x:row>'
            b'<x:row r="2"><x:c r="A2" t="inlineStr"><x:is><x:t>a</x:t></x:is></x:c><x:c r="B2"><x:v>1</x:v></x:c>'
            b'</x:row><x:row r="3"><x:c r="A3" t="inlineStr"><x:is><x:t>b</x:t></x:is></x:c>'
            b'<x:c r="B3"><x:f>B2+1</x:f><x:v>2</x:v></x:c></x:row>'
            b"</x:sheetData></x:worksheet>")


def test_prefixed_namespace_as_the_openxml_sdk_writes(tmp_path: Path) -> None:
    from fixtures_xlsx import patch_member

    path = xlsxwriter_book(tmp_path / "m.xlsx")
    patch_member(path, SHEET, lambda b: PREFIXED)
    t = xlsx.read_table(path)
    assert t.columns == {"strategy": 1, "runid": 2}
    assert [(r.number, r.values) for r in t.rows] == [(2, {1: "a", 2: 1}), (3, {1: "b", 2: 2})]
    assert xlsx.append_rows(path, None, [{1: "c", 2: "r3"}]) == [4]
    xml = members(path)[SHEET]
    assert b'<x:row r="4"><x:c r="A4" t="inlineStr"><x:is><x:t xml:space="preserve">c</x:t></x:is></x:c>' in xml
    assert b'<x:dimension ref="A1:B4"/>' in xml
    xlsx.remove_rows(path, None, [2])
    assert b"<x:f>#REF!+1</x:f>" in members(path)[SHEET]        # it referred to the removed row
    assert openpyxl_values(path) == {"A1": "Strategy", "B1": "Run ID", "A2": "b", "B2": "=#REF!+1", "A3": "c",
                                     "B3": "r3"}
    assert calamine_rows(path)[2] == ["c", "r3"]


def test_rich_text_and_escaped_shared_strings(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Master")
    bold = wb.add_format({"bold": True})
    ws.write_row(0, 0, ["Strategy", "RunID"])
    ws.write_rich_string(1, 0, "alp", bold, "ha", "_beta")
    ws.write_string(1, 1, "a&b_x000D_\r\nend")
    ws.write_string(2, 0, "")
    ws.write_string(2, 1, "plain")
    wb.close()
    assert b"<r>" in members(path)["xl/sharedStrings.xml"]
    t = xlsx.read_table(path, columns=["strategy", "runid"])
    assert [(r.number, r.values) for r in t.rows] == [(2, {1: "alpha_beta", 2: "a&b_x000D_\r\nend"}),
                                                      (3, {2: "plain"})]
    assert calamine_rows(path)[1] == ["alpha_beta", "a&b_x000D_\r\nend"]


def test_empty_sheet_self_closing_sheet_data(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    wb.add_worksheet("Master")
    wb.close()
    assert b"<sheetData/>" in members(path)[SHEET]
    t = xlsx.read_table(path)
    assert (t.header_row, t.rows) == (0, [])
    xlsx.remove_rows(path, None, [1])                       # nothing to move, still a valid sheet
    assert xlsx.append_rows(path, None, [{1: "Strategy", 2: "RunID"}, {1: "a", 2: "b"}]) == [1, 2]
    t = xlsx.read_table(path)
    assert t.header_row == 1 and [r.values for r in t.rows] == [{1: "a", 2: "b"}]
    assert calamine_rows(path) == [["Strategy", "RunID"], ["a", "b"]]
