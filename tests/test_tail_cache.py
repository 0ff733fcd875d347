"""The tail cache: a writer reads only the bytes after what the last command verified (wal *Tail*)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest

import journal
from journal import errors, wal, workspace


@pytest.fixture
def root(api_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(wal, "TAIL_CACHE_BYTES", 1)        # every segment counts as big here
    return api_root


def commit_some(root: Path, names: list[str]) -> None:
    for s in names:
        with journal.transaction(s, root=root) as tx:
            (Path(tx.strategy_dir) / "run_metadata.json").write_text(
                json.dumps({"run_id": tx.run_id, "strategy": tx.strategy}))


def full_load(ws: workspace.Workspace) -> wal.Loaded:
    keep = wal.tail_path(ws).read_bytes()
    wal.tail_path(ws).unlink()
    try:
        return wal.load(ws)
    finally:
        wal.tail_path(ws).write_bytes(keep)


def same(a: wal.Loaded, b: wal.Loaded) -> None:
    assert (a.seq, a.hash, a.active, a.active_bytes, a.active_id, a.sheet_fp) == \
        (b.seq, b.hash, b.active, b.active_bytes, b.active_id, b.sheet_fp)
    assert {k: v for k, v in a.states.items() if v.state in wal.OPEN_STATES} == \
        {k: v for k, v in b.states.items() if v.state in wal.OPEN_STATES}
    rows: dict[str, object] = {}
    rows_b: dict[str, object] = {}
    for op in a.ledger_ops:
        wal.ledger.apply_op(rows, op)       # type: ignore[arg-type]
    for op in b.ledger_ops:
        wal.ledger.apply_op(rows_b, op)     # type: ignore[arg-type]
    assert rows == rows_b and rows


def test_a_load_from_the_cache_equals_a_full_read(root: Path) -> None:
    commit_some(root, ["a", "b"])
    b = journal.begin("open_one", root=root)                 # an open transaction crosses the cache
    ws = workspace.open_workspace(root)
    tc = msgspec.msgpack.decode(wal.tail_path(ws).read_bytes(), type=wal.TailCache)
    assert b.txid in tc.open and tc.seq > 0
    commit_some(root, ["c"])                                 # more records after the cache's end
    fast, slow = wal.load(ws), full_load(ws)
    same(fast, slow)
    assert b.txid in fast.states


def test_only_the_bytes_after_the_cache_are_read(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit_some(root, ["a", "b", "c"])
    ws = workspace.open_workspace(root)
    tc = msgspec.msgpack.decode(wal.tail_path(ws).read_bytes(), type=wal.TailCache)
    seen: list[int] = []
    real = wal.read_segment

    def spy(path: Path, **kw: object) -> object:
        seen.append(len(kw["data"]) if kw.get("data") is not None else path.stat().st_size)   # type: ignore[arg-type]
        return real(path, **kw)                               # type: ignore[arg-type]
    monkeypatch.setattr(wal, "read_segment", spy)
    j = wal.load(ws)
    assert seen == [j.active_bytes - tc.bytes] == [0]


@pytest.mark.parametrize("harm", ["last line changed", "file replaced", "shorter", "cache garbage"])
def test_a_cache_that_does_not_describe_the_file_means_a_full_read(root: Path, harm: str) -> None:
    commit_some(root, ["a", "b"])
    ws = workspace.open_workspace(root)
    tc = msgspec.msgpack.decode(wal.tail_path(ws).read_bytes(), type=wal.TailCache)
    seg = ws.journal_dir / tc.segment
    data = seg.read_bytes()
    if harm == "last line changed":              # the cached last record edited: the full read calls it torn
        i = tc.last + data[tc.last:].index(b'"type":"') + 8
        seg.write_bytes(data[:i] + b"X" + data[i + 1:])
        j = wal.load(ws)
        assert j.torn is not None and j.torn.offset == tc.last and j.seq == tc.seq - 1
        return
    if harm == "file replaced":                  # same bytes, another inode: read whole, same result
        tmp = seg.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, seg)
    elif harm == "shorter":                      # cut back by a record: read whole, and it ends where it ends now
        seg.write_bytes(data[:tc.last])
        j = wal.load(ws)
        assert (j.seq, j.active_bytes, j.torn) == (tc.seq - 1, tc.last, None)
        return
    else:
        wal.tail_path(ws).write_bytes(b"\x00garbage")
    j = wal.load(ws)
    assert j.active_bytes == len(data) and j.seq == tc.seq


def test_damage_after_the_cache_is_still_found_and_a_torn_tail_still_cut(root: Path) -> None:
    commit_some(root, ["a"])
    ws = workspace.open_workspace(root)
    tc = msgspec.msgpack.decode(wal.tail_path(ws).read_bytes(), type=wal.TailCache)
    seg = ws.journal_dir / tc.segment
    with open(seg, "ab") as f:
        f.write(b'{"seq":999,"torn')                          # a torn tail after the cached part
    j = wal.load(ws)
    assert j.torn is not None and j.seq == tc.seq
    commit_some(root, ["b"])                                  # the next writer cuts it and goes on
    assert wal.load(ws).torn is None
    data = seg.read_bytes()
    tc = msgspec.msgpack.decode(wal.tail_path(ws).read_bytes(), type=wal.TailCache)
    with open(seg, "ab") as f:                                 # a complete line with a bad sum, then another
        f.write(b'{"not":"a record"}\n' + data[tc.last:tc.bytes])
    with pytest.raises(errors.JournalDamaged):
        wal.load(ws)


def test_small_segments_write_no_cache(api_root: Path) -> None:
    commit_some(api_root, ["a"])
    assert not wal.tail_path(workspace.open_workspace(api_root)).exists()
