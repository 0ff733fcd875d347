"""The spliced append: the master sheet's deflate stream in three pieces, the rows copied compressed.

Every spliced file must read as a full rewrite's would (openpyxl, calamine, LibreOffice when
installed), keep every other member's bytes, and fall back to the full rewrite whenever the
record does not describe the very file (a foreign save, a touched file, a forged record).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from fixtures_xlsx import (
    assert_only_changed,
    calamine_rows,
    data_rows,
    decorated_book,
    members,
    openpyxl_values,
    soffice_convert,
    soffice_csv,
    xlsxwriter_book,
)

from journal import sheet, xlsx
from journal.xlsx import append as append_mod
from journal.xlsx.package import crc32_combine
from journal.xlsx.splice import SYNC, Layout

SHEET = "xl/worksheets/sheet1.xml"


class Recorder:
    """The ``before_replace`` hook: keeps the layout each write reports."""

    def __init__(self) -> None:
        self.layouts: list[Layout | None] = []

    def __call__(self, numbers: list[int], st: os.stat_result, layout: Layout | None) -> None:
        self.layouts.append(layout)

    @property
    def last(self) -> Layout | None:
        return self.layouts[-1]


def no_full_rewrite(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the full rewrite (which scans the rows) fail, so a passing append was spliced."""
    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the append scanned the whole sheet instead of splicing")
    monkeypatch.setattr(append_mod, "editing", refuse)


def test_crc32_combine_matches_zlib() -> None:
    rnd = random.Random(7)
    for n in (0, 1, 3, 4096, 1 << 20, 1234567):
        a = rnd.randbytes(rnd.randint(0, 3000))
        b = rnd.randbytes(n)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_full_rewrite_lays_the_stream_out_in_three_flushed_pieces(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", data_rows(30))
    rec = Recorder()
    assert xlsx.append_rows(path, None, [{1: "new", 2: "run-new"}], rec) == [32]
    lay = rec.last
    assert lay is not None and lay.last_row == 32 and lay.part == SHEET
    st = path.stat()
    assert lay.stamp == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(SHEET)
        xml = z.read(SHEET)
    assert (info.header_offset, info.compress_size, info.file_size, info.CRC) == (lay.offset, lay.csize,
                                                                                 lay.usize, lay.crc)
    raw = path.read_bytes()
    start = lay.offset + 30 + int.from_bytes(raw[lay.offset + 26:lay.offset + 28], "little")
    stream = raw[start:start + lay.csize]
    assert stream[lay.head_c - 4:lay.head_c] == SYNC
    assert stream[lay.head_c + lay.rows_c - 4:lay.head_c + lay.rows_c] == SYNC
    head = zlib.decompressobj(-15).decompress(stream[:lay.head_c])
    assert head == xml[:lay.head_u] and head.endswith(b"<sheetData>")
    rows = xml[lay.head_u:lay.head_u + lay.rows_u]
    assert rows.endswith(b"</row>") and b'<row r="32"' in rows and zlib.crc32(rows) == lay.rows_crc
    assert xml[lay.head_u + lay.rows_u:].startswith(b"</sheetData>")


def test_spliced_append_reads_back_everywhere_and_keeps_other_members(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = decorated_book(tmp_path / "m.xlsx")
    full = tmp_path / "full.xlsx"
    rec = Recorder()
    xlsx.append_rows(path, None, [{1: "first", 2: "run-f", 6: 1}], rec)
    shutil.copyfile(path, full)
    before = members(path)
    new = [{1: "second", 2: "run-s", 5: 2.5}, {1: "third", 2: "run-t"}]
    with monkeypatch.context() as m:
        no_full_rewrite(m)
        assert xlsx.append_rows(path, None, new, rec, layout=rec.last) == [14, 15]   # below the merged note
    assert xlsx.append_rows(full, None, new) == [14, 15]
    assert members(path) == members(full)               # the same bytes a full rewrite gives
    assert_only_changed(before, members(path), {SHEET})
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
    vals = openpyxl_values(path)
    assert (vals["A14"], vals["B14"], vals["E14"], vals["A15"], vals["B15"]) == ("second", "run-s", 2.5, "third",
                                                                                 "run-t")
    assert calamine_rows(path)[14][:2] == ["third", "run-t"]
    assert xlsx.read_table(path).rows[-1].values[1] == "third"


def test_many_spliced_appends_in_a_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", data_rows(5))
    rec = Recorder()
    xlsx.append_rows(path, None, [{1: "s0", 2: "r0"}], rec)
    no_full_rewrite(monkeypatch)
    for i in range(1, 20):
        assert xlsx.append_rows(path, None, [{1: f"s{i}", 2: f"r{i}", 6: i}], rec, layout=rec.last) == [7 + i]
    assert rec.last is not None and rec.last.last_row == 26
    assert [r.values[1] for r in xlsx.read_table(path).rows[-20:]] == [f"s{i}" for i in range(20)]
    assert calamine_rows(path)[-1][:2] == ["s19", "r19"]
    assert openpyxl_values(path)["F26"] == 19


def test_empty_formatted_rows_after_the_data_stay_in_the_tail_and_merge(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Master")
    ws.write_row(0, 0, ["Strategy", "RunID"])
    ws.write_row(1, 0, ["a", "r-a"])
    fmt = wb.add_format({"bg_color": "#FFFF00"})
    for r in range(2, 8):
        ws.set_row(r, 18, fmt)                         # formatted, empty: rows 3..8
    wb.close()
    rec = Recorder()
    assert xlsx.append_rows(path, None, [{1: "b", 2: "r-b"}], rec) == [3]
    no_full_rewrite(monkeypatch)
    assert xlsx.append_rows(path, None, [{1: "c", 2: "r-c"}], rec, layout=rec.last) == [4]
    xml = members(path)[SHEET].decode()
    assert xml.count('<row r="4"') == 1 and 'ht="18"' in xml[xml.index('<row r="4"'):][:200]
    assert xml.count("<row ") == 8
    assert [r.values for r in xlsx.read_table(path).rows] == [{1: "a", 2: "r-a"}, {1: "b", 2: "r-b"},
                                                              {1: "c", 2: "r-c"}]


def test_a_foreign_save_between_two_spliced_appends_is_rewritten_whole_then_spliced_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openpyxl

    path = xlsxwriter_book(tmp_path / "m.xlsx", data_rows(4))
    rec = Recorder()
    xlsx.append_rows(path, None, [{1: "s1", 2: "r1"}], rec)
    xlsx.append_rows(path, None, [{1: "s2", 2: "r2"}], rec, layout=rec.last)
    stale = rec.last
    wb = openpyxl.load_workbook(path)                   # someone saves it in another program
    wb.active.cell(8, 1, "by hand")
    wb.save(path)
    assert stale is not None
    scans: list[int] = []
    real = append_mod.editing

    def counting(*a: Any, **k: Any) -> Any:
        scans.append(1)
        return real(*a, **k)
    monkeypatch.setattr(append_mod, "editing", counting)
    assert xlsx.append_rows(path, None, [{1: "s3", 2: "r3"}], rec, layout=stale) == [9]   # stale record
    assert scans == [1]
    assert xlsx.append_rows(path, None, [{1: "s4", 2: "r4"}], rec, layout=rec.last) == [10]
    assert scans == [1]                                 # spliced again
    assert [r.values.get(1) for r in xlsx.read_table(path).rows] == [
        *(f"strat_{i:03d}" for i in range(1, 5)), "s1", "s2", "by hand", "s3", "s4"]
    assert calamine_rows(path)[-1][:2] == ["s4", "r4"]
    assert openpyxl_values(path)["A10"] == "s4"


@pytest.mark.parametrize("forge", ["touched", "crc", "head_c", "rows_c", "part", "copied elsewhere"])
def test_a_record_that_does_not_describe_the_file_is_not_trusted(tmp_path: Path, forge: str) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", data_rows(40))
    rec = Recorder()
    xlsx.append_rows(path, None, [{1: "s1", 2: "r1"}], rec)
    lay = rec.last
    assert lay is not None
    if forge == "touched":
        os.utime(path, ns=(lay.stamp[1] + 10**9, lay.stamp[1] + 10**9))
    elif forge == "copied elsewhere":
        other = tmp_path / "copy.xlsx"
        shutil.copyfile(path, other)
        os.replace(other, path)
    else:
        forged = {"crc": lay.crc ^ 1, "head_c": lay.head_c - 1, "rows_c": lay.rows_c + 5,
                  "part": "xl/worksheets/sheet2.xml"}
        lay = dataclasses.replace(lay, **{forge: forged[forge]})
    with xlsx.package.Package(path) as pkg:
        assert xlsx.splice.verify(pkg, SHEET, lay) is None
    assert xlsx.append_rows(path, None, [{1: "s2", 2: "r2"}], rec, layout=lay) == [43]
    assert [r.values[1] for r in xlsx.read_table(path).rows[-2:]] == ["s1", "s2"]


def test_a_forged_rows_crc_is_caught_by_the_combined_crc(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", data_rows(10))
    rec = Recorder()
    xlsx.append_rows(path, None, [{1: "s1", 2: "r1"}], rec)
    assert rec.last is not None
    with xlsx.package.Package(path) as pkg:
        assert xlsx.splice.verify(pkg, SHEET, rec.last) is not None
        assert xlsx.splice.verify(pkg, SHEET, dataclasses.replace(rec.last, rows_crc=rec.last.rows_crc ^ 4)) is None


def test_layout_record_round_trips_and_rejects_other_shapes() -> None:
    lay = Layout((1, 2, 3, 4), SHEET, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)
    assert Layout.from_list(lay.to_list()) == lay
    for bad in ([], [1, 2], [[1, 2, 3], SHEET, *range(10)], [[1, 2, 3, 4], 5, *range(10)],
                [[1, 2, 3, 4], SHEET, *range(9)], [[1, 2, 3, 4], SHEET, "x", *range(9)], None):
        assert Layout.from_list(bad) is None  # type: ignore[arg-type]


def test_a_trusted_version_skips_the_xml_check_only_when_it_is_that_very_file(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from journal.xlsx import edit

    path = xlsxwriter_book(tmp_path / "m.xlsx", data_rows(10))
    checked: list[str] = []
    monkeypatch.setattr(edit, "VALIDATOR_MIN_BYTES", 1 << 40)           # check inline, so it can be seen
    real = edit.scan_sheet

    def spy(pkg: Any, part: str, validate: bool, keep_rest: bool = False) -> Any:
        checked.append("xml" if validate else "shape only")
        return real(pkg, part, validate, keep_rest)
    monkeypatch.setattr(edit, "scan_sheet", spy)
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]
    xlsx.append_rows(path, None, [{1: "a"}], checked=stamp)
    xlsx.append_rows(path, None, [{1: "b"}], checked=stamp)              # another version now
    assert checked == ["shape only", "xml"]


def test_sheet_append_keeps_the_layout_in_its_index_and_splices_the_next_commit(
        ws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from journal import workspace

    w = workspace.open_workspace(ws.root)
    sheet.append(w, [{"Strategy": "a", "RunID": "r-a"}])
    view = sheet.read(w)
    assert view.layout is not None and view.writable
    no_full_rewrite(monkeypatch)
    assert sheet.append(w, [{"Strategy": "b", "RunID": "r-b"}], view).numbers == [3]
    view = sheet.read(w)
    assert [r.strategy for r in view.rows] == ["a", "b"] and view.layout is not None
    assert [r.strategy for r in sheet.read(w, cache=False).rows] == ["a", "b"]


def test_libreoffice_reads_a_spliced_append(tmp_path: Path) -> None:
    path = decorated_book(tmp_path / "m.xlsx")
    rec = Recorder()
    assert xlsx.append_rows(path, None, [{1: "first", 2: "run-f"}], rec) == [13]
    assert xlsx.append_rows(path, None, [{1: "second", 2: "run-s", 6: 12}], rec, layout=rec.last) == [14]
    rows = soffice_csv(path, tmp_path / "lo")
    assert rows[0][:2] == ["Strategy", "RunID"]
    assert rows[12][:2] == ["first", "run-f"]
    assert rows[13][:2] == ["second", "run-s"] and rows[13][5] == "12"


def test_a_table_holding_the_last_row_grows_in_a_spliced_append(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = decorated_book(tmp_path / "m.xlsx", below=False)
    full = tmp_path / "full.xlsx"
    rec = Recorder()
    assert xlsx.append_rows(path, None, [{1: "first", 2: "run-f"}], rec) == [8]
    shutil.copyfile(path, full)
    with monkeypatch.context() as m:
        no_full_rewrite(m)
        assert xlsx.append_rows(path, None, [{1: "second", 2: "run-s"}], rec, layout=rec.last) == [9]
    xlsx.append_rows(full, None, [{1: "second", 2: "run-s"}])
    assert members(path) == members(full)
    assert b'ref="A1:G9"' in members(path)["xl/tables/table1.xml"]
    assert openpyxl_values(path)["A9"] == "second"


def test_libreoffice_saving_between_two_spliced_appends(tmp_path: Path) -> None:
    """LibreOffice as the foreign program: its save is rewritten whole, laid out, then spliced again."""
    path = xlsxwriter_book(tmp_path / "m.xlsx", data_rows(4))
    rec = Recorder()
    xlsx.append_rows(path, None, [{1: "s1", 2: "r1"}], rec)
    xlsx.append_rows(path, None, [{1: "s2", 2: "r2"}], rec, layout=rec.last)
    saved = soffice_convert(path, "xlsx", tmp_path / "lo-save")
    os.replace(saved, path)
    assert xlsx.append_rows(path, None, [{1: "s3", 2: "r3"}], rec, layout=rec.last) == [8]   # a stale record
    with xlsx.package.Package(path) as pkg:
        assert rec.last is not None and xlsx.splice.verify(pkg, SHEET, rec.last) is not None
    assert xlsx.append_rows(path, None, [{1: "s4", 2: "r4"}], rec, layout=rec.last) == [9]
    rows = soffice_csv(path, tmp_path / "lo-read")
    assert [r[:2] for r in rows[5:9]] == [["s1", "r1"], ["s2", "r2"], ["s3", "r3"], ["s4", "r4"]]
    assert calamine_rows(path)[8][:2] == ["s4", "r4"]


def test_an_append_right_after_check_append_on_the_same_file_scans_once(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The first commit after a foreign save: the gate's check_append scans (and checks) the sheet;
    the append that follows starts from that scan instead of reading the sheet again."""
    from journal.xlsx import edit

    path = xlsxwriter_book(tmp_path / "m.xlsx", data_rows(20))
    scans: list[int] = []
    real = edit.scan_sheet

    def counting(*a: Any, **k: Any) -> Any:
        scans.append(1)
        return real(*a, **k)
    monkeypatch.setattr(edit, "scan_sheet", counting)
    xlsx.check_append(path, None, 1, [1, 2])
    assert xlsx.append_rows(path, None, [{1: "a", 2: "r-a"}]) == [22]
    assert scans == [1]
    xlsx.check_append(path, None, 1, [1, 2])                    # another file now: scanned afresh
    os.utime(path, ns=(1, 1))                                   # and touched after its check
    assert xlsx.append_rows(path, None, [{1: "b", 2: "r-b"}]) == [23]
    assert scans == [1, 1, 1]
    assert [r.values[1] for r in xlsx.read_table(path).rows[-2:]] == ["a", "b"]
    assert calamine_rows(path)[-1][:2] == ["b", "r-b"]


def test_isal_and_zlib_pieces_mix_in_one_spliced_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts with and without python-isal share a workbook: each engine's pieces splice onto the other's."""
    from journal.xlsx import deflate
    if deflate.ENGINE != "isal":
        pytest.skip("python-isal is not installed (pip install 'sop-journal[fast]')")
    isal = deflate._isal
    path = xlsxwriter_book(tmp_path / "mix.xlsx", data_rows(5))
    rec = Recorder()
    xlsx.append_rows(path, None, [{1: "s0", 2: "r0"}], rec)             # full rewrite with ISA-L
    for i in range(1, 7):
        monkeypatch.setattr(deflate, "_isal", None if i % 2 else isal)    # zlib, ISA-L, zlib, …
        assert xlsx.append_rows(path, None, [{1: f"s{i}", 2: f"r{i}"}], rec, layout=rec.last) == [7 + i]
    assert rec.last is not None
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
    assert [r[:2] for r in calamine_rows(path)[-7:]] == [[f"s{i}", f"r{i}"] for i in range(7)]
    assert openpyxl_values(path)["A13"] == "s6"


def _copy_through(src: Path, out: Path, offset: int, length: int) -> int:
    from journal.xlsx.package import copy_range

    with open(src, "rb") as f, open(out, "wb") as g:
        g.write(b"head")                            # buffered, not yet flushed: must land before the copy
        n = copy_range(f, offset, length, g)
        g.write(b"tail")
    return n


@pytest.mark.parametrize("kernel", ["works", "absent", "EXDEV", "fails-part-way", "copies-nothing"])
def test_copy_range_gives_the_same_bytes_by_the_kernel_or_by_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   kernel: str) -> None:
    """The rows piece is copied kernel-side where Linux can (os.copy_file_range) and read and written
    otherwise; a call that fails at once or part way is finished by the plain copy, byte for byte."""
    import errno

    from journal.xlsx import package

    data = random.Random(3).randbytes(600_000)
    src = tmp_path / "src"
    src.write_bytes(data)
    calls: list[int] = []
    real = getattr(os, "copy_file_range", None)

    def fake(s: int, d: int, count: int, off_s: int | None = None, off_d: int | None = None) -> int:
        calls.append(count)
        if kernel == "EXDEV" or (kernel == "fails-part-way" and len(calls) > 1):
            raise OSError(errno.EXDEV if kernel == "EXDEV" else errno.EINVAL, "no")
        if kernel == "copies-nothing":
            return 0
        if kernel == "fails-part-way":
            count = 100_001
        if real is not None:
            return real(s, d, count, off_s, off_d)
        os.pwrite(d, os.pread(s, count, off_s or 0), off_d or 0)
        return min(count, max(0, len(data) - (off_s or 0)))

    if kernel == "absent":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    else:
        monkeypatch.setattr(os, "copy_file_range", fake, raising=False)
    monkeypatch.setattr(package.sys, "platform", "linux")
    out = tmp_path / "out"
    assert _copy_through(src, out, 1234, 500_000) == 500_000
    assert out.read_bytes() == b"head" + data[1234:501_234] + b"tail"
    assert (kernel == "absent") == (calls == [])
    assert _copy_through(src, out, 400_000, 500_000) == 200_000          # the source ends: fewer bytes, no error
    assert out.read_bytes() == b"head" + data[400_000:] + b"tail"


def test_a_spliced_append_copies_the_rows_the_same_with_or_without_the_kernel(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from journal.xlsx import package

    monkeypatch.setattr(package, "KERNEL_COPY_MIN", 0)           # the small test rows piece goes kernel-side too
    books = []
    source = xlsxwriter_book(tmp_path / "source.xlsx", data_rows(300))   # one book: XlsxWriter stamps the second
    for kernel in (True, False):
        path = Path(shutil.copyfile(source, tmp_path / f"m{kernel}.xlsx"))
        rec = Recorder()
        xlsx.append_rows(path, None, [{1: "s0", 2: "r0"}], rec)
        with monkeypatch.context() as m:
            no_full_rewrite(m)
            if not kernel:
                m.delattr(os, "copy_file_range", raising=False)
            assert xlsx.append_rows(path, None, [{1: "s1", 2: "r1"}], rec, layout=rec.last) == [303]
        books.append(members(path))
    assert books[0] == books[1]
    assert calamine_rows(tmp_path / "mTrue.xlsx")[-1][:2] == ["s1", "r1"]


def test_a_gate_that_refuses_after_its_read_stops_the_xml_check_it_started(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A read for a write (``prescan``) starts the XML check in a child; when no write follows (the gate
    refused), ``forget_scans`` stops it, and an append right after a prescan joins it and uses its scan."""
    from journal.xlsx import edit
    monkeypatch.setattr(edit, "VALIDATOR_MIN_BYTES", 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(300))
    xlsx.read_table(path, None, ["strategy", "runid"], prescan=True)
    ((*_, pending),) = edit._checked_scan
    assert pending is not None and pending.proc is not None
    child = pending.proc
    xlsx.forget_scans()
    assert child.poll() is not None and edit._checked_scan == []
    xlsx.read_table(path, None, ["strategy", "runid"], prescan=True)
    scans = []
    real = edit.scan_sheet
    monkeypatch.setattr(edit, "scan_sheet", lambda *a, **k: scans.append(1) or real(*a, **k))
    assert xlsx.append_rows(path, None, [{1: "x", 2: "y"}]) == [302]
    assert scans == []                           # the prescan's scan served the append: no second first pass
    assert [r.number for r in xlsx.read_table(path).rows][-1] == 302
