"""Nothing committed is ever lost: the journal outranks a sheet that went back in time (SPEC §7 invariants 2, 7, 8).

Each case is an ordinary event — a stale save, a sheet deleted or restored
from a backup, a journal deleted or restored, a person's row in the way —
and checks the disk, the sheet (read by openpyxl and calamine), the journal
(``sop-fsck``) and what a person is told.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import conftest
import pytest
from conftest import FAST_CONFIG as FAST

import journal
from journal import repair


def sop(root: Path, cmd: str, *args: str, code: int | None = 0) -> Any:
    """``sop-CMD -C ROOT ARGS`` in-process (conftest's helper); check the exit status (None: any)."""
    return conftest.sop(cmd, "-C", str(root), *args, code=code)


@pytest.fixture
def root(api_root: Path) -> Path:
    return api_root


def sheet_path(root: Path) -> Path:
    return root / "backtests" / "Strategy_Master_Filter.xlsx"


def commit(root: Path, name: str, **metrics: Any) -> journal.porcelain.Handle:
    with journal.transaction(name, root=root) as tx:
        (Path(tx.strategy_dir) / "run_metadata.json").write_text(
            json.dumps({"run_id": tx.run_id, "strategy": name, "metrics": metrics}))
        (Path(tx.run_dir) / "trades.csv").write_text("day,pnl\n1,0.5\n")
    return tx


def rows_openpyxl(root: Path) -> list[list[Any]]:
    import openpyxl
    wb = openpyxl.load_workbook(sheet_path(root))
    try:
        return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()


def rows_calamine(root: Path) -> list[tuple[str, str]]:
    from python_calamine import CalamineWorkbook
    data = CalamineWorkbook.from_path(str(sheet_path(root))).get_sheet_by_index(0).to_python()
    return [(str(r[0]), str(r[1])) for r in data[1:] if any(c not in ("", None) for c in r)]


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for top in ("backtests", "runs") for p in (root / top).rglob("*")}


def stale_save(root: Path, keep: int = 1) -> tuple[list[journal.porcelain.Handle], bytes]:
    """Commit ``keep`` runs, copy the sheet (a person opens it), commit two more, save the old copy over it."""
    first = [commit(root, f"Keep{i}", sharpe=1.0 + i) for i in range(keep)]
    old = sheet_path(root).read_bytes()
    later = [commit(root, "Beta", sharpe=2.5), commit(root, "Gamma", sharpe=-0.5)]
    sheet_path(root).write_bytes(old)
    return first + later, old


# ---------------------------------------------------------------- a stale save

def test_a_stale_save_is_reported_everywhere_and_nothing_is_deleted(root: Path) -> None:
    txs, old = stale_save(root)
    beta, gamma = txs[1], txs[2]
    st = json.loads(sop(root, "status", "--json").stdout)
    assert [r["strategy"] for r in st["lost"]["rows"]] == ["Beta", "Gamma"] and st["lost"]["stale_save"] is True
    assert st["sheet"]["lost_rows"] == 2
    text = sop(root, "status").stdout
    assert "LOST ROWS: 2 committed rows are missing" in text and "stale save" in text and "older than row 3" in text
    rec = sop(root, "recover")
    assert "LOST ROWS" in rec.stderr
    before, sheet_bytes = tree(root), sheet_path(root).read_bytes()
    dry = json.loads(sop(root, "sweep", "--json").stdout)
    lost = [f for f in dry["findings"] if f["kind"] == "lost_row"]
    assert {f["strategy"] for f in lost} == {"Beta", "Gamma"} and not any(
        f["kind"] in ("zombie_folder", "zombie_run") for f in dry["findings"])
    fixed = sop(root, "sweep", "--fix")
    assert "LOST ROWS" in fixed.stderr and "Needs a person: 2" in fixed.stderr
    assert tree(root) == before and sheet_path(root).read_bytes() == sheet_bytes      # changed nothing at all
    sop(root, "sweep", "--exit-code", code=1)                                          # and says so honestly
    # the way back: the rows return from the journal, with their values
    res = json.loads(sop(root, "restore", "--json").stdout)
    assert [(i["strategy"], i["done"], i["row"]) for i in res["items"]] == [("Beta", True, 3), ("Gamma", True, 4)]
    got = rows_openpyxl(root)
    header = [str(h).lower() for h in got[0]]
    assert got[2][:3] == ["Beta", beta.run_id, beta.txid] and got[3][:2] == ["Gamma", gamma.run_id]
    assert rows_calamine(root)[1:] == [("Beta", beta.run_id), ("Gamma", gamma.run_id)]
    if shutil.which("soffice") or shutil.which("libreoffice"):            # CI installs it: a real office suite
        from fixtures_xlsx import soffice_csv
        lo = soffice_csv(sheet_path(root), root.parent / "lo")
        assert [(r[0], r[1]) for r in lo[1:] if any(r)] == rows_calamine(root)
    assert "sharpe" not in header                      # the default sheet has no such column; nothing invented
    assert json.loads(sop(root, "status", "--json").stdout)["lost"]["rows"] == []
    sop(root, "sweep", "--exit-code")
    assert json.loads(sop(root, "fsck", "--json").stdout)["ok"] is True
    log = json.loads(sop(root, "log", "--strategy", "Beta", "--json").stdout)["transactions"]
    types = [r["type"] for r in log[0]["records"]]
    assert types[0] == "plan" and types.count("append") == 2 and types.count("restored") == 2 and types[-1] == "done"


def test_accepting_a_stale_sheet_quarantines_and_restore_brings_back(root: Path) -> None:
    txs, _ = stale_save(root)
    beta = txs[1]
    out = json.loads(sop(root, "sweep", "--fix", "--accept-sheet", "--json").stdout)
    lost = [f for f in out["findings"] if f["kind"] == "lost_row"]
    assert all(f["done"] for f in lost) and len(lost) == 2
    names_now = sorted(os.listdir(root / "backtests"))
    assert "Beta" not in names_now and any(n.startswith("Beta_FAILED_") for n in names_now)   # never deleted
    assert json.loads(sop(root, "status", "--json").stdout)["lost"]["rows"] == []              # accepted
    sop(root, "sweep", "--exit-code")                                                           # honest: done
    sop(root, "restore", beta.txid)
    assert (root / "backtests" / "Beta" / "run_metadata.json").is_file()
    assert (root / "runs" / beta.run_id / "trades.csv").is_file()
    assert ("Beta", beta.run_id) in rows_calamine(root)
    assert ("Gamma", txs[2].run_id) not in rows_calamine(root)                 # only what was asked for


def test_a_row_removed_by_hand_is_quarantined_never_deleted(root: Path) -> None:
    import openpyxl
    (root / ".sop" / "config.toml").write_text(FAST + '[sweep]\nzombie_action = "delete"\n')
    a, b, c = commit(root, "A"), commit(root, "B"), commit(root, "C")
    wb = openpyxl.load_workbook(sheet_path(root))
    wb.active.delete_rows(3)                             # a person removes B's row, as the SOP's message says
    wb.save(sheet_path(root))
    st = json.loads(sop(root, "status", "--json").stdout)["lost"]
    assert [r["txid"] for r in st["rows"]] == [b.txid] and st["stale_save"] is False
    p = sop(root, "begin", "--strategy", "B", code=1)
    assert "lost row" in p.stderr and f"sop-restore {b.txid}" in p.stderr
    sop(root, "sweep", "--fix")
    assert not (root / "backtests" / "B").exists() and any(n.startswith("B_FAILED_")
                                                           for n in os.listdir(root / "backtests"))
    assert any(n.startswith(f"{b.run_id}_FAILED_") for n in os.listdir(root / "runs"))
    assert {r[0] for r in rows_openpyxl(root)[1:]} == {"A", "C"}
    commit(root, "B")                                    # the SOP's hand-removal flow ends with a free slot
    with pytest.raises(journal.errors.Refused) as e:     # the old B cannot come back over the new one
        repair.restore([b.txid], root=root)
    assert "on row" in e.value.message
    del a, c


# ---------------------------------------------------------------- the sheet or the journal gone

def test_a_deleted_sheet_is_not_recreated_empty_and_is_rebuilt_from_the_journal(root: Path) -> None:
    a, b = commit(root, "Alpha", sharpe=1.5, trades=12), commit(root, "Beta", sharpe=0.7)
    sheet_path(root).unlink()
    p = sop(root, "begin", "--strategy", "Gamma", code=5)
    assert "sop init'" not in p.stderr.replace("sop init --from-journal'", "")    # never "run sop init" here
    st = json.loads(sop(root, "status", "--json").stdout)
    assert "sop init --from-journal" in st["sheet"]["damage"]
    p = sop(root, "init", code=5)
    assert "journal holds 2 committed row(s)" in p.stderr and "--from-journal" in p.stderr
    assert not sheet_path(root).exists()
    sop(root, "init", "--from-journal")
    got = rows_openpyxl(root)
    header = [str(h) for h in got[0]]
    assert header[:4] == ["Strategy", "RunID", "TxID", "CommittedAt"] and "sharpe" in header
    assert [(r[0], r[1], r[header.index("sharpe")]) for r in got[1:]] == [("Alpha", a.run_id, 1.5),
                                                                         ("Beta", b.run_id, 0.7)]
    assert rows_calamine(root) == [("Alpha", a.run_id), ("Beta", b.run_id)]
    sop(root, "sweep", "--exit-code")


@pytest.mark.parametrize("how", ["deleted", "emptied", "older-backup"])
def test_a_journal_that_vanished_or_went_back_is_damage(root: Path, how: str) -> None:
    commit(root, "Alpha")
    jdir = root / ".sop" / "journal"
    backup = root.parent / "backup"
    shutil.copytree(root / ".sop", backup)
    commit(root, "Beta")
    if how == "deleted":
        shutil.rmtree(jdir)
    elif how == "emptied":
        for seg in jdir.iterdir():
            seg.write_bytes(b"")
    else:
        shutil.rmtree(jdir)
        shutil.copytree(backup / "journal", jdir)
        (root / ".sop" / "checkpoint.json").unlink(missing_ok=True)
    p = sop(root, "fsck", code=5)
    assert "anchor" in p.stdout + p.stderr
    p = sop(root, "begin", "--strategy", "Gamma", code=5)
    assert "journal damaged" in p.stderr and "Restore .sop/journal/" in p.stderr
    assert not (root / "backtests" / "Gamma").exists()
    st = json.loads(sop(root, "status", "--json").stdout)
    assert st["journal"]["ok"] is False
    sop(root, "init", code=5)                           # sop init does not paper over it either


def test_a_journal_restored_from_backup_adopts_the_row_it_did_not_know(root: Path) -> None:
    commit(root, "Base")
    backup = root.parent / "backup"
    owner = subprocess.Popen(["sleep", "600"])
    try:
        tx = journal.begin("Alpha", root=root, owner_pid=owner.pid)
        shutil.copytree(root / ".sop", backup)          # the backup knows Alpha only as begun
        (Path(tx.strategy_dir) / "run_metadata.json").write_text(json.dumps({"run_id": tx.run_id}))
        journal.commit(tx.txid, root=root)
    finally:
        owner.kill()
        owner.wait()
    shutil.rmtree(root / ".sop")
    shutil.copytree(backup, root / ".sop")              # the anchor went back with it: not detectable as older
    res = json.loads(sop(root, "recover", "--json").stdout)
    assert [(a["action"], a["done"]) for a in res["actions"] if a["txid"] == tx.txid] == [("adopt", True)]
    assert (root / "backtests" / "Alpha").is_dir()
    sop(root, "sweep", "--fix", "--exit-code")
    assert ("Alpha", tx.run_id) in rows_calamine(root)
    assert json.loads(sop(root, "status", "--json").stdout)["lost"]["rows"] == []


# ---------------------------------------------------------------- stuck decisions

def test_a_persons_row_in_the_way_of_a_deferred_run_is_a_finding_not_a_second_row(root: Path) -> None:
    import openpyxl
    tx = journal.begin("Alpha", root=root, owner_pid=os.getpid())
    (Path(tx.strategy_dir) / "run_metadata.json").write_text(json.dumps({"run_id": tx.run_id}))
    other = journal.begin("Other", root=root, owner_pid=os.getpid())
    owner_file = sheet_path(root).with_name("~$" + sheet_path(root).name[2:])
    owner_file.write_bytes(b"\x03ana" + b" " * 50)
    with pytest.raises(journal.errors.SheetLocked):
        journal.commit(tx.txid, root=root, defer_on_lock=True)
    owner_file.unlink()
    wb = openpyxl.load_workbook(sheet_path(root))
    wb.active.append(["Alpha", "typed-by-hand"])        # a person types a row for the strategy meanwhile
    wb.save(sheet_path(root))
    journal.abort(other.txid, root=root)
    p = sop(root, "recover", code=1)
    assert f"{tx.txid}" in p.stderr and "row 2 holds strategy 'Alpha'" in p.stderr and "sop-abort" in p.stderr
    assert [r[0] for r in rows_openpyxl(root)[1:]] == ["Alpha"]              # never a second row
    assert rows_openpyxl(root)[1][1] == "typed-by-hand"
    p = sop(root, "commit", tx.txid, code=1)
    assert "cannot be stored" in p.stderr
    sop(root, "abort", tx.txid)                                              # the way out works
    sop(root, "recover")


def test_one_stuck_transaction_does_not_stop_the_others(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    owners = [subprocess.Popen(["sleep", "600"]) for _ in range(2)]
    stuck = journal.begin("Stuck", root=root, owner_pid=owners[0].pid)
    free = journal.begin("Free", root=root, owner_pid=owners[1].pid)
    for o in owners:
        o.kill()
        o.wait()
    # the stuck one's folder cannot be renamed (a file system that refuses); the other must still recover
    import journal.fsops as fsops
    real = fsops.rename

    def refuse(src: Any, dst: Any) -> None:
        if "Stuck" in str(src):
            raise PermissionError(13, "Permission denied", str(src))
        real(src, dst)
    monkeypatch.setattr(fsops, "rename", refuse)
    res = journal.recover(root=root)
    by = {a.txid: a for a in res.actions}
    assert by[free.txid].done is True and by[stuck.txid].done is False
    assert "not done" in by[stuck.txid].detail and res.failed == [stuck.txid]
    assert res.error is not None and res.error.exit_code == 5          # an I/O error: the disk, not a decision
    monkeypatch.setattr(fsops, "rename", real)
    again = journal.recover(root=root)
    assert [(a.txid, a.action, a.done) for a in again.actions] == [(stuck.txid, "finish rollback", True)]


def test_a_stuck_plan_can_be_abandoned(root: Path) -> None:
    commit(root, "A")
    from journal import txn, workspace
    ws = workspace.open_workspace(root)
    with txn.Session(ws).locked() as w:                 # a sweep whose plan a crash left behind
        w.append("tx-stuck", "plan", {"steps": [{"op": "delete", "path": "runs/nope", "finding": "zombie_run"}],
                                      "sweep": 1})
    p = sop(root, "abort", "tx-stuck")
    assert "Aborted tx-stuck" in p.stderr
    log = json.loads(sop(root, "log", "tx-stuck", "--json").stdout)["transactions"][0]
    assert log["state"] == "aborted" and [r["type"] for r in log["records"]] == ["plan", "abandon"]
    assert sop(root, "recover").stderr.strip() == "Nothing to recover."


# ---------------------------------------------------------------- release, and undoing a sweep

def test_release_frees_a_slot_the_journaled_way(root: Path) -> None:
    a = commit(root, "Alpha", sharpe=1.0)
    commit(root, "Beta")
    p = sop(root, "release", "alpha")
    assert p.stdout.strip().startswith("tx-") and "removed row 2" in p.stderr
    assert [r[0] for r in rows_openpyxl(root)[1:]] == ["Beta"]
    assert not (root / "backtests" / "Alpha").exists() and any(n.startswith("Alpha_FAILED_")
                                                               for n in os.listdir(root / "backtests"))
    assert json.loads(sop(root, "status", "--json").stdout)["lost"]["rows"] == []      # released is no loss
    sop(root, "sweep", "--exit-code")
    commit(root, "Alpha", sharpe=2.0)                                                   # the slot is free
    log = json.loads(sop(root, "log", "--strategy", "Alpha", "--json").stdout)["transactions"]
    assert [t["state"] for t in log] == ["committed", "committed", "committed"]
    released = [r for r in log[1]["records"] if r["type"] == "remove_row"][0]
    assert released["data"]["values"]["Strategy"] == "Alpha" and released["data"]["run_id"] == a.run_id


def test_release_delete_refusals_and_nothing_to_release(root: Path) -> None:
    commit(root, "Alpha")
    tx = journal.begin("Held", root=root, owner_pid=os.getpid())
    p = sop(root, "release", "Held", code=1)
    assert "is held by" in p.stderr and (root / "backtests" / "Held").is_dir()
    journal.abort(tx.txid, root=root)
    sop(root, "release", "Nobody", code=1)
    sop(root, "release", "Alpha", "--delete")
    assert not (root / "backtests" / "Alpha").exists()
    assert not any(n.startswith("Alpha") for n in os.listdir(root / "backtests"))
    log = json.loads(sop(root, "log", "--strategy", "Alpha", "--json").stdout)["transactions"][0]
    deletes = [r for r in log["records"] if r["type"] == "delete"]
    assert len(deletes) == 2 and deletes[0]["data"]["files"]                          # with their file lists


def test_restore_sweep_puts_back_the_rows_an_adopted_sheets_first_sweep_removed(tmp_path: Path) -> None:
    import openpyxl
    r = tmp_path / "adopted"
    (r / "backtests").mkdir(parents=True)
    (r / "runs").mkdir()
    wb = openpyxl.Workbook()
    wb.active.append(["Strategy", "Run ID", "Sharpe"])
    wb.active.append(["Old1", "r1", 1.25])
    wb.active.append(["Old2", "r2", 0.5])
    wb.save(r / "backtests" / "Strategy_Master_Filter.xlsx")
    journal.init(r)
    (r / ".sop" / "config.toml").write_text(FAST)
    swept = json.loads(sop(r, "sweep", "--fix", "--json").stdout)       # the seed's orphaned-row rule
    assert [x[0] for x in rows_openpyxl(r)[1:]] == []
    res = json.loads(sop(r, "restore", "--sweep", swept["txid"], "--json").stdout)
    assert [(i["strategy"], i["done"]) for i in res["items"]] == [("Old1", True), ("Old2", True)]
    assert [x[:3] for x in rows_openpyxl(r)[1:]] == [["Old1", "r1", 1.25], ["Old2", "r2", 0.5]]
    sop(r, "restore", "--sweep", "tx-nope", code=4)


# ---------------------------------------------------------------- sheets the writer would refuse: refused at the gate

def _rewrite_sheet_xml(path: Path, fn: Any) -> None:
    """Rewrite the first worksheet part of a workbook with ``fn(xml) -> xml`` (other members copied as they are)."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        members = [(i, z.read(i.filename)) for i in z.infolist()]
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for info, data in members:
            out.writestr(info, fn(data) if info.filename == "xl/worksheets/sheet1.xml" else data)
    tmp.replace(path)


def _person_sheet(root: Path) -> None:
    import openpyxl
    wb = openpyxl.Workbook()
    wb.active.append(["Strategy", "RunID", "Sharpe"])
    wb.active.append(["Old1", "r1", 1.0])
    wb.active.append(["Old2", "r2", 2.0])
    wb.save(sheet_path(root))


def test_a_sheet_with_rows_out_of_order_is_refused_at_the_gate_not_stuck(root: Path) -> None:
    import re
    _person_sheet(root)

    def swap(xml: bytes) -> bytes:
        rows = re.findall(rb"<row [^>]*>.*?</row>", xml, re.S)
        return xml.replace(rows[1] + rows[2], rows[2] + rows[1])
    _rewrite_sheet_xml(sheet_path(root), swap)
    tx = journal.begin("Alpha", root=root, owner_pid=os.getpid())
    (Path(tx.strategy_dir) / "run_metadata.json").write_text(json.dumps({"run_id": tx.run_id}))
    before = sheet_path(root).read_bytes()
    p = sop(root, "commit", tx.txid, code=1)
    assert "Validation failed: the Master Sheet cannot take the row" in p.stderr and "order" in p.stderr
    assert json.loads(sop(root, "status", "--json").stdout)["transactions"][0]["state"] == "begun"  # not decided
    assert sheet_path(root).read_bytes() == before
    sop(root, "recover")                                  # nothing stuck: recovery has nothing to do
    sop(root, "abort", tx.txid)


def test_a_sheet_whose_rows_carry_r_last_commits(root: Path) -> None:
    """As LibreOffice <= 4.1 and old Google Docs write them: attribute order carries no meaning."""
    import re
    _person_sheet(root)

    def r_last(xml: bytes) -> bytes:
        def move(m: re.Match[bytes]) -> bytes:
            tag, attrs = m[1], m[2]
            r = re.search(rb'\sr="[^"]*"', attrs)
            if r is None:
                return m[0]
            first = b' spans="1:3"' if tag == b"row" else b' s="0"'
            rest = attrs.replace(r[0], b"")
            return b"<" + tag + (rest if rest.strip() else first) + r[0] + m[3]
        return re.sub(rb"<(row|c)(\s[^>]*?)(/?>)", move, xml)
    _rewrite_sheet_xml(sheet_path(root), r_last)
    import zipfile
    xml = zipfile.ZipFile(sheet_path(root)).read("xl/worksheets/sheet1.xml")
    assert b'<row r="' not in xml and b'<c r="' not in xml and b' r="A2"' in xml
    a = commit(root, "Alpha", sharpe=1.5)
    b = commit(root, "Beta", sharpe=0.5)
    got = rows_openpyxl(root)
    assert [r[:3] for r in got[1:]] == [["Old1", "r1", 1.0], ["Old2", "r2", 2.0], ["Alpha", a.run_id, 1.5],
                                        ["Beta", b.run_id, 0.5]]
    assert rows_calamine(root)[2:] == [("Alpha", a.run_id), ("Beta", b.run_id)]


# ---------------------------------------------------------------- found in review: a redo never touches a newcomer

def test_an_unfinished_release_holds_its_name_until_recovery_finishes_it(root: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from journal import fsops
    commit(root, "Keep")
    commit(root, "Alpha")
    real = fsops.rename
    calls: list[int] = []

    def crash_after_first(src: Any, dst: Any) -> None:
        real(src, dst)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt          # the process dies right after its first rename
    monkeypatch.setattr(fsops, "rename", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        repair.release("Alpha", root=root)
    monkeypatch.setattr(fsops, "rename", real)
    with pytest.raises(journal.errors.Refused) as e:       # a new Alpha may not start under the half-done release
        journal.begin("Alpha", root=root, owner_pid=os.getpid())
    assert "unfinished release" in e.value.message and "sop-recover" in (e.value.detail or "")
    journal.recover(root=root)
    b = commit(root, "Alpha", sharpe=9.0)                  # now the slot is free, and the new run is left alone
    assert (root / "backtests" / "Alpha" / "run_metadata.json").is_file() and b.committed is not None
    sop(root, "sweep", "--fix", "--exit-code")
    assert ("Alpha", b.run_id) in rows_calamine(root)


def test_a_redo_acts_only_on_the_folder_its_plan_named(root: Path) -> None:
    from journal import txn, workspace
    (root / "runs" / "zrun").mkdir(parents=True)
    ws = workspace.open_workspace(root)
    step = {"op": "delete", "path": "runs/zrun", "finding": "zombie_run", "id": txn.folder_id(root / "runs" / "zrun")}
    with txn.Session(ws).locked() as w:                    # a sweep that crashed after its plan
        w.append("tx-crashed", "plan", {"steps": [step], "sweep": 1})
    (root / "runs" / "zrun").rename(root.parent / "elsewhere")
    (root / "runs" / "zrun").mkdir()                       # someone else's folder now has the name
    (root / "runs" / "zrun" / "keep.txt").write_text("mine")
    journal.recover(root=root)
    assert (root / "runs" / "zrun" / "keep.txt").read_text() == "mine"
    log = json.loads(sop(root, "log", "tx-crashed", "--json").stdout)["transactions"][0]
    done = [r for r in log["records"] if r["type"] == "done"][0]
    assert done["data"]["skipped"] == {"0": "another folder has its name now"}


def test_an_orphaned_committed_rows_other_folder_is_quarantined_never_deleted(root: Path) -> None:
    (root / ".sop" / "config.toml").write_text(FAST + '[sweep]\nzombie_action = "delete"\n')
    a = commit(root, "Alpha")
    shutil.rmtree(root / "runs" / a.run_id)                # its run snapshot is gone: the row is orphaned
    doc = json.loads(sop(root, "sweep", "--fix", "--json").stdout)
    kinds = {f["kind"]: f for f in doc["findings"]}
    assert kinds["orphaned_row"]["done"] and kinds["zombie_folder"]["action"].startswith("quarantine to")
    assert any(n.startswith("Alpha_FAILED_") for n in os.listdir(root / "backtests"))   # invariant 8


def test_a_restore_the_sheet_cannot_take_moves_nothing(root: Path) -> None:
    import openpyxl
    with journal.transaction("Alpha", root=root) as tx:
        (Path(tx.strategy_dir) / "run_metadata.json").write_text(
            json.dumps({"run_id": tx.run_id, "notes": "bad\u0001char"}))   # no Notes column: committed fine
    commit(root, "Keep")
    wb = openpyxl.load_workbook(sheet_path(root))
    wb.active.delete_rows(2)                               # Alpha's row removed by hand
    wb.active.cell(row=1, column=5, value="Notes")         # and a person adds a Notes column
    wb.save(sheet_path(root))
    sop(root, "sweep", "--fix")                            # Alpha's folders quarantined (not a stale save)
    before = tree(root)
    p = sop(root, "restore", tx.txid, code=1)
    assert "cannot take it" in p.stderr and "U+0001" in p.stderr
    assert tree(root) == before                            # nothing moved back, so nothing can become a zombie
    sop(root, "sweep", "--fix", "--exit-code")
    assert tree(root) == before
