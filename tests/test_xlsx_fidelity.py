"""Fidelity: decorated workbooks keep every other part byte for byte, and open everywhere afterwards.

LibreOffice checks convert the result to CSV with ``soffice --headless``; they are skipped (with the
reason) where LibreOffice is not installed.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import pytest
from fixtures_xlsx import (
    VBA_BIN,
    assert_only_changed,
    calamine_rows,
    decorated_book,
    members,
    openpyxl_book,
    openpyxl_values,
    soffice_convert,
    soffice_csv,
    soffice_or_skip,
)

from journal import xlsx

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")   # openpyxl: "extension is not supported"

SHEET = "xl/worksheets/sheet1.xml"
NEW = [{1: "alpha", 2: "run-a", 3: "tx-a", 4: "2025-01-02T03:04:05Z", 5: 1.75, 6: 7},
       {1: "=beta", 2: 42, 6: True}]


@pytest.mark.parametrize("variant", ["table", "autofilter", "xlsm"])
def test_append_to_decorated_workbook(tmp_path: Path, variant: str) -> None:
    path = tmp_path / ("Master.xlsm" if variant == "xlsm" else "Master.xlsx")
    decorated_book(path, with_table=variant != "autofilter", vba=variant == "xlsm", below=False)
    before = members(path)
    sst = before["xl/sharedStrings.xml"]
    numbers = xlsx.append_rows(path, None, NEW)
    assert numbers == [8, 9]
    after = members(path)
    allowed = {SHEET} | ({"xl/tables/table1.xml"} if variant != "autofilter" else set())
    assert assert_only_changed(before, after, allowed) == allowed
    assert after["xl/sharedStrings.xml"] == sst
    if variant == "xlsm":
        assert after["xl/vbaProject.bin"] == VBA_BIN
        assert b"vbaProject" in after["[Content_Types].xml"]
    xml = after[SHEET].decode()
    assert '<dimension ref="A1:I9"/>' in xml
    if variant == "autofilter":
        assert '<autoFilter ref="A1:G9"/>' in xml
    else:
        table = after["xl/tables/table1.xml"].decode()
        assert ' ref="A1:G9"' in table and '<autoFilter ref="A1:G9"/>' in table
        assert table.replace("A1:G9", "A1:G7") == before["xl/tables/table1.xml"].decode()
    # the untouched decorations are still in the sheet part, byte for byte
    for piece in ('<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>',
                  '<conditionalFormatting sqref="E2:E7">', "<xm:sqref>F2:F7</xm:sqref>",
                  'sqref="F2:F27"', '<mergeCell ref="H3:H4"/>', '<hyperlink ref="I2" r:id="rId1"/>'):
        assert piece in xml
    got = openpyxl_values(path)
    assert (got["A8"], got["E8"], got["F8"], got["A9"], got["B9"], got["F9"]) == ("alpha", 1.75, 7, "=beta", 42, True)
    assert got["A7"] == "strat_006"
    summary = openpyxl_values(path, "Summary")
    assert summary["A1"] == "=Master!F2*3"
    cal = calamine_rows(path)
    assert cal[7][:6] == ["alpha", "run-a", "tx-a", "2025-01-02T03:04:05Z", 1.75, 7]
    assert cal[8][0] == "=beta" and cal[8][5] is True
    assert calamine_rows(path, "Summary")[0][0] == 30          # cached formula values are still there
    t = xlsx.read_table(path, columns=["strategy", "runid"])
    assert [(r.number, r.values) for r in t.rows][-2:] == [(8, {1: "alpha", 2: "run-a"}), (9, {1: "=beta", 2: 42})]


def test_append_below_merged_note(tmp_path: Path) -> None:
    """A value below the data (a merged note) is the last row holding a value; new rows avoid the merge."""
    path = decorated_book(tmp_path / "d.xlsx", with_table=True, below=True)   # note in A11:C12
    assert xlsx.append_rows(path, None, [{1: "x", 2: "y"}]) == [13]
    xml = members(path)["xl/tables/table1.xml"].decode()
    assert ' ref="A1:G7"' in xml                                     # the table does not hold row 11: not grown
    assert openpyxl_values(path)["A13"] == "x"


def test_libreoffice_opens_appended_and_removed(tmp_path: Path) -> None:
    soffice_or_skip()
    path = decorated_book(tmp_path / "Master.xlsx", with_table=True, below=False)
    xlsx.append_rows(path, None, NEW)
    xlsx.remove_rows(path, None, [3])
    rows = soffice_csv(path, tmp_path / "lo")
    assert rows[0][:7] == ["Strategy", "RunID", "TxID", "CommittedAt", "Sharpe", "Trades", "Double"]
    assert [r[0] for r in rows[1:8]] == ["strat_001", "strat_003", "strat_004", "strat_005", "strat_006",
                                         "alpha", "=beta"]
    assert rows[6][:6] == ["alpha", "run-a", "tx-a", "2025-01-02T03:04:05Z", "1.75", "7"]
    assert rows[7][1] == "42" and rows[7][5].upper() == "TRUE"
    assert rows[1][8] == "link a"


def test_workbook_saved_by_libreoffice(tmp_path: Path) -> None:
    """LibreOffice writes its own dialect (shared strings, explicit attributes, its own namespaces)."""
    soffice_or_skip()
    (tmp_path / "src").mkdir()
    src = decorated_book(tmp_path / "src" / "Master.xlsx", with_table=False, below=False)
    path = soffice_convert(src, "xlsx", tmp_path / "lo-saved")
    assert b"LibreOffice" in members(path)["docProps/app.xml"]
    t = xlsx.read_table(path)
    assert t.header_row == 1 and [r.values[1] for r in t.rows][:2] == ["strat_001", "strat_002"]
    before = members(path)
    assert xlsx.append_rows(path, None, NEW) == [8, 9]
    xlsx.remove_rows(path, None, [2])
    after = members(path)
    changed = assert_only_changed(before, after, {SHEET, "[Content_Types].xml", "xl/_rels/workbook.xml.rels"},
                                  dropped={"xl/calcChain.xml"} & set(before))
    assert SHEET in changed
    assert [r[0] for r in calamine_rows(path)][:8] == ["Strategy", "strat_002", "strat_003", "strat_004",
                                                        "strat_005", "strat_006", "alpha", "=beta"]
    lo = soffice_csv(path, tmp_path / "lo-again")
    assert [r[0] for r in lo[5:8]] == ["strat_006", "alpha", "=beta"]
    assert openpyxl_values(path)["B8"] == 42


def test_openpyxl_made_workbook_round_trip(tmp_path: Path) -> None:
    path = openpyxl_book(tmp_path / "m.xlsx")
    before = members(path)
    assert xlsx.append_rows(path, None, NEW) == [5, 6]
    xlsx.remove_rows(path, None, [2])
    assert_only_changed(before, members(path), {SHEET})
    assert openpyxl_values(path)["A4"] == "alpha"
    assert calamine_rows(path)[4][0] == "=beta"


def test_zip_is_valid_and_members_copied_raw(tmp_path: Path) -> None:
    """Unchanged members keep their compressed bytes too (copied, not recompressed)."""
    path = decorated_book(tmp_path / "d.xlsx")

    def raw(p: Path) -> dict[str, tuple[int, int, int]]:
        with zipfile.ZipFile(p) as z:
            return {i.filename: (i.CRC, i.compress_size, i.compress_type) for i in z.infolist()}
    before = raw(path)
    xlsx.append_rows(path, None, [{1: "x"}])
    after = raw(path)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
    for name, info in before.items():
        if name != SHEET:
            assert after[name] == info, name


def test_append_then_remove_restores_the_rows(tmp_path: Path) -> None:
    path = decorated_book(tmp_path / "d.xlsx", with_table=False, below=False)
    before = members(path)
    numbers = xlsx.append_rows(path, None, NEW)
    xlsx.remove_rows(path, None, numbers)
    after = members(path)
    assert_only_changed(before, after, {SHEET})
    rows = re.compile(r"<sheetData>.*</sheetData>", re.S)
    assert rows.search(after[SHEET].decode()).group(0) == rows.search(before[SHEET].decode()).group(0)  # type: ignore
    assert '<autoFilter ref="A1:G7"/>' in after[SHEET].decode()
    assert 'sqref="F2:F25"' in after[SHEET].decode()      # the validation F2:F27 lost two of its rows


def test_soffice_available_or_reason() -> None:
    """Document in the test log whether the LibreOffice checks ran."""
    if shutil.which("soffice") is None:
        pytest.skip("LibreOffice (soffice) is not installed: LibreOffice round trips were skipped")


def test_created_workbook_opens_in_libreoffice(tmp_path: Path) -> None:
    soffice_or_skip()
    path = tmp_path / "Strategy_Master_Filter.xlsx"
    xlsx.create_workbook(path, ["Strategy", "RunID", "TxID", "CommittedAt"])
    xlsx.append_rows(path, None, [{1: "alpha", 2: "run-1", 3: "tx1", 4: "2025-01-01T00:00:00Z"}])
    assert soffice_csv(path, tmp_path / "lo") == [["Strategy", "RunID", "TxID", "CommittedAt"],
                                                  ["alpha", "run-1", "tx1", "2025-01-01T00:00:00Z"]]
