"""Many hosts, one workspace: the sheet is written over only when it is the one sop wrote last.

Each write of the Master Sheet journals the new file's fingerprint (``sheet_fp``, the SHA-256
of its zip central directory); a sheet writer compares the file with it before it writes.  A
file that is not the one sop wrote last and lacks the rows sop wrote last — what a network
file system's client cache serves for a while after another host replaced the sheet, or an
old copy saved over it — is read again with backoff, and never written over.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import conftest
import pytest

import journal
from journal import sheet, txn, wal
from journal.workspace import open_workspace

SHEET = Path("backtests") / "Strategy_Master_Filter.xlsx"


def sop(root: Path, cmd: str, *args: str, code: int | None = 0, proc: bool = False) -> Any:
    return conftest.sop(cmd, "-C", str(root), *args, code=code, proc=proc)


@pytest.fixture
def root(api_root: Path) -> Path:
    return api_root


def configure(root: Path, timeout: float) -> None:
    """The lock settings of the fast tests, with ``timeout_seconds`` (which bounds the stale wait)."""
    (root / ".sop" / "config.toml").write_text(
        conftest.FAST_CONFIG.replace("timeout_seconds = 20", f"timeout_seconds = {timeout}"))


def commit(root: Path, name: str) -> journal.porcelain.Handle:
    with journal.transaction(name, root=root) as tx:
        (Path(tx.strategy_dir) / "run_metadata.json").write_text(json.dumps({"run_id": tx.run_id, "strategy": name}))
    return tx


def begin(root: Path, name: str) -> tuple[str, str]:
    """Begin a run owned by this test process and write its metadata; its commit is left to the test."""
    out = json.loads(sop(root, "begin", "--strategy", name, "--owner-pid", str(os.getpid()), "--json").stdout)
    Path(out["strategy_dir"]).joinpath("run_metadata.json").write_text(
        json.dumps({"run_id": out["run_id"], "strategy": name}))
    return out["txid"], out["run_id"]


def put(root: Path, data: bytes) -> None:
    """Replace the sheet with ``data`` as a save (or a cache) does: a new file in its place."""
    tmp = root / "backtests" / ".swap.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, root / SHEET)


def recorded_fp(root: Path) -> str:
    return wal.load(open_workspace(root)).sheet_fp


def file_fp(root: Path) -> str:
    return sheet.fingerprint(root / SHEET)


def strategies(root: Path) -> list[str]:
    return [r.strategy for r in sheet.read(open_workspace(root), cache=False).rows]


def count_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the ledger checks of the sheet (:func:`journal.txn.lost_rows`) that a writer makes."""
    calls: list[int] = []
    real = txn.lost_rows

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(txn, "lost_rows", counting)
    return calls


def stale_setup(root: Path) -> tuple[bytes, bytes]:
    """Commit A; then the sheet as it was before A (what a stale cache serves) takes its place.

    Returns (the older copy, the newer file: A's write)."""
    older = (root / SHEET).read_bytes()
    commit(root, "Alpha")
    newer = (root / SHEET).read_bytes()
    put(root, older)
    return older, newer


# ---------------------------------------------------------------- the fingerprint

def test_the_fingerprint_is_the_content_not_the_inode(root: Path, tmp_path: Path) -> None:
    commit(root, "Alpha")
    copy = tmp_path / "copy.xlsx"
    shutil.copyfile(root / SHEET, copy)
    os.utime(copy, (1, 1))
    assert sheet.fingerprint(copy) == file_fp(root) != ""
    assert len(file_fp(root)) == 64
    before = file_fp(root)
    commit(root, "Beta")
    assert file_fp(root) != before
    assert sheet.fingerprint(tmp_path / "missing.xlsx") == ""      # unreadable: not known, never a match
    (tmp_path / "junk.xlsx").write_bytes(b"not a zip at all")
    assert len(sheet.fingerprint(tmp_path / "junk.xlsx")) == 64


def test_the_checkpoint_carries_the_fingerprint(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal, "SEGMENT_BYTES", 1)          # every record seals the segment before it
    commit(root, "Alpha")
    journal.begin("Beta", root=root, owner_pid=os.getpid())   # its record seals the segment that holds Alpha's write
    cp = json.loads((root / ".sop" / "checkpoint.json").read_text())
    assert cp["sheet_fp"] == file_fp(root) == recorded_fp(root)          # the active segment holds none
    assert not [r for r in wal.iter_records(open_workspace(root)) if r.seq > cp["seq"] and "sheet_fp" in r.data]


# ---------------------------------------------------------------- (a) steady state

def test_steady_state_the_fingerprint_matches_and_nothing_more_is_read(root: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    checks = count_checks(monkeypatch)
    commit(root, "Alpha")                                 # the first write: nothing on record yet, no check
    first = recorded_fp(root)
    assert first == file_fp(root)
    commit(root, "Beta")
    assert checks == []                                   # the file was the one sop wrote: no ledger check
    assert recorded_fp(root) == file_fp(root) != first
    recs = [r for r in wal.iter_records(open_workspace(root)) if r.type == "committed"]
    assert [r.data["sheet_fp"] for r in recs] == [first, file_fp(root)]


# ---------------------------------------------------------------- (b) a stale cache that expires

def test_a_stale_copy_that_goes_away_is_waited_for_and_both_rows_are_kept(root: Path) -> None:
    older, newer = stale_setup(root)
    txid, _ = begin(root, "Beta")                         # the gate reads the stale copy: Beta is not on it
    timer = threading.Timer(0.5, put, (root, newer))     # the cache expires: the newer file shows again
    timer.start()
    try:
        t0 = time.monotonic()
        sop(root, "commit", txid, proc=True)
        took = time.monotonic() - t0
    finally:
        timer.join()
    assert strategies(root) == ["Alpha", "Beta"]          # Alpha's row was not written over
    assert took >= 0.5
    assert recorded_fp(root) == file_fp(root)
    assert json.loads(sop(root, "fsck", "--json").stdout)["ok"] is True
    assert json.loads(sop(root, "status", "--json").stdout)["lost"]["rows"] == []


# ---------------------------------------------------------------- (c) a stale copy that stays

def test_a_stale_copy_that_stays_is_never_written_over(root: Path) -> None:
    configure(root, 2)                                    # the wait is bounded by [lock].timeout_seconds
    older, newer = stale_setup(root)
    txid, _ = begin(root, "Beta")
    t0 = time.monotonic()
    p = sop(root, "commit", txid, "--json", code=5, proc=True)
    took = time.monotonic() - t0
    assert 2 <= took < 20
    err = json.loads(p.stdout)["error"]
    assert err["code"] == 5
    msg = err["message"]
    assert "lacks the rows sop wrote last" in msg and "stale network cache" in msg and "stale save" in msg
    assert "sop-restore" in msg and "--accept-sheet" in msg and "sop-recover" in msg
    assert (root / SHEET).read_bytes() == older           # left exactly as it was
    assert txn.Session(open_workspace(root)).state_of(txid) == "committing"
    assert not [r for r in wal.iter_records(open_workspace(root)) if r.txid == txid and r.type == "append"]
    # the newer file comes back: recovery writes the waiting row on it
    put(root, newer)
    sop(root, "recover")
    assert strategies(root) == ["Alpha", "Beta"]
    assert txn.Session(open_workspace(root)).state_of(txid) == "committed"
    assert json.loads(sop(root, "fsck", "--json").stdout)["ok"] is True
    assert recorded_fp(root) == file_fp(root)


def test_recovery_reports_a_stale_copy_as_damage_and_restore_is_the_way_back(root: Path) -> None:
    configure(root, 0)                                    # no wait at all
    older, _ = stale_setup(root)
    txid, _ = begin(root, "Beta")
    sop(root, "commit", txid, code=5)
    rec = sop(root, "recover", code=5)                    # still stale: the row waits, said so
    assert "lacks the rows sop wrote last" in rec.stderr
    assert (root / SHEET).read_bytes() == older
    sop(root, "restore")                                  # Alpha's row back from the journal
    sop(root, "recover")                                  # then Beta's row goes in
    assert strategies(root) == ["Alpha", "Beta"]
    assert json.loads(sop(root, "fsck", "--json").stdout)["ok"] is True


# ---------------------------------------------------------------- (d) a foreign save that kept sop's rows

def test_a_foreign_save_that_kept_every_row_is_written_as_before(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openpyxl
    commit(root, "Alpha")
    wb = openpyxl.load_workbook(root / SHEET)
    wb.save(root / SHEET)                                 # Excel (here openpyxl) saved it: another file, same rows
    wb.close()
    assert file_fp(root) != recorded_fp(root)
    checks = count_checks(monkeypatch)
    commit(root, "Beta")
    assert len(checks) == 1                               # the mismatch was checked against the ledger, once
    assert strategies(root) == ["Alpha", "Beta"]
    assert recorded_fp(root) == file_fp(root)
    commit(root, "Gamma")
    assert len(checks) == 1                               # steady again


def test_a_row_deleted_by_hand_does_not_hold_the_next_commit(root: Path) -> None:
    """Only the stale-save shape (the newest rows sop wrote missing) holds rows back; an older row gone is a
    hand edit, and the next row is written as before."""
    import openpyxl
    commit(root, "Alpha")
    commit(root, "Beta")
    wb = openpyxl.load_workbook(root / SHEET)
    wb.worksheets[0].delete_rows(2)
    wb.save(root / SHEET)
    wb.close()
    commit(root, "Gamma")
    assert strategies(root) == ["Beta", "Gamma"]
