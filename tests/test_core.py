"""sop init / begin / commit / abort through the CLI (SPEC §1, §5, §6).

The commands run in-process through conftest's ``sop()``; real processes only where the
process matters: racing begins and runs, concurrent commits, a crash (``SOP_CRASH_AT``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from datetime import UTC
from pathlib import Path

import pytest
from conftest import BIN, WS, scrubbed_env, sop, sop_json

ROW_EXISTS = ("Strategy 'Alpha' already exists in Master Sheet (Row 2). Verification Failed: "
              "1-Strategy-1-Row Invariant. Action: Remove row from Master Sheet to proceed.")
ZOMBIE = ("Zombie Artifact detected. Strategy folder exists but is unindexed. "
          "Action: Run cleanup tool or manually delete folder.")


# ---------------------------------------------------------------- init and the workspace

def test_init_creates_sop_dir_config_and_sheet(tmp_path: Path) -> None:
    sop("init", "-C", str(tmp_path))
    assert (tmp_path / ".sop" / "config.toml").read_text().startswith("# sop configuration")
    ws = WS(tmp_path)
    assert ws.rows() == [["Strategy", "RunID", "TxID", "CommittedAt"]]


def test_init_accepts_existing_sheet_without_rewriting_it(tmp_path: Path) -> None:
    import openpyxl
    (tmp_path / "backtests").mkdir()
    wb = openpyxl.Workbook()
    wb.active.append(["Strategy", "Run ID", "Sharpe"])
    wb.active.append(["Old", "r1", 1.5])
    path = tmp_path / "backtests" / "Strategy_Master_Filter.xlsx"
    wb.save(path)
    before = path.read_bytes()
    sop("init", "-C", str(tmp_path))
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [b"not a workbook", b"PK\x03\x04garbage"])
def test_init_refuses_unreadable_sheet(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "backtests").mkdir()
    (tmp_path / "backtests" / "Strategy_Master_Filter.xlsx").write_bytes(content)
    p = sop("init", "-C", str(tmp_path), code=5)
    assert "Master Sheet" in p.stderr or "workbook" in p.stderr.lower()
    assert not (tmp_path / ".sop").exists()


def test_init_refuses_sheet_without_required_columns(tmp_path: Path) -> None:
    import openpyxl
    (tmp_path / "backtests").mkdir()
    wb = openpyxl.Workbook()
    wb.active.append(["Name", "Sharpe"])
    wb.save(tmp_path / "backtests" / "Strategy_Master_Filter.xlsx")
    p = sop("init", "-C", str(tmp_path), code=5)
    assert "Strategy" in p.stderr and "RunID" in p.stderr


def test_no_workspace_is_exit_2_with_hint(tmp_path: Path) -> None:
    p = sop("begin", "--strategy", "A", code=2, cwd=tmp_path)
    assert "sop init" in p.stderr
    doc = sop_json("status", code=2, cwd=tmp_path)
    assert set(doc) == {"error"} and doc["error"]["code"] == 2
    assert "not a sop workspace" in doc["error"]["message"]


def test_root_found_from_subfolder_and_env(ws: WS) -> None:
    sub = ws.root / "backtests"
    txid = sop("begin", "--strategy", "FromSub", cwd=sub).stdout.strip()
    assert txid.startswith("tx-")
    txid2 = sop("begin", "--strategy", "FromEnv", cwd=Path("/"),
                env=scrubbed_env(SOP_ROOT=str(ws.root))).stdout.strip()
    assert txid2.startswith("tx-") and txid2 != txid


def test_unknown_config_key_is_a_clear_error(ws: WS) -> None:
    (ws.root / ".sop" / "config.toml").write_text("[lock]\nretry = 3\n")
    p = ws.sop("begin", "--strategy", "A", code=2)
    assert "unknown key 'retry'" in p.stderr


def test_sop_cmd_is_the_same_as_sop_dash_cmd(ws: WS) -> None:
    p = sop("", "begin", "-C", str(ws.root), "--strategy", "ViaSop")
    assert p.stdout.strip().startswith("tx-")
    assert (ws.root / "backtests" / "ViaSop").is_dir()


# ---------------------------------------------------------------- begin

def test_begin_prints_txid_alone_and_creates_folders(ws: WS) -> None:
    p = ws.sop("begin", "--strategy", "Alpha", "--run-id", "r-001")
    assert p.stdout.strip().startswith("tx-") and p.stdout.count("\n") == 1
    assert (ws.root / "backtests" / "Alpha").is_dir() and (ws.root / "runs" / "r-001").is_dir()


def test_begin_json_shape_and_allocated_run_id(ws: WS) -> None:
    doc = ws.json("begin", "--strategy", "Alpha")
    assert set(doc) == {"txid", "strategy", "run_id", "strategy_dir", "run_dir"}
    assert doc["strategy"] == "Alpha" and doc["run_id"]
    assert Path(doc["run_dir"]) == ws.root / "runs" / doc["run_id"]
    recs = ws.records()
    assert [(r["type"], r["data"].get("path")) for r in recs[1:]] == [
        ("mkdir", "backtests/Alpha"), ("mkdir", "runs"), ("mkdir", f"runs/{doc['run_id']}")]   # runs/ is new
    owner = recs[0]["data"]["owner"]
    assert owner["pid"] == os.getpid() and owner["host"] and owner["start"] and owner["boot"]


UNSAFE = ["", "x" * 121, ".", "..", "a/b", "a\\b", "tab\there", "-lead", ".hidden", "trail ", "trail.",
          "CON", "nul", "com1", "Lpt9.txt", "Alpha_FAILED_20260101T000000Z", "new\nline"]


@pytest.mark.parametrize("name", UNSAFE)
def test_begin_refuses_unsafe_strategy_names(ws: WS, name: str) -> None:
    before = ws.tree()
    p = ws.sop("begin", "--strategy", name, code=1)
    assert "Unsafe strategy name" in p.stderr
    assert ws.tree() == before and ws.records() == []


@pytest.mark.parametrize("run_id", ["..", "r/1", "aux", "-r", "r1_FAILED_20260101T000000Z"])
def test_begin_refuses_unsafe_run_ids(ws: WS, run_id: str) -> None:
    p = ws.sop("begin", "--strategy", "Fine", "--run-id", run_id, code=1)
    assert "Unsafe run id" in p.stderr
    assert ws.records() == []


def test_begin_refuses_strategy_on_a_row_with_the_seed_text(ws: WS) -> None:
    ws.full_run("Alpha")
    before = ws.tree()
    p = ws.sop("begin", "--strategy", "Alpha", code=1)
    assert ROW_EXISTS in p.stderr
    assert ws.tree() == before


def test_begin_refuses_a_row_differing_only_in_case_naming_its_spelling(ws: WS) -> None:
    ws.full_run("Alpha")
    p = ws.sop("begin", "--strategy", "ALPHA", code=1)
    assert "'Alpha'" in p.stderr and "Row 2" in p.stderr and "1-Strategy-1-Row" in p.stderr


def test_begin_refuses_zombie_folder_with_the_seed_text(ws: WS) -> None:
    (ws.root / "backtests" / "Ghost").mkdir()
    p = ws.sop("begin", "--strategy", "ghost", code=1)
    assert ZOMBIE in p.stderr
    assert not (ws.root / "runs").exists() or not any((ws.root / "runs").iterdir())


def test_begin_refuses_strategy_held_by_open_transaction_before_zombie_check(ws: WS) -> None:
    txid = ws.begin("Alpha")
    p = ws.sop("begin", "--strategy", "alpha", code=1)
    assert txid in p.stderr and "Zombie" not in p.stderr and "pid" in p.stderr


def test_begin_refuses_run_id_on_a_row_or_with_a_folder(ws: WS) -> None:
    tx = ws.full_run("Alpha")
    p = ws.sop("begin", "--strategy", "Beta", "--run-id", tx["run_id"].upper(), code=1)
    assert "row 2" in p.stderr
    (ws.root / "runs" / "taken").mkdir()
    p = ws.sop("begin", "--strategy", "Beta", "--run-id", "Taken", code=1)
    assert "runs/taken/" in p.stderr
    assert not (ws.root / "backtests" / "Beta").exists()


def test_begin_refuses_run_id_held_by_open_transaction(ws: WS) -> None:
    ws.begin("Alpha", "--run-id", "shared")
    p = ws.sop("begin", "--strategy", "Beta", "--run-id", "shared", code=1)
    assert "held by" in p.stderr


def test_begin_refuses_owner_pid_not_running(ws: WS) -> None:
    p = ws.sop("begin", "--strategy", "A", "--owner-pid", "999999999", code=1)
    assert "not running" in p.stderr
    assert ws.records() == []


def test_begin_owner_from_env_and_flag(ws: WS) -> None:
    doc = sop_json("begin", "-C", str(ws.root), "--strategy", "A", env=scrubbed_env(SOP_OWNER_PID="1"))
    begins = [r for r in ws.records() if r["type"] == "begin"]
    assert begins[0]["data"]["owner"]["pid"] == 1 and doc["txid"] == begins[0]["txid"]
    ws.sop("begin", "--strategy", "B", "--owner-pid", str(os.getpid()))
    assert [r for r in ws.records() if r["type"] == "begin"][1]["data"]["owner"]["pid"] == os.getpid()


@pytest.mark.parametrize("fmt", ["json", "toml", "yaml"])
def test_begin_directive_files(ws: WS, tmp_path: Path, fmt: str) -> None:
    text = {"json": '{"Strategy": "Dir1", "RunID": "run-9"}', "toml": 'Strategy = "Dir1"\nRunID = "run-9"\n',
            "yaml": "Strategy: Dir1\nRunID: run-9\n"}[fmt]
    d = tmp_path / f"directive.{fmt}"
    d.write_text(text)
    doc = ws.json("begin", "--directive", str(d))
    assert doc["strategy"] == "Dir1" and doc["run_id"] == "run-9"


def test_begin_directive_conflicts_and_missing_strategy(ws: WS, tmp_path: Path) -> None:
    d = tmp_path / "d.json"
    d.write_text('{"Strategy": "One"}')
    p = ws.sop("begin", "--directive", str(d), "--strategy", "Two", code=1)
    assert "differs" in p.stderr
    d.write_text('{"Sharpe": 1}')
    p = ws.sop("begin", "--directive", str(d), code=1)
    assert "no 'Strategy'" in p.stderr
    d.write_text("{nope")
    ws.sop("begin", "--directive", str(d), code=1)
    assert ws.records() == []


def test_begin_refuses_corrupt_sheet_with_exit_5(ws: WS) -> None:
    ws.sheet.write_bytes(b"garbage")
    p = ws.sop("begin", "--strategy", "A", code=5)
    assert "Master Sheet" in p.stderr
    assert ws.records() == []


def test_begin_refuses_missing_sheet_with_exit_5(ws: WS) -> None:
    ws.sheet.unlink()
    p = ws.sop("begin", "--strategy", "A", code=5)
    assert "sop init" in p.stderr


def test_json_errors_are_one_document(ws: WS) -> None:
    ws.full_run("Alpha")
    doc = ws.json("begin", "--strategy", "Alpha", code=1)
    assert doc == {"error": {"code": 1, "message": ROW_EXISTS}}


# ---------------------------------------------------------------- commit

def test_commit_appends_a_typed_row_from_metadata(ws: WS) -> None:
    import openpyxl
    wb = openpyxl.Workbook()
    wb.active.append(["Strategy", "Run ID", "TxID", "Committed At", "Sharpe", "Trades", "Live", "Note", "Big"])
    wb.save(ws.sheet)
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"], sharpe=9.9, note="=1+1", live=True, big=12345678901234567,
                      metrics={"Sharpe": 1.25, "trades": 42, "ignored": None}, tags=["x"])
    doc = ws.json("commit", tx["txid"])
    assert doc["state"] == "committed" and doc["row"] == 2
    header, row = ws.rows()
    assert row[0] == "Alpha" and row[1] == tx["run_id"] and row[2] == tx["txid"]
    assert row[3].endswith("Z") and row[3][:4].isdigit()
    assert row[4] == 9.9                      # top level wins over metrics
    assert row[5] == 42 and isinstance(row[5], int)
    assert row[6] is True
    assert row[7] == "=1+1"                   # text, never a formula
    assert row[8] == "12345678901234567"      # beyond 15 digits: text
    with zipfile.ZipFile(ws.sheet) as z:
        xml = z.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in xml and "<f " not in xml


def test_commit_twice_exits_0_and_writes_nothing(ws: WS) -> None:
    tx = ws.full_run("Alpha")
    n, before = len(ws.records()), ws.sheet.read_bytes()
    p = ws.sop("commit", tx["txid"])
    assert "already committed" in p.stderr
    assert len(ws.records()) == n and ws.sheet.read_bytes() == before


def test_commit_unknown_txid_is_exit_4(ws: WS) -> None:
    doc = ws.json("commit", "tx-nope", code=4)
    assert "no such transaction" in doc["error"]["message"]


GATES = {
    "missing": (None, "does not exist"),
    "not json": ("{nope", "not valid JSON"),
    "not object": ("[1, 2]", "JSON object"),
    "run_id not string": ('{"run_id": 5}', "string 'run_id'"),
    "run_id differs": ('{"run_id": "other"}', "says run_id 'other'"),
    "strategy differs": (None, "says strategy"),
}


@pytest.mark.parametrize("case", list(GATES))
def test_commit_gate_refuses_and_leaves_the_transaction_open(ws: WS, case: str) -> None:
    tx = ws.begin_tx("Alpha")
    meta = ws.root / "backtests" / "Alpha" / "run_metadata.json"
    content, msg = GATES[case]
    if case == "strategy differs":
        content = json.dumps({"run_id": tx["run_id"], "strategy": "Beta"})
    if content is not None:
        meta.write_text(content)
    p = ws.sop("commit", tx["txid"], code=1)
    assert msg in p.stderr and "Validation failed" in p.stderr
    assert ws.rows() == [["Strategy", "RunID", "TxID", "CommittedAt"]]
    assert ws.json("status")["transactions"][0]["state"] == "begun"
    ws.write_metadata("Alpha", tx["run_id"])          # fix it and commit again
    ws.sop("commit", tx["txid"])
    assert ws.rows()[1][0] == "Alpha"


def test_commit_gate_refuses_missing_run_folder(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    os.rmdir(tx["run_dir"])
    p = ws.sop("commit", tx["txid"], code=1)
    assert "does not exist" in p.stderr and "runs/" in p.stderr


def test_commit_gate_refuses_a_row_added_by_hand(ws: WS) -> None:
    import openpyxl
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    wb = openpyxl.load_workbook(ws.sheet)
    wb.active.append(["alpha", "hand"])
    wb.save(ws.sheet)
    p = ws.sop("commit", tx["txid"], code=1)
    assert "already on Master Sheet row 2" in p.stderr


def _lock_sheet(ws: WS, user: str = "Ana Trader") -> Path:
    owner = ws.sheet.with_name("~$" + ws.sheet.name)
    owner.write_bytes(bytes([len(user)]) + user.encode() + b"\x00" * (53 - len(user)))
    return owner


def test_commit_on_locked_sheet_rolls_back_with_the_seed_alert(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    _lock_sheet(ws)
    before = ws.sheet.read_bytes()
    p = ws.sop("commit", tx["txid"], code=3)
    assert "Run passed but Indexing failed. Artifacts scrubbed to maintain consistency." in p.stderr
    assert "Ana Trader" in p.stderr and "_FAILED_" in p.stderr
    assert ws.sheet.read_bytes() == before
    names = sorted(p.name for p in (ws.root / "backtests").iterdir() if p.is_dir())
    assert len(names) == 1 and names[0].startswith("Alpha_FAILED_")
    assert [p.name.startswith(tx["run_id"] + "_FAILED_") for p in (ws.root / "runs").iterdir()] == [True]
    assert ws.json("status")["transactions"] == []


def test_libreoffice_lock_file_names_its_user(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    ws.sheet.with_name(f".~lock.{ws.sheet.name}#").write_text("Bob Quant,bob,host1,25.11.2026 10:00,file:///x;")
    p = ws.sop("commit", tx["txid"], code=3)
    assert "Bob Quant" in p.stderr


def test_commit_deferred_keeps_artifacts_and_recover_adds_the_row(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    lock = _lock_sheet(ws)
    p = ws.sop("commit", tx["txid"], "--defer-on-lock", code=3)
    assert "deferred" in p.stderr and "sop-recover" in p.stderr
    assert (ws.root / "backtests" / "Alpha").is_dir()
    st = ws.json("status")
    assert st["transactions"][0]["state"] == "deferred" and st["sheet"]["locked_by"].startswith("Ana Trader")
    ws.sop("begin", "--strategy", "Alpha", code=1)     # still holds its name
    ws.sop("recover", code=3)                          # still locked: waits
    lock.unlink()
    ws.sop("recover")
    assert ws.rows()[1][:2] == ["Alpha", tx["run_id"]]
    assert ws.json("status")["transactions"] == []


def test_on_locked_defer_in_config(ws: WS) -> None:
    (ws.root / ".sop" / "config.toml").write_text('[lock]\nretries = 1\nbackoff_seconds = 0\non_locked = "defer"\n')
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    _lock_sheet(ws)
    ws.sop("commit", tx["txid"], code=3)
    assert ws.json("status")["transactions"][0]["state"] == "deferred"


# ---------------------------------------------------------------- abort

def test_abort_quarantines_and_is_idempotent(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    doc = ws.json("abort", tx["txid"])
    assert doc["state"] == "aborted"
    dst = doc["moved"]["backtests/Alpha"]
    assert dst.startswith("backtests/Alpha_FAILED_") and (ws.root / dst).is_dir()
    assert not (ws.root / "backtests" / "Alpha").exists()
    assert ws.json("abort", tx["txid"])["already"] is True
    ws.begin("Alpha")                                  # the slot is free again


def test_abort_delete_records_the_file_list(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    (Path(tx["strategy_dir"]) / "equity.csv").write_text("1,2,3\n")
    ws.sop("abort", tx["txid"], "--delete")
    assert not Path(tx["strategy_dir"]).exists() and not Path(tx["run_dir"]).exists()
    deletes = [r for r in ws.records() if r["type"] == "delete"]
    assert deletes[0]["data"]["files"] == [["equity.csv", 6]]


def test_quarantine_name_taken_gets_a_suffix(ws: WS) -> None:
    from datetime import datetime

    import journal
    now = datetime(2026, 11, 25, 13, 0, 0, tzinfo=UTC)
    moved = []
    for _ in range(3):
        tx = journal.begin("Alpha", run_id=None, root=ws.root, now=now)
        moved.append(journal.abort(tx.txid, root=ws.root, now=now).moved["backtests/Alpha"])
    assert moved == ["backtests/Alpha_FAILED_20261125T130000Z", "backtests/Alpha_FAILED_20261125T130000Z-2",
                     "backtests/Alpha_FAILED_20261125T130000Z-3"]


def test_abort_unknown_and_committed_are_exit_4(ws: WS) -> None:
    ws.sop("abort", "tx-missing", code=4)
    tx = ws.full_run("Alpha")
    p = ws.sop("abort", tx["txid"], code=4)
    assert "committed" in p.stderr


# ---------------------------------------------------------------- the journal as seen from the commands

def test_every_record_is_chained_and_checksummed(ws: WS) -> None:
    import hashlib
    ws.full_run("Alpha")
    seg = next((ws.root / ".sop" / "journal").glob("*.jsonl"))
    lines = seg.read_bytes().splitlines()
    prev = "0" * 64
    for i, line in enumerate(lines, 1):
        rec = json.loads(line)
        assert rec["seq"] == i and rec["prev"] == prev
        assert hashlib.sha256(line[:-74] + b"}").hexdigest() == rec["sum"]
        assert list(rec)[:9] == ["seq", "txid", "type", "time", "user", "host", "pid", "prev", "data"]
        prev = hashlib.sha256(line).hexdigest()


def test_a_torn_tail_is_cut_and_kept_by_the_next_write(ws: WS) -> None:
    ws.begin("Alpha")
    seg = next((ws.root / ".sop" / "journal").glob("*.jsonl"))
    with open(seg, "ab") as f:
        f.write(b'{"seq":4,"txid":"half')
    ws.begin("Beta")
    kept = list((ws.root / ".sop" / "lost+found").iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == b'{"seq":4,"txid":"half'
    types = [r["type"] for r in ws.records()]
    assert types.count("tail_cut") == 1 and types[types.index("tail_cut") + 1] == "begin"
    assert types.index("tail_cut") == 4          # right after Alpha's begin and three mkdirs


def test_damage_before_the_tail_refuses_writes_with_exit_5(ws: WS) -> None:
    ws.begin("Alpha")
    seg = next((ws.root / ".sop" / "journal").glob("*.jsonl"))
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"mkdir", b"mkdor")
    seg.write_bytes(b"".join(lines))
    p = ws.sop("begin", "--strategy", "Beta", code=5)
    assert "line 2" in p.stderr and "sop-fsck" in p.stderr
    assert not (ws.root / "backtests" / "Beta").exists()


# ---------------------------------------------------------------- concurrency

def test_six_racing_begins_of_one_strategy_admit_exactly_one(ws: WS) -> None:
    procs = [subprocess.Popen([sys.executable, str(BIN / "sop-begin"), "-C", str(ws.root), "--strategy", "Race"],
                              env=scrubbed_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    codes = [p.wait(timeout=120) for p in procs]
    assert sorted(codes) == [0, 1, 1, 1, 1, 1]
    assert [r["type"] for r in ws.records()].count("begin") == 1


def test_eight_concurrent_runs_lose_no_row(ws: WS) -> None:
    script = ("import json,os; p=os.environ['SOP_STRATEGY_DIR']; "
              "json.dump({'run_id': os.environ['SOP_RUN_ID'], 'metrics': {'sharpe': 1.0}}, "
              "open(os.path.join(p,'run_metadata.json'),'w'))")
    procs = [subprocess.Popen([sys.executable, str(BIN / "sop-run"), "-C", str(ws.root), "--strategy", f"S{i}",
                               "--", sys.executable, "-c", script],
                              env=scrubbed_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outs
    rows = ws.rows()[1:]
    assert sorted(r[0] for r in rows) == [f"S{i}" for i in range(8)]
    assert len({r[1] for r in rows}) == 8


def test_the_index_cached_after_a_commit_matches_a_fresh_read(ws: WS) -> None:
    from journal import sheet, workspace
    for name in ("Alpha", "Beta", "Gamma"):
        ws.full_run(name)
    w = workspace.open_workspace(ws.root)
    cached = sheet.read(w)
    assert cached.stamp and cached._rows is None          # served from the cache written by the commit
    fresh = sheet.read(w, cache=False)
    assert (cached.numbers, cached.strategies, cached.run_ids) == (fresh.numbers, fresh.strategies, fresh.run_ids)
    assert cached.strategies == ["Alpha", "Beta", "Gamma"]


def test_a_hand_edit_invalidates_the_cached_index(ws: WS) -> None:
    import openpyxl
    ws.full_run("Alpha")
    ws.sop("begin", "--strategy", "Hand")                 # reads (and caches) the sheet
    wb = openpyxl.load_workbook(ws.sheet)
    wb.active.append(["Typed", "by-hand"])
    wb.save(ws.sheet)
    p = ws.sop("begin", "--strategy", "typed", code=1)
    assert "'Typed'" in p.stderr and "Row 3" in p.stderr


@pytest.mark.parametrize("bad", ["x" * 32768, "bell\x07"], ids=["too-long", "control-char"])
def test_a_value_the_sheet_cannot_store_is_refused_at_the_gate(ws: WS, bad: str) -> None:
    import openpyxl
    wb = openpyxl.Workbook()
    wb.active.append(["Strategy", "RunID", "Note"])
    wb.save(ws.sheet)
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"], note=bad)
    p = ws.sop("commit", tx["txid"], code=1)
    assert "Validation failed" in p.stderr
    assert ws.json("status")["transactions"][0]["state"] == "begun"   # no decision recorded
    other = ws.begin_tx("Beta")                                          # nothing blocks other commits
    ws.write_metadata("Beta", other["run_id"])
    ws.sop("commit", other["txid"])
    assert [r[0] for r in ws.rows()[1:]] == ["Beta"]


def test_a_deferred_commit_retried_on_a_still_locked_sheet_stays_deferred(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    lock = _lock_sheet(ws)
    ws.sop("commit", tx["txid"], "--defer-on-lock", code=3)
    p = ws.sop("commit", tx["txid"], code=3)              # on_locked is "rollback", but it was deferred
    assert "deferred" in p.stderr
    assert (ws.root / "backtests" / "Alpha").is_dir()
    lock.unlink()
    ws.sop("commit", tx["txid"])
    assert ws.rows()[1][0] == "Alpha"


def test_the_sheet_writer_waits_for_commits_about_to_decide(ws: WS) -> None:
    from journal import txn, workspace
    w = workspace.open_workspace(ws.root)
    w.pending_dir.mkdir(exist_ok=True)
    hint = w.pending_dir / f"tx-live.{os.getpid()}"
    hint.write_bytes(b"")
    calls: list[float] = []

    def sleep(s: float) -> None:
        calls.append(s)
        if len(calls) == 3:
            hint.unlink()                       # that commit has decided
    txn.gather(w, sleep)
    assert len(calls) == 3
    stale = w.pending_dir / "tx-dead.999999999"
    stale.write_bytes(b"")                      # a commit that crashed before deciding
    calls.clear()
    txn.gather(w, sleep)
    assert calls == []
    doc = ws.json("recover")
    assert any(a["action"] == "remove stale commit hint" for a in doc["actions"]) and not stale.exists()


def test_concurrent_commits_share_rewrites(ws: WS) -> None:
    """Rows decided while another process holds the sheet are written together, in one rewrite."""
    import time

    import filelock
    txs = []
    for i in range(6):
        tx = ws.begin_tx(f"G{i}")
        ws.write_metadata(f"G{i}", tx["run_id"])
        txs.append(tx)
    with filelock.FileLock(str(ws.root / ".sop" / "sheet.lock")):       # as if a writer were busy
        procs = [subprocess.Popen([sys.executable, str(BIN / "sop-commit"), "-C", str(ws.root), tx["txid"]],
                                  env=scrubbed_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for tx in txs]
        deadline = time.time() + 60
        while sum(r["type"] == "decide" for r in ws.records()) < 6 and time.time() < deadline:
            time.sleep(0.05)
    assert [p.wait(timeout=120) for p in procs] == [0] * 6
    assert sorted(r[0] for r in ws.rows()[1:]) == [f"G{i}" for i in range(6)]
    writers = {r["pid"] for r in ws.records() if r["type"] == "append"}
    assert len(writers) == 1                    # one process wrote all six rows


def _crash_after_the_sheet_is_replaced(ws: WS, *args: str) -> None:
    """Run sop-commit killed right after its new sheet took the old one's place (before 'committed')."""
    import shutil
    import tempfile
    shutil.rmtree(ws.root / ".sop" / "cache", ignore_errors=True)   # so that the copy makes the same mutations
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "trace"
        copy = Path(d) / "copy"
        shutil.copytree(ws.root, copy)
        sop("commit", "-C", str(copy), *args, env=scrubbed_env(SOP_TRACE_MUTATIONS=str(trace)), code=None)
        lines = [ln.split() for ln in trace.read_text().splitlines()]
    k = next(int(n) for n, _pid, kind, path in lines if kind == "replace" and path.endswith(".xlsx"))
    p = sop("commit", "-C", str(ws.root), *args, env=scrubbed_env(SOP_CRASH_AT=str(k + 1)), code=None, proc=True)
    assert p.returncode == 137


def test_abort_after_a_crash_that_left_the_row_written_records_the_commit(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    _crash_after_the_sheet_is_replaced(ws, tx["txid"])
    assert ws.rows()[1][:2] == ["Alpha", tx["run_id"]]
    p = ws.sop("abort", tx["txid"], code=4)
    assert "committed" in p.stderr
    assert (ws.root / "backtests" / "Alpha").is_dir() and Path(tx["run_dir"]).is_dir()
    assert [r["type"] for r in ws.records() if r["txid"] == tx["txid"]][-1] == "committed"


def test_commit_retried_on_a_locked_sheet_finds_its_row_already_written(ws: WS) -> None:
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"])
    _crash_after_the_sheet_is_replaced(ws, tx["txid"])
    _lock_sheet(ws)                                     # a person opened the sheet since
    doc = ws.json("commit", tx["txid"])
    assert doc["state"] == "committed" and doc["row"] == 2
    assert (ws.root / "backtests" / "Alpha").is_dir()


def test_a_row_that_a_new_column_cannot_take_waits_without_blocking_others(ws: WS) -> None:
    import openpyxl
    tx = ws.begin_tx("Alpha")
    ws.write_metadata("Alpha", tx["run_id"], note="x" * 40000)
    _lock_sheet(ws).unlink()
    lock = _lock_sheet(ws)
    ws.sop("commit", tx["txid"], "--defer-on-lock", code=3)          # decided, deferred
    lock.unlink()
    wb = openpyxl.load_workbook(ws.sheet)                             # someone adds a Note column
    wb.active.cell(1, 5, "Note")
    wb.save(ws.sheet)
    other = ws.begin_tx("Beta")
    ws.write_metadata("Beta", other["run_id"], note="short")
    ws.sop("commit", other["txid"])                                   # not blocked by Alpha's row
    assert [r[0] for r in ws.rows()[1:]] == ["Beta"]
    p = ws.sop("commit", tx["txid"], code=1)
    assert "cannot be stored" in p.stderr and "32,767" in p.stderr
    assert ws.json("status")["transactions"][0]["state"] == "deferred"


def test_recover_removes_temporary_files_in_the_cache(ws: WS) -> None:
    ws.begin("Alpha")
    stray = ws.root / ".sop" / "cache" / ".sheet-index-0123.msgpack.sop-tmp-1-abcd"
    stray.write_bytes(b"half")
    ws.sop("recover")
    assert not stray.exists()


def test_api_run_uses_the_root_from_its_env(ws: WS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import journal
    monkeypatch.chdir(tmp_path)
    code = ("import json,os; json.dump({'run_id': os.environ['SOP_RUN_ID']}, "
            "open(os.path.join(os.environ['SOP_STRATEGY_DIR'], 'run_metadata.json'), 'w'))")
    res = journal.run([sys.executable, "-c", code], "EnvRoot", env={**os.environ, "SOP_ROOT": str(ws.root)})
    assert res.state == "committed" and res.status == 0
    assert ws.rows()[1][0] == "EnvRoot"
