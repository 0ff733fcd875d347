"""The Python API in-process: what a pipeline's run_stage1.py calls (journal.transaction, begin, commit, …).

Everything here runs inside the test process: the owner of each transaction
is this process (alive), or a process started and reaped to be dead.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import journal
from journal import errors, render, txn, wal, workspace
from journal.errors import Refused, SheetLocked

T0 = datetime(2026, 3, 5, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def root(api_root: Path) -> Path:
    return api_root


def _rows(root: Path) -> list[list[object]]:
    import openpyxl
    wb = openpyxl.load_workbook(root / "backtests" / "Strategy_Master_Filter.xlsx")
    try:
        return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()


def _write(tx: journal.porcelain.BeginResult, **metrics: object) -> None:
    (Path(tx.strategy_dir) / "run_metadata.json").write_text(
        json.dumps({"run_id": tx.run_id, "strategy": tx.strategy, "metrics": metrics}))


# ---------------------------------------------------------------- transaction()

def test_transaction_commits_and_reports_the_row(root: Path) -> None:
    with journal.transaction("Alpha", root=root) as tx:
        _write(tx, sharpe=1.25)
    assert tx.committed is not None and tx.aborted is None
    assert tx.committed.row == 2 and tx.committed.state == "committed"
    assert _rows(root)[1][:2] == ["Alpha", tx.run_id]


def test_transaction_that_raises_is_quarantined_and_says_where(root: Path) -> None:
    with pytest.raises(ZeroDivisionError), journal.transaction("Beta", root=root, now=T0) as tx:
        (Path(tx.run_dir) / "partial.csv").write_text("x")
        raise ZeroDivisionError
    assert tx.committed is None and tx.aborted is not None
    assert tx.aborted.moved == {"backtests/Beta": "backtests/Beta_FAILED_20260305T120000Z",
                                f"runs/{tx.run_id}": f"runs/{tx.run_id}_FAILED_20260305T120000Z"}
    assert (root / "runs" / f"{tx.run_id}_FAILED_20260305T120000Z" / "partial.csv").read_text() == "x"
    assert _rows(root)[1:] == []


def test_transaction_whose_gate_refuses_rolls_back_and_reports(root: Path) -> None:
    with pytest.raises(Refused) as e, journal.transaction("Gamma", root=root) as tx:
        pass                                               # no run_metadata.json: the gate refuses
    assert "run_metadata.json does not exist" in e.value.message
    assert tx.aborted is not None and "backtests/Gamma" in tx.aborted.moved
    assert "rolled back" in (e.value.detail or "")


def test_transaction_on_a_locked_sheet_rolls_back_and_reports(root: Path) -> None:
    sheet = root / "backtests" / "Strategy_Master_Filter.xlsx"
    owner = sheet.with_name("~$" + sheet.name[2:])
    owner.write_bytes(b"\x03ana" + b" " * 50)
    with pytest.raises(SheetLocked) as e, journal.transaction("Delta", root=root) as tx:
        _write(tx)
    assert e.value.exit_code == 3 and e.value.message.startswith("Run passed but Indexing failed.")
    assert tx.aborted is not None and tx.aborted.state == "aborted"
    assert set(tx.aborted.moved) == {"backtests/Delta", f"runs/{tx.run_id}"}


def test_the_gatekeeper_refuses_a_second_row_through_the_api(root: Path) -> None:
    with journal.transaction("Alpha", root=root) as tx:
        _write(tx)
    with pytest.raises(Refused) as e:
        journal.begin("alpha", root=root)
    assert "already exists in Master Sheet as 'Alpha' (Row 2)" in e.value.message
    assert e.value.exit_code == 1


# ---------------------------------------------------------------- step by step, one open workspace

def test_functions_take_an_open_workspace(root: Path) -> None:
    ws = workspace.open_workspace(root)
    assert workspace.open_workspace(ws) is ws
    b = journal.begin("Eps", root=ws, owner_pid=os.getpid(), now=T0)
    _write(b, sharpe=0.5)
    c = journal.commit(b.txid, root=ws, now=T0 + timedelta(minutes=1))
    assert (c.row, c.already) == (2, False)
    assert journal.commit(b.txid, root=ws).already is True
    st = journal.status(root=ws)
    assert st.transactions == [] and st.journal["ok"] is True
    log = journal.log(root=ws, strategy="EPS")
    assert [t.state for t in log.transactions] == ["committed"]
    assert journal.fsck(root=ws).ok is True


def test_abort_and_wrong_states(root: Path) -> None:
    b = journal.begin("Zeta", root=root, owner_pid=os.getpid())
    ab = journal.abort(b.txid, root=root, delete=True)
    assert ab.deleted == ["backtests/Zeta", f"runs/{b.run_id}"] and not (root / "backtests" / "Zeta").exists()
    assert journal.abort(b.txid, root=root).already is True
    with pytest.raises(errors.WrongState) as e:
        journal.commit(b.txid, root=root)
    assert e.value.exit_code == 4
    with pytest.raises(errors.NoSuchTransaction):
        journal.abort("tx-nope", root=root)


def test_recover_rolls_back_a_dead_owners_run_and_leaves_a_live_one(root: Path) -> None:
    owner = subprocess.Popen(["sleep", "600"])
    try:
        dead = journal.begin("Dead", root=root, owner_pid=owner.pid, now=T0)
    finally:
        owner.kill()
        owner.wait()
    live = journal.begin("Live", root=root, owner_pid=os.getpid())
    dry = journal.recover(root=root, dry_run=True)
    assert [(a.action, a.txid, a.done) for a in dry.actions] == [("roll back", dead.txid, False)]
    assert (root / "backtests" / "Dead").is_dir()                        # a dry run changes nothing
    res = journal.recover(root=root, now=T0)
    assert [(a.action, a.txid, a.done) for a in res.actions] == [("roll back", dead.txid, True)]
    assert [t.txid for t in res.live] == [live.txid] and res.error is None
    assert (root / "backtests" / "Dead_FAILED_20260305T120000Z").is_dir()
    assert journal.recover(root=root).actions == []                      # twice is safe


def test_sweep_dry_run_through_the_api(root: Path) -> None:
    (root / "backtests" / "Orphan").mkdir(parents=True)
    res = journal.sweep(root=root)
    assert res.dry_run is True
    assert [(f.kind, f.strategy) for f in res.findings] == [("zombie_folder", "Orphan")]
    assert (root / "backtests" / "Orphan").is_dir()
    doc = render.to_json(res)
    assert doc["counts"]["zombie_folder"] == 1 and doc["remaining"] == 1
    assert "steps" not in doc["findings"][0] and "rows" not in doc


# ---------------------------------------------------------------- the session: one load, incremental refresh

def test_a_session_loads_once_and_reads_only_what_others_appended(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = workspace.open_workspace(root)
    s = txn.Session(ws)
    first = journal.begin("One", root=root, owner_pid=os.getpid())
    before = s.current(first.txid)
    loads: list[int] = []
    real = wal.load
    monkeypatch.setattr(wal, "load", lambda w: loads.append(1) or real(w))
    second = journal.begin("Two", root=root, owner_pid=os.getpid())   # another writer appends
    journal.abort(first.txid, root=root)
    loads.clear()                                                     # those were the other writers' loads
    with s.locked() as w:
        assert w.states[second.txid].state == "begun"
        assert w.states[first.txid].state == "aborted"
        assert w.j.seq == real(ws).seq
    assert loads == []                                                # refreshed, not reloaded
    assert before.state == "begun"                                    # a state handed out before is unchanged


def test_a_session_reloads_when_the_segment_is_not_a_plain_append(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = workspace.open_workspace(root)
    s = txn.Session(ws)
    b = journal.begin("One", root=root, owner_pid=os.getpid())
    s.current(b.txid)
    seg = wal.segment_files(ws.journal_dir)[-1]
    data = seg.read_bytes()
    first_end = data.index(b"\n")
    bad = seg.with_name("bad")
    bad.write_bytes(data[:first_end - 5] + b"XXX" + data[first_end - 2:])   # record 1 changed: damage
    os.replace(bad, seg)                                               # a segment replaced (a restore, an editor)
    with pytest.raises(errors.JournalDamaged) as e, s.locked():
        pass
    assert e.value.exit_code == 5 and "line 1" in e.value.message
    bad.write_bytes(data)
    os.replace(bad, seg)
    with s.locked() as w:
        assert w.states[b.txid].state == "begun"


def test_refresh_equals_a_full_load_after_many_writers(root: Path) -> None:
    ws = workspace.open_workspace(root)
    s = txn.Session(ws)
    with s.locked():
        pass
    for i in range(5):
        with journal.transaction(f"S{i}", root=root) as tx:
            _write(tx)
    journal.begin("Open", root=root, owner_pid=os.getpid())
    with s.locked() as w:
        fresh = wal.load(ws)
        assert (w.j.seq, w.j.hash, w.j.active_bytes) == (fresh.seq, fresh.hash, fresh.active_bytes)
        assert {k: (v.state, v.row_number) for k, v in w.states.items()} == \
               {k: (v.state, v.row_number) for k, v in fresh.states.items()}


# ---------------------------------------------------------------- one JSON rendering

def test_one_json_rendering_for_results_and_errors(root: Path) -> None:
    b = journal.begin("Json", root=root, owner_pid=os.getpid())
    assert render.to_json(b) == {"txid": b.txid, "strategy": "Json", "run_id": b.run_id,
                                 "strategy_dir": b.strategy_dir, "run_dir": b.run_dir}
    err = errors.Refused("no", detail="why")
    assert render.to_json(err) == {"code": 1, "message": "no", "detail": "why"}
    log = journal.log(root=root)
    doc = render.to_json(log)
    assert list(doc) == ["transactions"] and doc["transactions"][0]["records"][0]["type"] == "begin"
    fsck = render.to_json(journal.fsck(root=root))
    assert fsck["ok"] is True and fsck["damage"] is None
    json.dumps(render.to_json(journal.status(root=root)))             # JSON-able throughout


def test_json_text_is_json_dumps_in_pieces(root: Path) -> None:
    """--json is written in pieces (render.json_text), a list an item at a time: the very text json.dumps gives."""
    from journal.janitor import Finding, Findings, SweepResult
    awkward = ["", "plain", "é 中 😀", "quote\" back\\slash / tab\t nl\n", "\x00\x1f\x7f", "\u2028\u2029",
               "lone \udce9 surrogate", "</script>"]
    findings = [Finding("zombie_run", s, s[::-1], f"runs/{s}", "delete", i % 2 == 0, s, i or None)
                for i, s in enumerate(awkward)]
    (root / "backtests" / "Orphan").mkdir(parents=True)
    swept = journal.sweep(root=root)
    results = [SweepResult(True, "2026-03-05T12:00:00Z", "/w é", Findings(findings), "/r", txid="tx-1",
                           recovery=[{"nested": [1, 2.5, None, {"k": "v"}]}, "text", []]),
               SweepResult(False, "w", "r", Findings(), "r"),
               swept, journal.status(root=root), journal.log(root=root), journal.fsck(root=root),
               errors.Refused("no \udce9", detail="why"), {"plain": ["dict", 1]}, [], 3.5, Path("/p")]
    for res in results:
        for ascii_ in (True, False):
            want = json.dumps(render.to_json(res), indent=2, ensure_ascii=ascii_, default=str)
            pieces = list(render.json_text(res, ensure_ascii=ascii_))
            assert "".join(pieces) == want, res
    assert len(list(render.json_text(results[0]))) > len(findings)        # the findings, one piece each


def test_commit_that_times_out_on_the_lock_after_its_row_was_written_succeeds(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many commits at once: the one holding the sheet writes every decided row; one that timed out
    waiting for it finds its row there and reports success (it used to exit 6)."""
    tx = journal.begin("Alpha", root=root)
    _write(tx, sharpe=1.5)
    real = txn.flush

    def written_by_another_then_busy(session: txn.Session, **kw: object) -> txn.FlushResult:
        real(session, **kw)                                    # as another process would have
        raise errors.Busy("the Master Sheet writer is busy: another sop process held it for 20 s")
    monkeypatch.setattr(txn, "flush", written_by_another_then_busy)
    res = journal.commit(tx.txid, root=root)
    assert (res.state, res.row) == ("committed", 2)
    assert _rows(root)[1][:2] == ["Alpha", tx.run_id]


def test_commit_that_times_out_on_the_lock_without_its_row_is_busy(root: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tx = journal.begin("Alpha", root=root)
    _write(tx, sharpe=1.5)

    def busy(session: txn.Session, **kw: object) -> txn.FlushResult:
        raise errors.Busy("the Master Sheet writer is busy: another sop process held it for 20 s")
    monkeypatch.setattr(txn, "flush", busy)
    with pytest.raises(errors.Busy):
        journal.commit(tx.txid, root=root)
    monkeypatch.undo()
    assert journal.commit(tx.txid, root=root).row == 2           # decided: a later commit writes it
