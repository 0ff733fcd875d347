"""The sheet index cache (``.sop/cache/sheet-index-*.msgpack``): packed, searched in place, grown in place."""

from __future__ import annotations

import array
import sys
from pathlib import Path
from typing import Any

import pytest

from journal import sheet, workspace


@pytest.fixture
def w(ws: Any) -> workspace.Workspace:
    return workspace.open_workspace(ws.root)


def _sections_of(path: Path) -> list[bytes]:
    pk = sheet._Packed.load(path.read_bytes())
    return [bytes(p) for p in pk.parts]


def _cache_file(w: workspace.Workspace) -> Path:
    return sheet._cache_path(w, w.sheet)


def test_the_packed_sections_in_fixed_bytes(w: workspace.Workspace) -> None:
    sheet.append(w, [{"Strategy": "Alpha", "RunID": "r-1"}, {"Strategy": "Beta", "RunID": "R-2"}])
    secs = _sections_of(_cache_file(w))
    n = array.array("I", [2, 3]).tobytes()
    offs_s = array.array("I", [0, 6, 11]).tobytes()
    offs_r = array.array("I", [0, 4, 8]).tobytes()
    assert secs == [n, b"\0Alpha\0Beta\0", offs_s, b"\0r-1\0R-2\0", offs_r]
    raw = _cache_file(w).read_bytes()
    assert raw.startswith(b"sop-sheet-index 2 " + sys.byteorder[0].encode() + b"\n")


def test_lookups_search_the_packed_bytes_case_and_unicode_insensitively(w: workspace.Workspace) -> None:
    sheet.append(w, [{"Strategy": "Alpha", "RunID": "run-1"}, {"Strategy": "Ünïcode", "RunID": "RUN-2"},
                     {"Strategy": "alpha2", "RunID": "x"}])
    sheet._loaded.clear()
    view = sheet.read(w)
    assert view.packed is not None and view._lists is None
    assert [(r.number, r.strategy, r.run_id) for r in view.run_rows("Run-2")] == [(3, "Ünïcode", "RUN-2")]
    assert [r.number for r in view.strategy_rows("ALPHA")] == [2]
    assert [r.number for r in view.strategy_rows("ünïcode")] == [3]
    assert view.strategy_rows("alph") == [] and view.run_rows("run") == []
    assert view._lists is None                                   # nothing was unpacked for the look-ups
    assert view.last_number() == 4 and len(view) == 3
    assert view.numbers == [2, 3, 4] and view.strategies == ["Alpha", "Ünïcode", "alpha2"]
    assert view.keylists() == (["alpha", "ünïcode", "alpha2"], ["run-1", "run-2", "x"])


@pytest.mark.parametrize("second", ["Gamma", "Ωmega"])
def test_an_appended_index_is_the_index_packed_afresh(w: workspace.Workspace, second: str) -> None:
    """The index a commit writes (old sections as they are, the new rows' parts after them) equals the
    index of the new sheet read and packed from scratch (a column's first non-ASCII text re-packs it)."""
    sheet.append(w, [{"Strategy": "Alpha", "RunID": "run-1"}, {"Strategy": "", "RunID": "lonely"}])
    sheet._loaded.clear()
    sheet.append(w, [{"Strategy": "Beta", "RunID": "run-2"}, {"Strategy": second, "RunID": "run-3"}],
                 sheet.read(w))
    grown = _sections_of(_cache_file(w))
    sheet._loaded.clear()
    _cache_file(w).unlink()
    view = sheet.read(w)                                         # parsed from the workbook, cached anew
    assert [r.strategy for r in view.rows] == ["Alpha", "", "Beta", second]
    assert _sections_of(_cache_file(w)) == grown


def test_an_index_of_another_version_or_format_is_read_again(w: workspace.Workspace) -> None:
    sheet.append(w, [{"Strategy": "Alpha", "RunID": "run-1"}])
    f = _cache_file(w)
    for bad in (b"", b"sop-sheet-index 1 l\n", f.read_bytes()[:-3], f.read_bytes() + b"x"):
        sheet._loaded.clear()
        f.write_bytes(bad)
        view = sheet.read(w)
        assert [r.strategy for r in view.rows] == ["Alpha"]
        assert sheet._Packed.load(f.read_bytes()).hdr.count == 1      # rewritten


def test_the_index_is_loaded_once_per_command_while_the_sheet_is_unchanged(w: workspace.Workspace,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sheet.append(w, [{"Strategy": "Alpha", "RunID": "run-1"}])
    sheet._loaded.clear()
    loads: list[int] = []
    real = sheet._Packed.load

    def counting(data: bytes) -> sheet._Packed:
        loads.append(1)
        return real(data)
    monkeypatch.setattr(sheet._Packed, "load", staticmethod(counting))
    a = sheet.read(w)
    assert sheet.read(w) is a and loads == [1]
    sheet.append(w, [{"Strategy": "Beta", "RunID": "run-2"}], a)
    assert [r.strategy for r in sheet.read(w).rows] == ["Alpha", "Beta"] and loads == [1, 1]
    w2 = workspace.open_workspace(w.root)                         # the next command looks at the cache again
    assert sheet.read(w2) is sheet.read(w2) and loads == [1, 1, 1]


@pytest.mark.parametrize("batches", [
    [["Alpha", "beta"], ["Ωmega", "", "GAMMA"], ["delta"]],        # a column's first non-ASCII text mid-way
    [["Ünï"], ["a", "B"]],                                          # non-ASCII from the first batch
    [["a"], [], ["B", "c"]],                                        # an empty batch
    [[], []],                                                       # no rows at all
])
def test_an_index_packed_chunk_by_chunk_is_the_index_packed_at_once(batches: list[list[str]]) -> None:
    """The reader packs the index as each chunk of the sheet arrives (:class:`sheet._Packer`); its sections
    are those of the whole lists packed in one go, and its look-ups find the same rows."""
    packer = sheet._Packer()
    n = 1
    for texts in batches:
        numbers = list(range(n + 1, n + 1 + len(texts)))
        n += len(texts)
        packer.add(numbers, texts, [f"run-{t.lower()}" for t in texts])
    pk = packer.packed()
    everything = [t for b in batches for t in b]
    whole = sheet.SheetView(Path("x.xlsx"), "M", 1, {}, {}, lists=(list(range(2, 2 + len(everything))), everything,
                                                                   [f"run-{t.lower()}" for t in everything]))
    secs, ascii_ = sheet._sections(whole)
    assert [bytes(p) for p in pk.parts] == [b"".join(bytes(x) for x in sec) for sec in secs]
    assert list(pk.hdr.ascii) == ascii_ and len(pk) == len(everything)
    packed = sheet.SheetView(Path("x.xlsx"), "M", 1, {}, {}, packed=pk)
    for t in everything:
        if t:
            assert [r.number for r in packed.strategy_rows(t.swapcase())] == \
                   [r.number for r in whole.strategy_rows(t)] != []
    assert packed.keylists() == whole.keylists()


@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_which_keys_are_present_is_answered_from_the_packed_keys_piece_by_piece(
        step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SheetView.present`` splits the packed keys a piece at a time (the lost-row check's question: which
    of the ledger's run ids are on the sheet) and answers as the whole set of keys would."""
    monkeypatch.setattr(sheet, "_PRESENT_STEP", step)
    strategies = ["Alpha", "", "Ωmega", "beta", "alpha"]
    runs = ["r-1", "R-2", "", "run-Ü", "r-5"]
    packer = sheet._Packer()
    packer.add([2, 3], strategies[:2], runs[:2])
    packer.add([4, 5, 6], strategies[2:], runs[2:])
    packed = sheet.SheetView(Path("x.xlsx"), "M", 1, {}, {}, packed=packer.packed())
    lists = sheet.SheetView(Path("x.xlsx"), "M", 1, {}, {}, lists=([2, 3, 4, 5, 6], strategies, runs))
    asked = ["r-1", "r-2", "run-ü", "r-5", "r-9", "r", "-1", ""]
    assert packed.present(1, asked) == lists.present(1, asked) == {"r-1", "r-2", "run-ü", "r-5"}
    assert packed.present(0, ["alpha", "ωmega", "gamma"]) == {"alpha", "ωmega"}
    assert packed.present(1, []) == set()
    assert packed._lists is None and packed._keylists is None        # nothing was unpacked
