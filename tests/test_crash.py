"""Crash at every mutation of every mutating command, recover, and prove SPEC §7.

Each test builds a workspace, counts the mutations N of an uncrashed run,
then for every k in 1..N: copies the workspace, runs the command killed at
mutation k, checks that everything it had changed was announced in the
journal (invariant 4), runs ``sop-recover`` twice (the second must change
nothing), and checks the invariants.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FAST_CONFIG, scrubbed_env, sop
from crashkit import (
    check_announced,
    check_invariants,
    check_sweep_clean,
    count_mutations,
    recover_twice,
    run,
    sheet_rows,
    snapshot,
)


def kill(p: subprocess.Popen[bytes]) -> None:
    p.kill()
    p.wait()


def base_workspace(tmp: Path) -> Path:
    root = tmp / "base"
    root.mkdir()
    sop("init", "-C", str(root))
    (root / ".sop" / "config.toml").write_text(FAST_CONFIG)
    tx = json.loads(sop("begin", "-C", str(root), "--strategy", "Base", "--json").stdout)
    (Path(tx["strategy_dir"]) / "run_metadata.json").write_text(json.dumps({"run_id": tx["run_id"]}))
    sop("commit", "-C", str(root), tx["txid"])
    return root


def begun(root: Path, strategy: str, owner: int, meta: bool = True) -> dict[str, str]:
    tx = json.loads(sop("begin", "-C", str(root), "--strategy", strategy, "--owner-pid", str(owner),
                        "--json").stdout)
    (Path(tx["strategy_dir"]) / "equity.csv").write_text("day,pnl\n1,0.5\n")
    if meta:
        (Path(tx["strategy_dir"]) / "run_metadata.json").write_text(
            json.dumps({"run_id": tx["run_id"], "metrics": {"sharpe": 1.1}}))
    return tx


def crash_loop(tmp: Path, setup: Path, cmd: list[str], *, before_recover: Callable[[Path], None] | None = None,
               expect: Callable[[Path], None] | None = None, lost: set[str] = frozenset(),  # type: ignore[assignment]
               sweep_may_find: frozenset[str] = frozenset({"quarantined"}),
               prepare: Callable[[Path], None] | None = None) -> int:
    """Crash ``cmd`` at every mutation of ``setup``'s copy; return the number of crash points.

    ``prepare`` runs on each copy first (a copy has a new inode, so what is keyed on the
    sheet's stat, like its layout record, must be made in the copy itself)."""
    if prepare is None:
        n = count_mutations(setup, *cmd)
    else:
        counted = tmp / "counted"
        shutil.copytree(setup, counted, symlinks=True)
        prepare(counted)
        n = count_mutations(counted, *cmd, copy=False)
        shutil.rmtree(counted)
    assert n > 0
    for k in range(1, n + 1):
        root = tmp / f"k{k}"
        shutil.copytree(setup, root, symlinks=True)
        if prepare is not None:
            prepare(root)
        snap, rows = snapshot(root), sheet_rows(root)
        p = run(root, *cmd, crash_at=k)
        assert p.returncode == 137, f"crash point {k}/{n} not reached: {p.returncode} {p.stderr}"
        check_announced(root, snap, rows)
        if before_recover:
            before_recover(root)
        recover_twice(root)
        check_invariants(root, lost=lost)
        check_sweep_clean(root, sweep_may_find)
        if expect:
            expect(root)
        if k in (1, n):
            check_opens_in_libreoffice(root, tmp / f"lo{k}")
        shutil.rmtree(root)
    return n


def check_opens_in_libreoffice(root: Path, out: Path) -> None:
    """Invariant 3 with a real office suite: LibreOffice reads the same rows as calamine (when installed)."""
    if not (shutil.which("soffice") or shutil.which("libreoffice")):
        return                    # the workbook checks in test_xlsx_fidelity.py skip with the reason
    from fixtures_xlsx import soffice_csv
    rows = soffice_csv(root / "backtests" / "Strategy_Master_Filter.xlsx", out)
    assert rows[0][:2] == ["Strategy", "RunID"]
    assert [(r[0], r[1]) for r in rows[1:] if any(r)] == sheet_rows(root)


def test_crash_at_every_point_of_begin(tmp_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    setup = base_workspace(tmp_path)
    owner = sleeper()
    n = count_mutations(setup, "begin", "--strategy", "Alpha", "--owner-pid", str(owner.pid))
    assert n >= 5
    for k in range(1, n + 1):
        root = tmp_path / f"k{k}"
        shutil.copytree(setup, root)
        snap, rows = snapshot(root), sheet_rows(root)
        own = sleeper()
        p = run(root, "begin", "--strategy", "Alpha", "--owner-pid", str(own.pid), crash_at=k)
        assert p.returncode == 137
        check_announced(root, snap, rows)
        # the owner is alive: recovery leaves its transaction alone (invariant 6) ...
        live = {t for t, r in _open(root).items()}
        recover_twice(root)
        check_invariants(root, live=live)
        check_sweep_clean(root, frozenset({"quarantined", "in_flight"}))
        assert set(_open(root)) == live
        # ... then the owner dies, and recovery rolls it back
        kill(own)
        recover_twice(root)
        check_invariants(root)
        check_sweep_clean(root)
        assert not (root / "backtests" / "Alpha").exists()
        sop("begin", "-C", str(root), "--strategy", "Alpha")          # the slot is free again
        shutil.rmtree(root)


def _open(root: Path) -> dict[str, str]:
    from crashkit import states
    return {t: s["state"] for t, s in states(root).items() if s["state"] not in ("committed", "aborted")}


def test_crash_at_every_point_of_commit(tmp_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    setup = base_workspace(tmp_path)
    owner = sleeper()
    tx = begun(setup, "Alpha", owner.pid)
    kill(owner)

    def outcome(root: Path) -> None:
        rows = sheet_rows(root)
        committed = ("Alpha", tx["run_id"]) in rows
        # before the decision: rolled back (owner gone); after it: rolled forward
        assert committed or any(p.name.startswith("Alpha_FAILED_") for p in (root / "backtests").iterdir())
        assert ("Base", rows[0][1]) == rows[0]
    n = crash_loop(tmp_path, setup, ["commit", tx["txid"]], expect=outcome)
    assert n >= 5


def test_crash_at_every_point_of_a_spliced_commit(tmp_path: Path,
                                                  sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    """The commit that copies the compressed rows (the sheet laid out by sop's previous write)."""
    setup = base_workspace(tmp_path)
    owner = sleeper()
    warm = begun(setup, "Warm", owner.pid)
    tx = begun(setup, "Alpha", owner.pid)
    kill(owner)

    def lay_out(root: Path) -> None:
        from journal import sheet, workspace

        assert run(root, "commit", warm["txid"]).returncode == 0      # a full rewrite: laid out, recorded
        view = sheet.read(workspace.open_workspace(root))
        assert view.layout is not None and view.writable

    def outcome(root: Path) -> None:
        rows = sheet_rows(root)
        assert rows[:2] == [("Base", rows[0][1]), ("Warm", warm["run_id"])]
        committed = ("Alpha", tx["run_id"]) in rows
        assert committed or any(p.name.startswith("Alpha_FAILED_") for p in (root / "backtests").iterdir())
    probe = tmp_path / "probe"                          # the uncrashed commit does copy the compressed rows
    shutil.copytree(setup, probe, symlinks=True)
    lay_out(probe)
    old = _rows_piece(probe)
    assert run(probe, "commit", tx["txid"]).returncode == 0
    new = _rows_piece(probe)
    assert len(new) > len(old) and new.startswith(old) and old.endswith(b"\x00\x00\xff\xff")
    shutil.rmtree(probe)
    n = crash_loop(tmp_path, setup, ["commit", tx["txid"]], expect=outcome, prepare=lay_out)
    assert n >= 5


def test_crash_at_every_point_of_a_commit_that_writes_a_sheet_index_delta(
        tmp_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    """A sheet of 64 rows: the commit writes its row to the index's delta file, not the whole index.
    Wherever it stops, the cache either describes the sheet on disk or is not believed.  (The 64 rows
    were typed, not committed: the sweep calls them orphaned.)"""
    from fixtures_xlsx import data_rows, xlsxwriter_book

    from journal import sheet, workspace

    setup = tmp_path / "base"
    (setup / "backtests").mkdir(parents=True)
    xlsxwriter_book(setup / "backtests" / "Strategy_Master_Filter.xlsx", data_rows(64))
    sop("init", "-C", str(setup))
    (setup / ".sop" / "config.toml").write_text(FAST_CONFIG)
    owner = sleeper()
    warm = begun(setup, "Warm", owner.pid)
    tx = begun(setup, "Alpha", owner.pid)
    kill(owner)

    def lay_out(root: Path) -> None:
        assert run(root, "commit", warm["txid"]).returncode == 0      # the whole index written, the sheet laid out

    def cache_tells_the_truth(root: Path) -> None:
        sheet._loaded.clear()
        w = workspace.open_workspace(root)
        cached, fresh = sheet.read(w), sheet.read(w, cache=False)
        assert (cached.numbers, cached.strategies, cached.run_ids) == (fresh.numbers, fresh.strategies,
                                                                       fresh.run_ids)
        sheet._loaded.clear()

    probe = tmp_path / "probe"                          # the uncrashed commit does write a delta
    shutil.copytree(setup, probe, symlinks=True)
    lay_out(probe)
    assert run(probe, "commit", tx["txid"]).returncode == 0
    assert list((probe / ".sop" / "cache").glob("sheet-index-*-delta.msgpack"))
    cache_tells_the_truth(probe)
    shutil.rmtree(probe)
    n = crash_loop(tmp_path, setup, ["commit", tx["txid"]], prepare=lay_out, before_recover=cache_tells_the_truth,
                   expect=cache_tells_the_truth, sweep_may_find=frozenset({"quarantined", "orphaned_row"}))
    assert n >= 5


def _rows_piece(root: Path) -> bytes:
    """The compressed rows piece of the sheet sop laid out, as its layout record says."""
    from journal import sheet, workspace
    from journal.xlsx import Layout

    view = sheet.read(workspace.open_workspace(root))
    lay = Layout.from_list(view.layout or [])
    assert lay is not None
    raw = (root / "backtests" / "Strategy_Master_Filter.xlsx").read_bytes()
    start = lay.offset + 30 + int.from_bytes(raw[lay.offset + 26:lay.offset + 28], "little") + int.from_bytes(
        raw[lay.offset + 28:lay.offset + 30], "little")
    return raw[start + lay.head_c:start + lay.head_c + lay.rows_c]


def test_crash_at_every_point_of_commit_rolling_back_on_a_locked_sheet(
        tmp_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    setup = base_workspace(tmp_path)
    owner = sleeper()
    tx = begun(setup, "Alpha", owner.pid)
    kill(owner)
    lock = setup / "backtests" / "~$Strategy_Master_Filter.xlsx"
    lock.write_bytes(b"\x03Ana")

    def unlock(root: Path) -> None:
        (root / "backtests" / lock.name).unlink()
    crash_loop(tmp_path, setup, ["commit", tx["txid"]], before_recover=unlock)


def test_crash_at_every_point_of_deferred_commit(tmp_path: Path,
                                                 sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    setup = base_workspace(tmp_path)
    owner = sleeper()
    tx = begun(setup, "Alpha", owner.pid)
    kill(owner)
    lock = setup / "backtests" / ".~lock.Strategy_Master_Filter.xlsx#"
    lock.write_text("Ana,ana,host,1.1.2026 10:00,file:///x;")

    def unlock(root: Path) -> None:
        (root / "backtests" / lock.name).unlink()

    def rolled_forward_once_decided(root: Path) -> None:
        from crashkit import records
        decided = any(r["type"] == "decide" for r in records(root) if r["txid"] == tx["txid"])
        assert (("Alpha", tx["run_id"]) in sheet_rows(root)) == decided
    crash_loop(tmp_path, setup, ["commit", tx["txid"], "--defer-on-lock"], before_recover=unlock,
               expect=rolled_forward_once_decided)


@pytest.mark.parametrize("delete", [False, True])
def test_crash_at_every_point_of_abort(tmp_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]],
                                       delete: bool) -> None:
    setup = base_workspace(tmp_path)
    owner = sleeper()                     # alive: only the abort's own decision may roll it back
    tx = begun(setup, "Alpha", owner.pid)
    args = ["abort", tx["txid"], *(["--delete"] if delete else [])]
    n = count_mutations(setup, *args)
    for k in range(1, n + 1):
        root = tmp_path / f"k{k}"
        shutil.copytree(setup, root)
        snap, rows = snapshot(root), sheet_rows(root)
        assert run(root, *args, crash_at=k).returncode == 137
        check_announced(root, snap, rows)
        recover_twice(root)
        state = _open(root).get(tx["txid"])
        if state is None:                          # the rollback decision was on record: finished
            check_invariants(root)
        else:                                      # crashed before deciding: still the owner's
            assert state == "begun"
            check_invariants(root, live={tx["txid"]})
            assert run(root, *args).returncode == 0
            check_invariants(root)
        shutil.rmtree(root)


def test_crash_at_every_point_of_recover(tmp_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    """Recovery itself crashes: one abandoned begun, one decided commit, one half-done rollback."""
    setup = base_workspace(tmp_path)
    o1, o2, o3 = sleeper(), sleeper(), sleeper()
    begun(setup, "Abandoned", o1.pid, meta=False)
    t2 = begun(setup, "Decided", o2.pid)
    t3 = begun(setup, "HalfRolled", o3.pid)
    for o in (o1, o2, o3):
        kill(o)
    assert run(setup, "commit", t2["txid"], crash_at=4).returncode == 137   # decision on record, no row
    assert run(setup, "abort", t3["txid"], crash_at=3).returncode == 137    # rollback decided, one rename
    from crashkit import states
    st = states(setup)
    assert st[t2["txid"]]["state"] == "committing" and st[t3["txid"]]["state"] == "aborting"

    def all_done(root: Path) -> None:
        rows = sheet_rows(root)
        assert ("Decided", t2["run_id"]) in rows
        assert not (root / "backtests" / "HalfRolled").exists() and not (root / "backtests" / "Abandoned").exists()
    n = crash_loop(tmp_path, setup, ["recover"], expect=all_done)
    assert n >= 6


@pytest.mark.parametrize("cmd", ["begin", "commit", "abort", "recover"])
def test_io_errors_at_every_point(tmp_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]], cmd: str) -> None:
    """ENOSPC, EIO and EACCES, once and persistently: a clear error, and a state recovery completes."""
    setup = base_workspace(tmp_path)
    owner = sleeper()
    tx = begun(setup, "Alpha", owner.pid)
    if cmd == "recover":                       # something to recover: an abandoned run and a decided one
        gone = sleeper()
        begun(setup, "Abandoned", gone.pid, meta=False)
        decided = begun(setup, "Decided", gone.pid)
        kill(gone)
        assert run(setup, "commit", decided["txid"], crash_at=4).returncode == 137
    args = {"begin": ["begin", "--strategy", "Beta", "--owner-pid", str(owner.pid)],
            "commit": ["commit", tx["txid"]], "abort": ["abort", tx["txid"]], "recover": ["recover"]}[cmd]
    n = count_mutations(setup, *args)
    codes = ["ENOSPC", "EIO", "EACCES"]
    for k in range(1, n + 1):
        for persist in (False, True):
            name = codes[(k + persist) % 3]
            root = tmp_path / f"k{k}{persist}"
            shutil.copytree(setup, root)
            p = run(root, *args, fail_at=f"{k}:{name}" + (":persist" if persist else ""))
            if p.returncode != 0:
                assert p.returncode in (3, 5), p.stderr
                assert "error" in p.stderr.lower() and "Traceback" not in p.stderr
                assert os.strerror(getattr(errno, name)) in p.stderr or "locked" in p.stderr
            recover_twice(root)
            live = _open(root)
            assert set(live.values()) <= {"begun"}, live      # only the live owner's undecided runs stay open
            check_invariants(root, live=set(live))
            shutil.rmtree(root)


@pytest.mark.parametrize("damage", ["truncate", "zeros", "garbage"])
def test_power_loss_in_the_last_journal_record(tmp_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]],
                                               damage: str) -> None:
    rng = random.Random(damage)
    setup = base_workspace(tmp_path)
    owner = sleeper()
    tx = begun(setup, "Alpha", owner.pid)
    kill(owner)
    sop("commit", "-C", str(setup), tx["txid"])
    seg = sorted((setup / ".sop" / "journal").glob("*.jsonl"))[-1]
    data = seg.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1        # the last record: 'committed'
    cut = rng.randrange(start + 1, len(data))
    tail = {"truncate": b"", "zeros": b"\0" * (len(data) - cut), "garbage": bytes(rng.randrange(256)
                                                                             for _ in range(len(data) - cut))}
    seg.write_bytes(data[:cut] + tail[damage])
    recover_twice(setup)
    check_invariants(setup)
    assert ("Alpha", tx["run_id"]) in sheet_rows(setup)   # the row was written: rolled forward again
    kept = list((setup / ".sop" / "lost+found").iterdir())
    assert len(kept) == 1


def test_zeroed_checkpoint_costs_only_time(tmp_path: Path) -> None:
    """A checkpoint whose rename was durable before its data is ignored: the journal is replayed."""
    setup = base_workspace(tmp_path)
    env = scrubbed_env(SOP_SEGMENT_BYTES="700")          # seal a segment every few records
    for i in range(3):
        sop("begin", "-C", str(setup), "--strategy", f"S{i}", env=env)
    cp = setup / ".sop" / "checkpoint.json"
    assert cp.exists() and len(list((setup / ".sop" / "journal").iterdir())) > 2
    cp.write_bytes(b"\0" * len(cp.read_bytes()))
    p = sop("status", "-C", str(setup), "--json", env=env)
    assert len(json.loads(p.stdout)["transactions"]) == 3
    sop("begin", "-C", str(setup), "--strategy", "S0", code=1, env=env)
    sop("begin", "-C", str(setup), "--strategy", "S9", env=env)


# ---------------------------------------------------------------- the way back and the way out (lost rows)

def _commit(root: Path, strategy: str) -> dict[str, str]:
    tx = json.loads(sop("begin", "-C", str(root), "--strategy", strategy, "--json").stdout)
    (Path(tx["strategy_dir"]) / "run_metadata.json").write_text(
        json.dumps({"run_id": tx["run_id"], "metrics": {"sharpe": 0.9}}))
    (Path(tx["run_dir"]) / "trades.csv").write_text("day,pnl\n1,0.5\n")
    sop("commit", "-C", str(root), tx["txid"])
    return tx


def _stale(tmp: Path) -> tuple[Path, list[dict[str, str]]]:
    """A workspace whose sheet was saved over from a copy older than its last two commits."""
    setup = base_workspace(tmp)
    sheet = setup / "backtests" / "Strategy_Master_Filter.xlsx"
    old = sheet.read_bytes()
    txs = [_commit(setup, "Beta"), _commit(setup, "Gamma")]
    sheet.write_bytes(old)
    return setup, txs


def _whole_or_untouched(root: Path, tx: dict[str, str]) -> None:
    """A lost row is either back on the sheet with its folders in place, or still lost with its folders kept."""
    on = (tx["strategy"], tx["run_id"]) in sheet_rows(root)
    sdir, rdir = root / "backtests" / tx["strategy"], root / "runs" / tx["run_id"]
    if on:
        assert sdir.is_dir() and rdir.is_dir(), f"{tx['strategy']} restored without its folders"
    else:
        kept = sdir.is_dir() or any(p.name.startswith(f"{tx['strategy']}_FAILED_") for p in sdir.parent.iterdir())
        assert kept, f"{tx['strategy']}'s folder is gone"


def test_crash_at_every_point_of_a_sweep_accepting_a_stale_sheet(tmp_path: Path) -> None:
    setup, txs = _stale(tmp_path)
    n = crash_loop(tmp_path, setup, ["sweep", "--fix", "--accept-sheet"],
                   lost={t["run_id"] for t in txs}, sweep_may_find=frozenset({"quarantined", "lost_row"}),
                   expect=lambda root: [_whole_or_untouched(root, t) for t in txs])
    assert n >= 6


def test_crash_at_every_point_of_restore(tmp_path: Path) -> None:
    setup, txs = _stale(tmp_path)
    sop("sweep", "-C", str(setup), "--fix", "--accept-sheet")          # folders quarantined, restorable

    def back_or_kept(root: Path) -> None:
        for t in txs:
            _whole_or_untouched(root, t)
        p = run(root, "restore", *names)                                # a restore after the crash finishes the job
        assert p.returncode == 0, p.stderr
        assert {(t["strategy"], t["run_id"]) for t in txs} <= set(sheet_rows(root))
    names = [t["txid"] for t in txs]                                    # accepted losses come back by name
    n = crash_loop(tmp_path, setup, ["restore", *names], lost={t["run_id"] for t in txs}, expect=back_or_kept)
    assert n >= 6


def test_crash_at_every_point_of_release(tmp_path: Path) -> None:
    setup = base_workspace(tmp_path)
    alpha = _commit(setup, "Alpha")

    def released_or_not(root: Path) -> None:
        on = ("Alpha", alpha["run_id"]) in sheet_rows(root)
        here = (root / "backtests" / "Alpha").is_dir()
        kept = any(p.name.startswith("Alpha_FAILED_") for p in (root / "backtests").iterdir())
        assert (on and here) or (not on and not here and kept), (on, here, kept)
    n = crash_loop(tmp_path, setup, ["release", "Alpha"], expect=released_or_not)
    assert n >= 5
