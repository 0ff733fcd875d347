"""Builders of fixture workbooks for the workbook-engine tests, and helpers to compare zips.

Every workbook is generated into ``tmp_path`` (nothing binary is committed).
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

HEADERS = ["Strategy", "RunID", "TxID", "CommittedAt", "Sharpe", "Trades"]


def data_rows(n: int, start: int = 1) -> list[list[Any]]:
    return [[f"strat_{i:03d}", f"run-{i:04d}", f"tx{i}", "2024-01-01T00:00:00Z", i / 4, i * 10]
            for i in range(start, start + n)]


def xlsxwriter_book(path: Path, rows: list[list[Any]] | None = None, *, header_row: int = 1,
                    headers: list[str] | None = None, constant_memory: bool = False,
                    sheet: str = "Master") -> Path:
    """A plain workbook made by XlsxWriter (shared strings unless ``constant_memory``)."""
    import xlsxwriter

    wb = xlsxwriter.Workbook(str(path), {"constant_memory": constant_memory})
    ws = wb.add_worksheet(sheet)
    ws.write_row(header_row - 1, 0, headers or HEADERS)
    for i, row in enumerate(rows if rows is not None else data_rows(3)):
        ws.write_row(header_row + i, 0, row)
    wb.close()
    return path


def openpyxl_book(path: Path, rows: list[list[Any]] | None = None, *, header_row: int = 1,
                  headers: list[str] | None = None) -> Path:
    """A plain workbook made by openpyxl (inline strings, no XML declaration)."""
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Master"
    for c, h in enumerate(headers or HEADERS, start=1):
        ws.cell(header_row, c, h)
    for i, row in enumerate(rows if rows is not None else data_rows(3)):
        for c, v in enumerate(row, start=1):
            ws.cell(header_row + 1 + i, c, v)
    wb.save(path)
    return path


VBA_BIN = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 4   # any bytes: nobody runs it


def decorated_book(path: Path, *, with_table: bool = True, n: int = 6, vba: bool = False,
                   below: bool = True) -> Path:
    """The Master Sheet as people decorate it: every feature the writer must keep or move.

    Master (first sheet): header in row 1, ``n`` data rows, a table (or an autofilter) over them,
    frozen panes, data validation, conditional formatting (a cell rule and a 2010 data bar),
    a comment, merged cells in the data, hyperlinks, a same-sheet formula column; with ``below``
    also a link in the row after the data and a merged note three rows further down.
    Summary (second sheet): formulas on Master with cached values, a chart, sparklines.
    Workbook: defined names; optionally a VBA project (.xlsm).
    """
    import xlsxwriter

    wb = xlsxwriter.Workbook(str(path))
    if vba:
        vba_path = path.with_name("vbaProject.bin")
        vba_path.write_bytes(VBA_BIN)
        wb.add_vba_project(str(vba_path))
        wb.set_vba_name("ThisWorkbook")
    ws = wb.add_worksheet("Master")
    summary = wb.add_worksheet("Summary")
    if vba:
        ws.set_vba_name("Sheet1")
        summary.set_vba_name("Sheet2")
    bold = wb.add_format({"bold": True})
    rows = data_rows(n)
    last = n + 1                                                         # last data row (Excel numbering)
    if with_table:
        ws.add_table(0, 0, n, len(HEADERS), {
            "name": "Runs",
            "columns": [{"header": h} for h in HEADERS]
            + [{"header": "Double", "formula": "=Runs[[#This Row],[Trades]]*2"}],
            "data": rows,
        })
    else:
        ws.write_row(0, 0, HEADERS + ["Double"], bold)
        for i, row in enumerate(rows, start=1):
            ws.write_row(i, 0, row)
            ws.write_formula(i, len(HEADERS), f"=F{i + 1}*2", None, row[5] * 2)
        ws.autofilter(0, 0, n, len(HEADERS))
    ws.freeze_panes(1, 0)
    ws.data_validation(1, 5, n + 20, 5, {"validate": "integer", "criteria": ">=", "value": 0})
    ws.conditional_format(1, 4, n, 4, {"type": "cell", "criteria": ">", "value": 1, "format": bold})
    ws.conditional_format(1, 5, n, 5, {"type": "data_bar", "data_bar_2010": True})
    ws.write_comment(2, 0, "first strategy worth keeping")
    ws.merge_range(2, 7, 3, 7, "merged H3:H4")                                # merged cells in the data
    ws.write_url(1, 8, "https://example.com/a", string="link a")              # I2
    ws.write_url(last - 1, 8, "https://example.com/z", string="link z")       # I<last>
    if below:
        ws.write_url(last, 8, "internal:Summary!A1", string="to summary")     # I<last + 1>
        ws.merge_range(last + 3, 0, last + 4, 2, "merged note below the data")  # A<last+4>:C<last+5>
    for i, row in enumerate(rows, start=2):
        summary.write_formula(i - 2, 0, f"=Master!F{i}*3", None, row[5] * 3)
    summary.write_formula(n, 0, f"=SUM(Master!F2:F{last})", None, sum(r[5] for r in rows))
    summary.write_row(0, 2, [1, 3, 2, 5, 4])
    summary.add_sparkline(0, 1, {"range": "Summary!C1:G1"})
    summary.add_sparkline(1, 1, {"range": f"Master!F2:F{last}"})
    chart = wb.add_chart({"type": "column"})
    chart.add_series({"values": f"=Master!$F$2:$F${last}", "categories": f"=Master!$A$2:$A${last}"})
    summary.insert_chart("D5", chart)
    wb.define_name("Trades", f"=Master!$F$2:$F${last}")
    wb.define_name("FirstRun", "=Master!$B$2")
    wb.close()
    return path


def members(path: Path) -> dict[str, bytes]:
    """Every zip member's uncompressed bytes."""
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def assert_only_changed(before: dict[str, bytes], after: dict[str, bytes], allowed: set[str],
                        dropped: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    """Every member outside ``allowed`` kept its exact bytes; returns the members that changed."""
    assert set(after) == set(before) - set(dropped), (set(after) ^ set(before))
    changed = {n for n in after if after[n] != before[n]}
    assert changed <= allowed, f"members changed that must not: {sorted(changed - allowed)}"
    return changed


def soffice_or_skip() -> str:
    exe = shutil.which("soffice") or shutil.which("libreoffice")
    if not exe:
        pytest.skip("LibreOffice (soffice) is not installed, so the LibreOffice checks cannot run")
    return exe


def soffice_convert(src: Path, fmt: str, outdir: Path, *, sheet: int | None = None) -> Path:
    """Convert with LibreOffice headless (own profile, so tests run in parallel); returns the output."""
    exe = soffice_or_skip()
    outdir.mkdir(parents=True, exist_ok=True)
    profile = outdir / "lo-profile"
    filt = fmt
    if fmt == "csv":
        # UTF-8, comma, quote all text; the sheet number (1-based) when asked
        filt = 'csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,false,false,false'
        if sheet is not None:
            filt += f",{sheet}"
    p = subprocess.run([exe, f"-env:UserInstallation=file://{profile}", "--headless", "--convert-to", filt,
                        "--outdir", str(outdir), str(src)], capture_output=True, text=True, timeout=180)
    ext = "csv" if fmt == "csv" else fmt.split(":")[0]
    out = outdir / (src.stem + "." + ext)
    if sheet is not None and fmt == "csv" and not out.exists():
        cands = sorted(outdir.glob(src.stem + "*.csv"))
        out = cands[0] if cands else out
    assert out.exists(), f"LibreOffice did not convert {src.name}: {p.stdout} {p.stderr}"
    return out


def soffice_csv(src: Path, outdir: Path) -> list[list[str]]:
    """The first sheet as LibreOffice reads it, as CSV rows."""
    out = soffice_convert(src, "csv", outdir)
    return list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))


def calamine_rows(path: Path, sheet: str | None = None) -> list[list[Any]]:
    from python_calamine import CalamineWorkbook

    wb = CalamineWorkbook.from_path(str(path))
    s = wb.get_sheet_by_name(sheet) if sheet else wb.get_sheet_by_index(0)
    return s.to_python(skip_empty_area=False)


def openpyxl_values(path: Path, sheet: str | None = None) -> dict[str, Any]:
    """{cell ref: value} of every non-empty cell of a sheet, as openpyxl reads it."""
    import openpyxl

    wb = openpyxl.load_workbook(path)
    ws = wb[sheet] if sheet else wb.worksheets[0]
    return {c.coordinate: c.value for row in ws.iter_rows() for c in row if c.value is not None}


def patch_member(path: Path, name: str, fn: Any, *, add: dict[str, bytes] | None = None) -> None:
    """Rewrite one zip member with ``fn(bytes) -> bytes`` (and add members) to craft odd workbooks."""
    with zipfile.ZipFile(path) as z:
        items = [(i, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in items:
            z.writestr(info, fn(data) if info.filename == name else data, zipfile.ZIP_DEFLATED)
        for n, data in (add or {}).items():
            z.writestr(n, data)


def add_calc_chain(path: Path) -> None:
    """Give a workbook an xl/calcChain.xml, as Excel keeps one for workbooks with formulas."""
    ct = "application/vnd.openxmlformats-officedocument.spreadsheetml.calcChain+xml"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/calcChain"
    patch_member(path, "[Content_Types].xml",
                 lambda b: b.replace(b"</Types>", f'<Override PartName="/xl/calcChain.xml" ContentType="{ct}"/>'
                                     f"</Types>".encode()))
    patch_member(path, "xl/_rels/workbook.xml.rels",
                 lambda b: b.replace(b"</Relationships>", f'<Relationship Id="rId99" Type="{rel}" '
                                     f'Target="calcChain.xml"/></Relationships>'.encode()),
                 add={"xl/calcChain.xml": b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                      b'<calcChain xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                      b'<c r="G2" i="1"/></calcChain>'})
