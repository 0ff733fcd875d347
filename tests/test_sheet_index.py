"""The sheet index cache (``.sop/cache/sheet-index-*.msgpack``): packed, searched in place, grown in place."""

from __future__ import annotations

import array
import functools
import os
import sys
import zlib
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


def test_the_order_sections_in_fixed_bytes(w: workspace.Workspace) -> None:
    """Each column's row indexes sorted by key (UTF-8 bytes; ties by index) end the file."""
    sheet.append(w, _rows(("beta", "r-2"), ("Alpha", "R-1"), ("", "r-1"), ("Ωmega", "a")))
    pk = sheet._Packed.load(_cache_file(w).read_bytes())
    assert pk.ordered and pk.hdr.sizes[-2:] == [16, 16]
    orders = [bytes(pk.raw[s:e]) for s, e in pk.spans[pk.order_at:]]
    assert orders == [array.array("I", [2, 1, 0, 3]).tobytes(), array.array("I", [3, 1, 2, 0]).tobytes()]
    assert pk.spans[-1][1] == len(pk.raw)


def test_a_cache_file_without_order_sections_is_searched_whole_and_ordered_when_rewritten(
        w: workspace.Workspace) -> None:
    """An older sop's file (no order sections) still answers; the next file written has them."""
    sheet.append(w, _rows(("Alpha", "run-1"), ("Ünï", "run-2")))
    view = _loaded_again(w)
    secs, ascii_ = sheet._sections(view)
    assert sheet._write_index(w, view, secs, len(view), ascii_)          # as sop 2026-12 wrote it
    view = _loaded_again(w)
    assert view.packed is not None and not view.packed.ordered
    assert [r.number for r in view.strategy_rows("ÜNÏ")] == [3] and view.run_rows("RUN-1")[0].number == 2
    sheet.append(w, _rows(("Beta", "run-3")), view)
    view = _loaded_again(w)
    assert view.packed is not None and view.packed.ordered
    assert [r.number for r in view.strategy_rows("ünï")] == [3] and view.strategy_rows("beta")[0].number == 4


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
    monkeypatch.setattr(sheet, "_PRESENT_LOOKUPS", 0)
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


# -- the delta file: the rows appended since the cache file was written

def _delta_file(w: workspace.Workspace) -> Path:
    return sheet._delta_path(w, w.sheet)


def _fresh(w: workspace.Workspace) -> sheet.SheetView:
    """The index of the sheet on disk, parsed from the workbook (no cache)."""
    return sheet.read(w, cache=False)


def _same_rows(a: sheet.SheetView, b: sheet.SheetView) -> None:
    assert (a.numbers, a.strategies, a.run_ids) == (b.numbers, b.strategies, b.run_ids)
    assert len(a) == len(b) and a.last_number() == b.last_number()


def _loaded_again(w: workspace.Workspace) -> sheet.SheetView:
    """What the next command gets from the cache (None of this command's memory)."""
    sheet._loaded.clear()
    return sheet.read(w)


@pytest.fixture
def small_deltas(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delta of up to 3 rows on any cache file of 3 rows or more (at 1M rows: 4,096)."""
    monkeypatch.setattr(sheet, "DELTA_RATIO", 1)
    monkeypatch.setattr(sheet, "DELTA_MAX", 3)


def _rows(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"Strategy": s, "RunID": r} for s, r in pairs]


BASE = _rows(("Alpha", "run-1"), ("Beta", "run-2"), ("", "lonely"), ("Gamma", "run-3"))


def test_a_commit_writes_the_new_rows_in_a_delta_and_leaves_the_cache_file_alone(
        w: workspace.Workspace, small_deltas: None) -> None:
    sheet.append(w, BASE)                                          # 4 rows: the cache file (no delta yet)
    assert not _delta_file(w).exists()
    base_bytes = _cache_file(w).read_bytes()
    sheet.append(w, _rows(("Delta", "RUN-4")), _loaded_again(w))
    sheet.append(w, _rows(("Ωmega", "run-5"), ("delta2", "run-6")), _loaded_again(w))
    assert _cache_file(w).read_bytes() == base_bytes                # not rewritten: 3 rows in the delta
    view = _loaded_again(w)
    assert view.packed is not None and view.packed.hdr.count == 4 and len(view.packed.extra[0]) == 3
    _same_rows(view, _fresh(w))
    assert view.writable and view.layout is not None                 # the delta's version: sop wrote it
    assert [r.number for r in view.strategy_rows("DELTA")] == [6]
    assert [r.number for r in view.strategy_rows("ΩMEGA")] == [7]    # names.key: NFC, casefold
    assert [(r.number, r.strategy) for r in view.run_rows("run-4")] == [(6, "Delta")]
    assert [r.number for r in view.strategy_rows("alpha")] == [2]    # a row of the cache file
    assert view.strategy_rows("delt") == [] and view.run_rows("run-7") == []
    assert view.keylists() == (["alpha", "beta", "", "gamma", "delta", "ωmega", "delta2"],
                               ["run-1", "run-2", "lonely", "run-3", "run-4", "run-5", "run-6"])


def test_a_delta_past_its_limit_is_compacted_into_a_cache_file_equal_to_one_packed_afresh(
        w: workspace.Workspace, small_deltas: None) -> None:
    sheet.append(w, BASE)
    for i, s in enumerate(["D1", "Ünï", "D3", "D4", "Ωmega", "D6"]):
        sheet.append(w, _rows((s, f"run-d{i}")), _loaded_again(w))
        view = _loaded_again(w)
        _same_rows(view, _fresh(w))
        assert [r.number for r in view.strategy_rows(s.lower())] == [len(BASE) + 2 + i]
    view = _loaded_again(w)
    assert view.packed is not None and view.packed.hdr.count == 8    # compacted at the 4th delta row (D4)
    assert view.packed.extra[0] == [10, 11]
    before = _cache_file(w).read_bytes()
    _fresh_view = _fresh(w)
    # the cache file a compaction wrote holds the same sections (orders too) as one packed from scratch
    pk_compacted = sheet._Packed.load(before)
    sheet._loaded.clear()
    _cache_file(w).unlink()
    _delta_file(w).unlink()
    scratch = sheet.read(w)                                        # the workbook parsed, all 10 rows packed
    pk_scratch = sheet._Packed.load(_cache_file(w).read_bytes())
    assert pk_scratch.hdr.count == 10 and pk_scratch.ordered and pk_compacted.ordered
    _same_rows(scratch, _fresh_view)
    rows8 = sheet.SheetView(w.sheet, "", 1, {}, {}, lists=(scratch.numbers[:8], scratch.strategies[:8],
                                                           scratch.run_ids[:8]))
    secs, _ascii = sheet._sections(rows8)
    assert [bytes(p) for p in pk_compacted.parts] == [b"".join(bytes(x) for x in s) for s in secs]
    assert ([bytes(pk_compacted.raw[s:e]) for s, e in pk_compacted.spans[pk_compacted.order_at:]]
            == sheet._orders_for(rows8))


def _put(path: Path, data: bytes) -> None:
    """Replace a cache file as sop does (a new file in its place), never writing into one held open."""
    tmp = path.with_name(path.name + ".test-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_a_delta_that_does_not_match_is_not_used(w: workspace.Workspace, small_deltas: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sheet.append(w, BASE)
    sheet.append(w, _rows(("Delta", "run-4")), _loaded_again(w))
    base, good = _cache_file(w).read_bytes(), _delta_file(w).read_bytes()
    fresh = _fresh(w)
    reads: list[int] = []
    real = sheet._read

    def counting(*a: Any) -> sheet.SheetView:
        reads.append(1)
        return real(*a)
    monkeypatch.setattr(sheet, "_read", counting)
    magic = len(sheet._DELTA_MAGIC)
    body_at = magic + 4 + int.from_bytes(good[magic:magic + 4], "little")
    assert good[-4:] == b"un-4"
    flipped = good[:-1] + b"5"                          # run-5 for run-4: only the CRC tells
    stamp = sheet._stamp(w.sheet)
    base_stamp = sheet._Packed.load(base).hdr.stamp

    def forged(base_of: list[int], count: int, version: list[int]) -> bytes:
        return sheet._encode_delta_file((base_of, count), [sheet._Version(version, 1, True, None)],
                                        ([6], ["Delta"], ["run-4"]))
    assert sheet._load_delta(forged(base_stamp, 4, stamp), sheet._Packed.load(base), stamp) is not None
    for bad in (b"", good[:magic], good[:body_at], good[:-1], good + b"\0", flipped, b"x" + good[1:],
                forged([1, 2, 3, 4, 5], 4, stamp), forged(base_stamp, 3, stamp), forged(base_stamp, 4, base_stamp)):
        _put(_cache_file(w), base)                      # the cache file of the version before the delta's
        _put(_delta_file(w), bad)
        reads.clear()
        view = _loaded_again(w)
        assert reads == [1]                             # not believed: the workbook was read again
        _same_rows(view, fresh)
    _put(_cache_file(w), base)
    _put(_delta_file(w), good)
    reads.clear()
    view = _loaded_again(w)
    _same_rows(view, fresh)
    assert reads == [] and view.packed is not None and view.packed.extra[0] == [6]


def test_rows_in_a_delta_whose_numbers_do_not_follow_the_cache_file_are_not_believed(
        w: workspace.Workspace, small_deltas: None) -> None:
    sheet.append(w, BASE)
    sheet.append(w, _rows(("Delta", "run-4")), _loaded_again(w))
    pk = sheet._Packed.load(_cache_file(w).read_bytes())
    stamp = sheet._stamp(w.sheet)
    for nums in ([5], [0], [7, 6], [1 << 32]):
        data = sheet._encode_delta_file((pk.hdr.stamp, pk.hdr.count), [sheet._Version(stamp, len(nums), True, None)],
                                        (nums, ["Delta"] * len(nums), ["run-4"] * len(nums)))
        assert sheet._load_delta(data, pk, stamp) is None
    good = sheet._encode_delta_file((pk.hdr.stamp, pk.hdr.count), [sheet._Version(stamp, 1, True, None)],
                                    ([6], ["Delta"], ["run-4"]))
    assert sheet._load_delta(good, pk, stamp) is not None


def test_the_delta_file_in_fixed_bytes() -> None:
    data = sheet._encode_delta_file(([10, 20, 30, 0, 40], 2), [sheet._Version([11, 21, 31, 0, 41], 1, True, None)],
                                    ([7], ["Ωmega"], ["r-1"]))
    body = b"\x93\x91\x07\x91\xa6\xce\xa9mega\x91\xa3r-1"
    hdr = (b"\x94\x95\x0a\x14\x1e\x00\x28\x02\x91\x94\x95\x0b\x15\x1f\x00\x29\x01\xc3\xc0"
           + b"\xce" + zlib.crc32(body).to_bytes(4, "big"))
    assert data == b"sop-sheet-delta 1\n" + len(hdr).to_bytes(4, "little") + hdr + body


def test_a_failed_replace_leaves_a_cache_that_still_describes_the_old_file(
        w: workspace.Workspace, small_deltas: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The delta names both versions: should the new workbook never take the old one's place (a crash, a
    PermissionError on Windows), the old one is still found in the cache, with its layout."""
    from journal import fsops

    sheet.append(w, BASE)
    sheet.append(w, _rows(("Delta", "run-4")), _loaded_again(w))     # the old version is base + delta
    old_view = _loaded_again(w)
    real = fsops.replace

    def refuse(src: Path, dst: Path, pauses: Any = None) -> None:
        if Path(dst) == w.sheet:
            raise PermissionError(13, "held open")
        real(src, dst, pauses)
    monkeypatch.setattr(fsops, "replace", refuse)
    with pytest.raises(PermissionError):
        sheet.append(w, _rows(("Late", "run-9")), old_view)
    monkeypatch.setattr(fsops, "replace", real)
    monkeypatch.setattr(sheet, "_read", lambda *a: pytest.fail("read the workbook again"))
    view = _loaded_again(w)
    assert [r.strategy for r in view.rows] == ["Alpha", "Beta", "", "Gamma", "Delta"]
    assert view.layout == old_view.layout and view.writable
    assert view.strategy_rows("late") == []


def test_a_look_up_reads_a_few_bytes_of_the_cache_file_not_all_of_it(w: workspace.Workspace,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sheet.append(w, _rows(*((f"S{i:03d}", f"run-{i:03d}") for i in range(300))))
    view = _loaded_again(w)
    pk = view.packed
    assert pk is not None and pk.ordered
    assert isinstance(pk.src, sheet._File) == (sys.platform != "win32")
    assert [r.number for r in view.strategy_rows("s150")] == [152]
    assert [r.run_id for r in view.run_rows("RUN-299")] == ["run-299"]
    assert view.last_number() == 301 and len(view) == 300
    if isinstance(pk.src, sheet._File):
        assert pk._raw is None                                      # nothing read whole
    finds: list[int] = []
    real = pk.find
    monkeypatch.setattr(pk, "find", lambda c, k: finds.append(c) or real(c, k))
    for _ in range(3):
        assert view.strategy_rows("S007")[0].number == 9 and view.run_rows("nope") == []
    assert finds == [0, 1]                                           # each name looked up once


def test_on_a_network_share_or_windows_the_cache_file_is_read_whole_not_held_open(
        w: workspace.Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another host (or Windows itself) may not replace a file held open: there it is read and let go."""
    from journal import fstype

    sheet.append(w, _rows(("Alpha", "run-1"), ("Beta", "run-2")))
    monkeypatch.setattr(fstype, "network_mount", lambda p: fstype.Mount("/mnt/share", "cifs", "//srv/share"))
    view = _loaded_again(w)
    assert view.packed is not None and isinstance(view.packed.src, bytes)
    assert [r.number for r in view.strategy_rows("BETA")] == [3] and view.run_rows("run-1")[0].strategy == "Alpha"
    monkeypatch.undo()
    monkeypatch.setattr(sheet, "_HOLD_OPEN", False)
    view = _loaded_again(w)
    assert view.packed is not None and isinstance(view.packed.src, bytes)
    assert [r.number for r in view.strategy_rows("alpha")] == [2]


@pytest.mark.parametrize("lookups", [0, 2000])
def test_which_keys_are_present_counts_the_delta_rows(w: workspace.Workspace, small_deltas: None,
                                                      lookups: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows a commit wrote to the delta file are on the sheet for ``present`` too, whether it splits the
    file's keys or bisects their order."""
    monkeypatch.setattr(sheet, "_PRESENT_LOOKUPS", lookups)
    sheet.append(w, BASE)
    sheet.append(w, _rows(("Delta", "RUN-4")), _loaded_again(w))
    view = _loaded_again(w)
    assert view.packed is not None and view.packed.extra[0]          # the last row lives in the delta
    asked = ["run-1", "run-3", "run-4", "lonely", "run-9"]
    assert view.present(1, asked) == _fresh(w).present(1, asked) == {"run-1", "run-3", "run-4", "lonely"}


def test_order_sections_sorted_a_piece_at_a_time_equal_a_plain_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tagged sort (:func:`sheet._sorted_order`) against ``sorted(range(n), key=keys)``: duplicates
    (ties by index), keys that begin others, empty keys, non-ASCII text, an ASCII column lowered piece
    by piece, and pieces that split the rows anywhere (a few rows per piece here)."""
    import random

    rnd = random.Random(7)
    alphabet = ["a", "B", "b", "z", "Z", "0", "-", "é", "Ω", "ß", "日", "\U0001f600"]
    for trial in range(40):
        ascii_only = trial % 2 == 0
        letters = [c for c in alphabet if c.isascii()] if ascii_only else alphabet
        pool = ["".join(rnd.choice(letters) for _ in range(rnd.randint(0, 4))) for _ in range(12)]
        strategies = [rnd.choice(pool) for _ in range(rnd.randint(0, 60))]
        run_ids = [rnd.choice(pool) for _ in strategies]
        more = (sheet._keys([rnd.choice(pool) for _ in range(3)]), sheet._keys([rnd.choice(pool) for _ in range(3)]))
        monkeypatch.setattr(sheet, "ORDER_PIECE", rnd.randint(1, 7))
        packer = sheet._Packer()
        packer.add(list(range(2, len(strategies) + 2)), strategies, run_ids)
        view = sheet.SheetView(Path("x.xlsx"), "Master", 1, {}, {}, packed=packer.packed())
        listed = sheet.SheetView(Path("x.xlsx"), "Master", 1, {}, {},
                                 lists=(list(range(2, len(strategies) + 2)), strategies, run_ids))
        for v in (view, listed):
            got = sheet._orders_for(v, more)
            for c, texts in enumerate((strategies, run_ids)):
                keys = sheet._keys(texts) + more[c]                   # more: keys already
                want = sorted(range(len(keys)), key=lambda i: (keys[i].encode(), i))
                assert array.array("I", got[c]).tolist() == want, (trial, c, v is view, keys)
                assert sorted(range(len(keys)), key=keys.__getitem__) == want    # str order is bytes order


def test_a_cell_escaping_a_nul_or_a_lone_surrogate_reads_as_a_replacement_character(tmp_path: Path) -> None:
    """``_x0000_`` and ``_xD800_`` (OOXML escapes another writer may leave) would put a NUL or a lone
    surrogate in a text the index keeps NUL-separated and in UTF-8: they read as U+FFFD, the sheet
    reads (packed, listed, ordered) and the other rows are found."""
    from fixtures_xlsx import openpyxl_book, patch_member

    root = tmp_path / "ws"
    (root / "backtests").mkdir(parents=True)
    book = openpyxl_book(root / "backtests" / "Strategy_Master_Filter.xlsx",
                         [["A_NUL_", "run-1"], ["Beta", "R_SUR_"], ["Gamma", "run-3"]])
    patch_member(book, "xl/worksheets/sheet1.xml",
                 lambda x: x.replace(b"A_NUL_", b"A_x0000_z").replace(b"R_SUR_", b"r_xD800_"))
    from conftest import sop

    sop("init", "-C", str(root))
    w = workspace.open_workspace(root)
    for view in (sheet.read(w), sheet.read(w, all_columns=True)):
        assert [r.strategy for r in view.rows] == ["A\ufffdz", "Beta", "Gamma"]
        assert [r.run_id for r in view.rows] == ["run-1", "r\ufffd", "run-3"]
        assert view.strategy_rows("gamma")[0].number == 4 and view.run_rows("RUN-1")[0].number == 2
        got = sheet._orders_for(view)
        assert [array.array("I", o).tolist() for o in got] == [[0, 1, 2], [0, 2, 1]]   # "u" < U+FFFD


def test_order_sections_of_many_ties_several_batches_and_delta_rows(w: workspace.Workspace,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Over 256 equal keys (an index past one byte: a tag in the wrong byte order would sort 256 before
    1), rows packed in several batches with a column's first non-ASCII text in a later one, and rows
    in the delta file, against ``sorted(range(n), key=keys)``."""
    monkeypatch.setattr(sheet, "ORDER_PIECE", 100)
    strategies = ["same"] * 300 + ["Beta", "alpha", "Ärger", "same"] + ["x"] * 3
    run_ids = [f"r{i % 7}" for i in range(len(strategies))]
    packer = sheet._Packer()
    for a in range(0, len(strategies), 150):
        packer.add(list(range(a + 2, min(a + 150, len(strategies)) + 2)), strategies[a:a + 150],
                   run_ids[a:a + 150])
    view = sheet.SheetView(Path("x.xlsx"), "Master", 1, {}, {}, packed=packer.packed())
    for v, texts in ((view, (strategies, run_ids)),):
        got = sheet._orders_for(v)
        for c in (0, 1):
            keys = sheet._keys(texts[c])
            assert array.array("I", got[c]).tolist() == sorted(range(len(keys)), key=keys.__getitem__)
    # the same through the workspace: a cache file, then rows kept in its delta file
    sheet.append(w, [{"Strategy": s, "RunID": r} for s, r in zip(strategies, run_ids, strict=True)])
    more = [{"Strategy": s, "RunID": f"d{i}"} for i, s in enumerate(["same", "ärger", "AAA", "same"])]
    sheet.append(w, more)
    loaded = _loaded_again(w)
    assert loaded.packed is not None and loaded.packed.extra[0]                  # the delta's rows are there
    for c, texts in enumerate((strategies + [r["Strategy"] for r in more], run_ids + [r["RunID"] for r in more])):
        keys = sheet._keys(texts)
        order = sheet._sorted_order(functools.partial(sheet._key_pieces, loaded, c, []), len(keys))
        assert array.array("I", order).tolist() == sorted(range(len(keys)), key=keys.__getitem__)
