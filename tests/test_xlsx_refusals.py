"""Refusals: what the workbook engine will not read or write, and that a refusal changes nothing."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures_xlsx import data_rows, patch_member, xlsxwriter_book

from journal import fsops, xlsx
from journal.errors import SheetDamaged
from journal.xlsx import edit

SHEET = "xl/worksheets/sheet1.xml"
ROOT = Path(__file__).resolve().parent.parent

Op = Callable[[Path], object]
READ: Op = lambda p: xlsx.read_table(p)
APPEND: Op = lambda p: xlsx.append_rows(p, None, [{1: "x", 2: "y"}])
REMOVE: Op = lambda p: xlsx.remove_rows(p, None, [2])
ALL = {"read": READ, "append": APPEND, "remove": REMOVE}
WRITES = {"append": APPEND, "remove": REMOVE}


@pytest.fixture(params=["child", "inline"])
def validator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the whole-part XML check in a child process (as for big sheets) or in process."""
    if request.param == "child":
        monkeypatch.setattr(edit, "VALIDATOR_MIN_BYTES", 0)
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
    else:
        monkeypatch.setattr(os, "cpu_count", lambda: 1)
    return str(request.param)


def refused(path: Path, op: Op, match: str) -> None:
    """``op`` raises SheetDamaged matching ``match`` and leaves the folder exactly as it was."""
    listing = sorted(os.listdir(path.parent))
    raw = path.read_bytes()
    with pytest.raises(SheetDamaged, match=match) as e:
        op(path)
    assert e.value.exit_code == 5
    assert path.read_bytes() == raw
    assert sorted(os.listdir(path.parent)) == listing


@pytest.mark.parametrize("op", ALL.values(), ids=ALL.keys())
def test_not_a_zip(tmp_path: Path, op: Op) -> None:
    path = tmp_path / "m.xlsx"
    path.write_text("Strategy,RunID\na,b\n")
    refused(path, op, "not an .xlsx/.xlsm workbook")


@pytest.mark.parametrize("op", ALL.values(), ids=ALL.keys())
def test_ole_file_encrypted_or_xls(tmp_path: Path, op: Op) -> None:
    path = tmp_path / "m.xlsx"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(4096))
    refused(path, op, "encrypted workbook or a legacy .xls")


@pytest.mark.parametrize("op", ALL.values(), ids=ALL.keys())
def test_truncated_zip(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    path.write_bytes(path.read_bytes()[:-200])
    refused(path, op, "zip")


@pytest.mark.parametrize("op", ALL.values(), ids=ALL.keys())
@pytest.mark.usefixtures("validator")
def test_corrupt_member(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(40))
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(SHEET)
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 40
    raw[start:start + 8] = bytes(8)
    path.write_bytes(bytes(raw))
    refused(path, op, "cannot be inflated|not well-formed")


def _central_field(path: Path, member: str, field: str, value: int) -> None:
    """Overwrite one field of a member's central directory entry (crc, csize, usize)."""
    import struct
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        n = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46:at + 46 + n] == member.encode():
            struct.pack_into("<I", raw, at + {"crc": 16, "csize": 20, "usize": 24}[field], value)
            path.write_bytes(bytes(raw))
            return
        at = raw.find(b"PK\x01\x02", at + 4)
    raise AssertionError(member)


@pytest.mark.parametrize("op", ALL.values(), ids=ALL.keys())
@pytest.mark.parametrize("lie", ["crc", "usize-short", "usize-long", "csize-short"])
@pytest.mark.usefixtures("validator")
def test_a_sheet_part_whose_directory_entry_lies(tmp_path: Path, op: Op, lie: str) -> None:
    """The inflater checks the CRC-32 and the size the central directory declares, and never inflates
    past that size or reads past the compressed size."""
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(400))
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(SHEET)
    field, value = {"crc": ("crc", info.CRC ^ 1), "usize-short": ("usize", info.file_size - 10),
                    "usize-long": ("usize", info.file_size + 10),
                    "csize-short": ("csize", info.compress_size // 2)}[lie]
    _central_field(path, SHEET, field, value)
    refused(path, op, "cannot be inflated|Bad CRC|past its declared size|truncated")


@pytest.mark.parametrize("op", ALL.values(), ids=ALL.keys())
def test_missing_worksheet_part(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    with zipfile.ZipFile(path) as z:
        items = [(i, z.read(i)) for i in z.infolist() if i.filename != SHEET]
    with zipfile.ZipFile(path, "w") as z:
        for i, data in items:
            z.writestr(i, data)
    refused(path, op, "missing")


@pytest.mark.parametrize("op", ALL.values(), ids=ALL.keys())
def test_strict_ooxml(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    patch_member(path, "xl/workbook.xml", lambda b: b.replace(
        b"http://schemas.openxmlformats.org/spreadsheetml/2006/main", b"http://purl.oclc.org/ooxml/spreadsheetml/main"))
    refused(path, op, "Strict Open XML")


@pytest.mark.parametrize("op", ALL.values(), ids=ALL.keys())
def test_strict_worksheet_namespace(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    patch_member(path, SHEET, lambda b: b.replace(
        b"http://schemas.openxmlformats.org/spreadsheetml/2006/main", b"http://purl.oclc.org/ooxml/spreadsheetml/main"))
    refused(path, op, "Strict Open XML")


@pytest.mark.parametrize("op", ALL.values(), ids=ALL.keys())
@pytest.mark.usefixtures("validator")
def test_doctype(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    patch_member(path, SHEET, lambda b: b.replace(b"?>\n", b'?>\n<!DOCTYPE worksheet [<!ENTITY e "boom">]>', 1))
    refused(path, op, "DOCTYPE")


@pytest.mark.parametrize("op", WRITES.values(), ids=WRITES.keys())
@pytest.mark.usefixtures("validator")
def test_malformed_sheet_xml(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(5))
    patch_member(path, SHEET, lambda b: b.replace(b"</c></row>", b"</c></rwo>", 1))
    refused(path, op, "not well-formed")


@pytest.mark.parametrize("op", WRITES.values(), ids=WRITES.keys())
def test_rows_without_r_are_read_but_not_rewritten(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(3))
    patch_member(path, SHEET, lambda b: b.replace(b'<row r="3" ', b"<row ").replace(b'<c r="A3" ', b"<c "))
    t = xlsx.read_table(path, columns=["strategy"])
    assert [(r.number, r.values) for r in t.rows] == [(2, {1: "strat_001"}), (3, {1: "strat_002"}),
                                                      (4, {1: "strat_003"})]
    refused(path, op, "without an r attribute")


@pytest.mark.parametrize("op", WRITES.values(), ids=WRITES.keys())
@pytest.mark.parametrize("comment, match", [(b"<!-- note -->", "an XML comment"),
                                            (b"<!-- <row r='9'> -->", "an XML comment|out of order")])
@pytest.mark.usefixtures("validator")
def test_comment_in_sheet_data(tmp_path: Path, op: Op, comment: bytes, match: str) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    patch_member(path, SHEET, lambda b: b.replace(b"</row>", b"</row>" + comment, 1))
    refused(path, op, match)


@pytest.mark.parametrize("op", WRITES.values(), ids=WRITES.keys())
@pytest.mark.usefixtures("validator")
def test_processing_instruction_in_tail(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    patch_member(path, SHEET, lambda b: b.replace(b"</sheetData>", b"</sheetData><?sop hello?>", 1))
    refused(path, op, "processing instruction")


@pytest.mark.parametrize("op", WRITES.values(), ids=WRITES.keys())
def test_namespace_declared_inside_rows(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    patch_member(path, SHEET, lambda b: b.replace(b'<row r="2" ', b'<row r="2" xmlns:q="urn:q" ', 1))
    refused(path, op, "namespace declaration")


@pytest.mark.parametrize("op", WRITES.values(), ids=WRITES.keys())
def test_rows_out_of_order(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(3))
    patch_member(path, SHEET, lambda b: b.replace(b'<row r="3" ', b'<row r="9" '))
    refused(path, op, "out of order")


@pytest.mark.parametrize("op", ALL.values(), ids=ALL.keys())
def test_missing_named_worksheet(tmp_path: Path, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    named: Op = {READ: lambda p: xlsx.read_table(p, "Index"),
                 APPEND: lambda p: xlsx.append_rows(p, "Index", [{1: "x"}]),
                 REMOVE: lambda p: xlsx.remove_rows(p, "Index", [2])}[op]
    refused(path, named, "no worksheet named 'Index'")


def test_table_with_totals_row_cannot_grow(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "m.xlsx"
    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Master")
    ws.add_table("A1:B4", {"total_row": True, "data": [["a", 1], ["b", 2]],
                           "columns": [{"header": "Strategy", "total_string": "Total"},
                                       {"header": "RunID", "total_function": "count"}]})
    wb.close()
    refused(path, APPEND, "totals row")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SheetDamaged, match="no such file"):
        xlsx.read_table(tmp_path / "nope.xlsx")


# ---------------------------------------------------------------------------------------- atomic writes


def test_permission_error_propagates_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    raw = path.read_bytes()

    def locked(src: object, dst: object) -> None:
        raise PermissionError(13, "The process cannot access the file", str(dst))
    monkeypatch.setattr(os, "replace", locked)
    for op in (APPEND, REMOVE):
        with pytest.raises(PermissionError):
            op(path)
    assert path.read_bytes() == raw
    assert os.listdir(tmp_path) == ["m.xlsx"]


@pytest.mark.parametrize("op", WRITES.values(), ids=WRITES.keys())
def test_injected_io_error_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: Op) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    raw = path.read_bytes()
    # the facade's own injection (SOP_FAIL_AT=2:ENOSPC), set on the module so that it is undone after
    for name, value in (("_loaded", True), ("_counter", 0), ("_fail_at", 2), ("_fail_errno", errno.ENOSPC),
                        ("_fail_persist", False), ("_crash_at", None), ("_trace", None)):
        monkeypatch.setattr(fsops, name, value)
    with pytest.raises(OSError, match="injected"):
        op(path)
    assert path.read_bytes() == raw
    assert os.listdir(tmp_path) == ["m.xlsx"]


def test_crash_before_replace_leaves_old_workbook_and_a_temp_file(tmp_path: Path) -> None:
    path = xlsxwriter_book(tmp_path / "m.xlsx")
    raw = path.read_bytes()
    code = ("import sys; from journal import xlsx; "
            "xlsx.append_rows(sys.argv[1], None, [{1: 'x'}])")
    env = {**os.environ, "SOP_CRASH_AT": "2", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, timeout=60)
    assert p.returncode == 137
    assert path.read_bytes() == raw
    temps = [n for n in os.listdir(tmp_path) if n != "m.xlsx"]
    assert len(temps) == 1 and fsops.is_temp_name(temps[0])
    with zipfile.ZipFile(tmp_path / temps[0]) as z:      # the new workbook was complete before the replace
        assert z.testzip() is None


@pytest.mark.parametrize("cpus, threshold, child", [(1, 0, False), (2, 0, True), (2, 1 << 30, False)])
def test_when_the_validator_child_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, threshold: int,
                                       child: bool) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(edit, "VALIDATOR_MIN_BYTES", threshold)
    started: list[object] = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or real_popen(*a, **k))
    path = xlsxwriter_book(tmp_path / "o.xlsx", rows=data_rows(5))
    assert xlsx.append_rows(path, None, [{1: "x"}]) == [7]
    xlsx.remove_rows(path, None, [2])
    assert len(started) == (2 if child else 0)
    assert [r.values[1] for r in xlsx.read_table(path).rows][-1] == "x"


def test_a_failing_validator_child_falls_back_to_checking_in_process(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edit, "VALIDATOR_MIN_BYTES", 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(edit, "child_command", lambda *_a: [sys.executable, "-I", "-S", "-c", "import os; os._exit(9)"])
    path = xlsxwriter_book(tmp_path / "m.xlsx", rows=data_rows(5))
    assert xlsx.append_rows(path, None, [{1: "x"}]) == [7]
    patch_member(path, SHEET, lambda b: b.replace(b"</c></row>", b"</c></rwo>", 1))
    refused(path, APPEND, "not well-formed")


@pytest.mark.parametrize("engine", ["zlib", "isal"])
@pytest.mark.parametrize("lie", [None, "crc", "usize-long", "malformed"])
def test_the_validator_child_inflates_and_checks_the_part_itself(tmp_path: Path, engine: str,
                                                                 lie: str | None) -> None:
    """The child (``validate.py``, run without ``site``) inflates the part with ISA-L when the parent passes
    where python-isal lives, checks its size and CRC-32, and runs expat over it: exit 0, or 3 and why."""
    if engine == "isal":
        pytest.importorskip("isal")
    from journal.xlsx import deflate, validate
    rows = data_rows(400)
    if lie == "malformed":
        path = xlsxwriter_book(tmp_path / "m.xlsx", rows=rows)
        patch_member(path, SHEET, lambda x: x.replace(b"</sheetData>", b"</sheetDat>"))
    else:
        path = xlsxwriter_book(tmp_path / "m.xlsx", rows=rows)
        if lie is not None:
            with zipfile.ZipFile(path) as z:
                info = z.getinfo(SHEET)
            _central_field(path, SHEET, "crc" if lie == "crc" else "usize",
                           info.CRC ^ 1 if lie == "crc" else info.file_size + 10)
    home = deflate.isal_home() if engine == "isal" and deflate.ENGINE == "isal" else []
    p = subprocess.run([sys.executable, "-I", "-S", validate.__file__, str(path), SHEET, *home],
                       capture_output=True, text=True)
    if home:                                            # the child really inflates with ISA-L
        probe = (f"import sys; sys.path.insert(0, {str(Path(validate.__file__).parent)!r}); import validate; "
                 f"print(validate._engine({home[0]!r}).__name__)")
        assert subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True,
                              text=True).stdout.strip() == "isal.isal_zlib"
    if lie is None:
        assert (p.returncode, p.stdout) == (0, "")
    else:
        assert p.returncode == 3
        assert ("not well-formed" if lie == "malformed" else "cannot be inflated") in p.stdout
