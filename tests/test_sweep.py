"""sop-sweep, the janitor (SPEC §5): findings, --fix as one journaled transaction, the report, crashes.

Every test drives the command through conftest's ``WS`` helper (in-process)
and checks the disk and the Master Sheet afterwards, read by independent
readers (openpyxl, python-calamine).  Real processes only where the process
matters: the progress bar on a terminal, and sweeps killed at a crash point.
Ages of quarantined folders are set by the ``_FAILED_<ts>`` names
themselves; the API test uses freezegun.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import WS, scrubbed_env
from crashkit import check_announced, count_mutations, records, recover_twice, run, sheet_rows, snapshot

from journal import render

KEYS = {"kind", "strategy", "run_id", "path", "action", "done"}
OLD = "20200101T000000Z"


# ---------------------------------------------------------------- helpers

def stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def add_rows(ws: WS, *rows: tuple[Any, ...]) -> None:
    """A person adds rows by hand (in Excel): here with openpyxl, which knows nothing of sop."""
    import openpyxl
    wb = openpyxl.load_workbook(ws.sheet)
    for r in rows:
        wb.worksheets[0].append(list(r))
    wb.save(ws.sheet)


def row_pairs(ws: WS) -> list[tuple[str, str]]:
    return sheet_rows(ws.root)


def state(root: Path) -> dict[str, Any]:
    """What a sweep may change: every path under backtests/ and runs/ (links not followed), and the rows.

    A quarantine name's time is the moment of the run that made it, so it is compared as ``_FAILED_<ts>``.
    """
    paths = set()
    for top in ("backtests", "runs"):
        for dirpath, dirnames, filenames in os.walk(root / top):
            for n in dirnames + filenames:
                rel = Path(dirpath, n).relative_to(root).as_posix()
                if ".sop-tmp-" not in n:
                    paths.add(re.sub(r"_FAILED_\d{8}T\d{6}Z", "_FAILED_<ts>", rel))
    return {"paths": paths, "rows": sheet_rows(root)}


def kinds(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in doc["findings"]:
        out.setdefault(f["kind"], []).append(f)
    return out


def paths_of(doc: dict[str, Any], kind: str) -> set[str]:
    return {f["path"] for f in doc["findings"] if f["kind"] == kind}


def journal_sound(ws: WS) -> None:
    """The journal verifies end to end (sop-fsck when it exists, and a full replay)."""
    from journal import wal, workspace
    w = workspace.open_workspace(ws.root)
    recs = list(wal.iter_records(w))
    states: dict[str, Any] = {}
    for r in recs:
        wal.apply(states, r)
    assert wal.load(w).torn is None
    if "fsck" in __import__("journal.cli", fromlist=["COMMANDS"]).COMMANDS:
        ws.sop("fsck")


# ---------------------------------------------------------------- the messy workspace

@pytest.fixture
def messy(ws: WS, tmp_path: Path, sleeper: Callable[[], subprocess.Popen[bytes]]) -> dict[str, Any]:
    """Every finding kind at once, and links to files and folders outside the root that must survive."""
    bt, rn = ws.root / "backtests", ws.root / "runs"
    t: dict[str, Any] = {}
    t["good"] = ws.full_run("Good", sharpe=1.5)
    t["orphan_run"] = ws.full_run("OrphanRun")            # run snapshot gone: row removed, folder then a zombie
    shutil.rmtree(rn / t["orphan_run"]["run_id"])
    t["orphan_strat"] = ws.full_run("OrphanStrat")        # strategy folder gone: row removed, run a zombie
    shutil.rmtree(bt / "OrphanStrat")
    t["mismatch"] = ws.full_run("Mismatch")               # metadata names another run; runs/<sheet id> exists
    ws.write_metadata("Mismatch", "somebody-elses-run")
    t["cascade"] = ws.full_run("Cascade")                 # metadata names another run, and the sheet's is gone
    ws.write_metadata("Cascade", "cascade-old")
    (rn / "cascade-old").mkdir()
    shutil.rmtree(rn / t["cascade"]["run_id"])
    t["broken"] = ws.full_run("Broken")                   # unreadable metadata: reported, never deleted
    (bt / "Broken" / "run_metadata.json").write_bytes(b"{not json")
    (bt / "Zombie").mkdir()
    (bt / "Zombie" / "equity.csv").write_text("day,pnl\n1,0.5\n")
    (rn / "zrun-1").mkdir()
    add_rows(ws, ("Dup", "dup-1"), ("dup", "dup-2"))      # one strategy on two rows (case differs)
    (bt / "Dup").mkdir()
    (rn / "dup-1").mkdir()                                # runs/dup-2 is missing: still left alone
    (bt / f"Old_FAILED_{OLD}").mkdir()
    young = stamp(datetime.now(UTC) - timedelta(hours=1))
    (rn / f"young_FAILED_{young}").mkdir()
    t["young"] = f"runs/young_FAILED_{young}"
    live = sleeper()
    t["live"] = ws.json("begin", "--strategy", "Live", "--owner-pid", str(live.pid))
    dead = sleeper()
    t["dead"] = ws.json("begin", "--strategy", "Dead", "--owner-pid", str(dead.pid))
    dead.kill()
    dead.wait()
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "folder" / "keep.txt").write_text("precious")
    (outside / "file.txt").write_text("precious too")
    os.symlink(outside / "folder", bt / "LinkToFolder")
    os.symlink(outside / "file.txt", rn / "LinkToFile")
    os.symlink(outside / "folder", bt / "LinkRow")       # a row whose folder is a link: left alone
    (rn / "linkrow-1").mkdir()
    add_rows(ws, ("LinkRow", "linkrow-1"), ("../escape", "esc-1"))
    (bt / "notes.txt").write_text("not a strategy")
    (bt / "CON").mkdir()                                  # a name sop refuses
    (bt / ".~lock.Strategy_Master_Filter.xlsx#.bak").write_text("")  # not an owner file: a file
    (bt / ".Strategy_Master_Filter.xlsx.sop-tmp-1-ab12").write_text("")  # sop's own temp: never an artifact
    t["outside"] = outside
    return t


def test_dry_run_reports_every_kind_and_changes_nothing_but_the_report(ws: WS, messy: dict[str, Any]) -> None:
    before = state(ws.root)
    sheet_bytes = ws.sheet.read_bytes()
    journal_before = len(ws.records())
    doc = ws.json("sweep")
    assert set(kinds(doc)) == {"orphaned_row", "zombie_folder", "zombie_run", "identity_mismatch", "duplicate_row",
                               "quarantined", "in_flight", "abandoned", "unsafe_entry"}
    for f in doc["findings"]:
        assert KEYS <= set(f) and f["done"] is False
    # nothing changed, except the report
    assert state(ws.root) == before and ws.sheet.read_bytes() == sheet_bytes
    assert len(ws.records()) == journal_before
    assert Path(doc["report"]) == ws.root / "outputs" / "logs" / "integrity_report.md"
    assert Path(doc["report"]).is_file()
    m = messy
    orph = {f["strategy"]: f for f in kinds(doc)["orphaned_row"]}
    assert set(orph) == {"OrphanRun", "OrphanStrat", "Cascade"}
    assert orph["OrphanRun"]["action"].startswith("remove row")
    assert paths_of(doc, "zombie_folder") == {"backtests/Zombie", "backtests/OrphanRun", "backtests/Cascade"}
    assert paths_of(doc, "zombie_run") == {"runs/zrun-1", f"runs/{m['orphan_strat']['run_id']}", "runs/cascade-old"}
    ident = {f["strategy"]: f for f in kinds(doc)["identity_mismatch"]}
    assert set(ident) == {"Mismatch", "Cascade", "Broken"}
    assert "not valid JSON" in ident["Broken"]["detail"]
    assert "somebody-elses-run" in ident["Mismatch"]["detail"]
    assert {f["row"] for f in kinds(doc)["duplicate_row"]} == {r for r in (8, 9)}
    assert paths_of(doc, "quarantined") == {f"backtests/Old_FAILED_{OLD}", m["young"]}
    assert paths_of(doc, "in_flight") == {"backtests/Live", f"runs/{m['live']['run_id']}"}
    assert paths_of(doc, "abandoned") == {"backtests/Dead", f"runs/{m['dead']['run_id']}"}
    assert all(f["action"] == "roll back" for f in kinds(doc)["abandoned"])
    unsafe = paths_of(doc, "unsafe_entry")
    assert {"backtests/LinkToFolder", "runs/LinkToFile", "backtests/LinkRow", "backtests/notes.txt",
            "backtests/CON", "backtests/.~lock.Strategy_Master_Filter.xlsx#.bak"} <= unsafe
    assert any("'../escape'" in f["detail"] for f in kinds(doc)["unsafe_entry"])
    assert not any("sop-tmp" in f["path"] or f["path"].endswith(".xlsx") for f in doc["findings"])
    # the text form prints the report on stdout, a summary on stderr
    p = ws.sop("sweep")
    assert p.stdout.startswith("# sop integrity report") and "dry run" in p.stdout
    assert "orphaned_row" in p.stderr and "Report:" in p.stderr and "sop-sweep --fix" in p.stderr


def test_fix_repairs_what_it_may_and_leaves_the_rest(ws: WS, messy: dict[str, Any]) -> None:
    m = messy
    doc = ws.json("sweep", "--fix")
    assert doc["txid"] and doc["txid"].startswith("tx-")
    bt, rn = ws.root / "backtests", ws.root / "runs"
    # orphaned rows removed (the cascade's too), the others kept, in order
    pairs = row_pairs(ws)
    assert pairs == [("Good", m["good"]["run_id"]), ("Mismatch", m["mismatch"]["run_id"]),
                     ("Broken", m["broken"]["run_id"]), ("Dup", "dup-1"), ("dup", "dup-2"),
                     ("LinkRow", "linkrow-1"), ("../escape", "esc-1")]
    # zombies deleted, the cascade's too
    for gone in (bt / "Zombie", bt / "OrphanRun", bt / "Cascade", rn / "zrun-1", rn / m["orphan_strat"]["run_id"],
                 rn / "cascade-old"):
        assert not os.path.lexists(gone), gone
    # left alone: healthy, mismatched-but-trusted, broken metadata, duplicates, live, links, files, odd names
    for kept in (bt / "Good", rn / m["good"]["run_id"], bt / "Mismatch", bt / "Broken", bt / "Dup", rn / "dup-1",
                 bt / "Live", rn / m["live"]["run_id"], bt / "notes.txt", bt / "CON", rn / "linkrow-1",
                 bt / f"Old_FAILED_{OLD}", ws.root / m["young"]):
        assert kept.exists(), kept
    for link in (bt / "LinkToFolder", rn / "LinkToFile", bt / "LinkRow"):
        assert link.is_symlink()
    assert (m["outside"] / "folder" / "keep.txt").read_text() == "precious"
    assert (m["outside"] / "file.txt").read_text() == "precious too"
    # recovery ran first: the dead owner's run was quarantined, the live one is still open
    assert not (bt / "Dead").exists() and any(p.name.startswith("Dead_FAILED_") for p in bt.iterdir())
    assert any(a["action"] == "roll back" and a["done"] for a in doc["recovery"])
    assert [t["strategy"] for t in ws.json("status")["transactions"]] == ["Live"]
    # done flags: fixed findings done, a person's findings not
    k = kinds(doc)
    assert all(f["done"] for kind in ("orphaned_row", "zombie_folder", "zombie_run") for f in k[kind])
    ident = {f["strategy"]: f for f in k["identity_mismatch"]}
    assert ident["Cascade"]["done"] and not ident["Mismatch"]["done"] and not ident["Broken"]["done"]
    assert not any(f["done"] for f in k["duplicate_row"] + k["unsafe_entry"])
    # the journal: a plan, each step announced with what it destroyed, then done
    recs = [r for r in ws.records() if r["txid"] == doc["txid"]]
    assert [r["type"] for r in recs][0] == "plan" and recs[-1]["type"] == "done"
    removed = [r["data"] for r in recs if r["type"] == "remove_row"]
    assert {d["strategy"] for d in removed} == {"OrphanRun", "OrphanStrat", "Cascade"}
    assert all(d["values"]["Strategy"] == d["strategy"] and d["values"]["RunID"] == d["run_id"] for d in removed)
    deleted = {r["data"]["path"]: r["data"]["files"] for r in recs if r["type"] == "delete"}
    assert deleted["backtests/Zombie"] == [["equity.csv", 14]]
    journal_sound(ws)
    # a second sweep finds only what a person must decide, and what is benign
    again = ws.json("sweep", "--exit-code", code=1)
    assert set(kinds(again)) == {"identity_mismatch", "duplicate_row", "quarantined", "in_flight", "unsafe_entry"}


def test_fix_report_says_what_was_done(ws: WS, messy: dict[str, Any]) -> None:
    doc = ws.json("sweep", "--fix")
    text = Path(doc["report"]).read_text(encoding="utf-8")
    assert "**Mode:** fix" in text and doc["txid"] in text
    assert "| orphaned_row | 3 | 3 |" in text and "| zombie_folder | 3 | 3 |" in text
    assert "## Needs a person" in text
    needs = text.split("## Needs a person", 1)[1].split("\n## ", 1)[0]
    assert "duplicate_row" in needs and "identity_mismatch" in needs and "unsafe_entry" in needs
    assert "## Recovery (run first)" in text
    assert "## zombie_run (3)" in text
    assert "| backtests/Zombie |  | delete | done |" in text


# ---------------------------------------------------------------- focused behaviours

def test_clean_workspace_finds_nothing_and_exit_code_is_0(ws: WS) -> None:
    ws.full_run("Alpha")
    ws.full_run("Beta")
    doc = ws.json("sweep", "--exit-code")
    assert doc["findings"] == [] and doc["txid"] is None
    assert all(v == 0 for v in doc["counts"].values())
    doc = ws.json("sweep", "--fix", "--exit-code")
    assert doc["txid"] is None and doc["findings"] == []
    assert not any(r["type"] == "plan" for r in ws.records())      # nothing to do: nothing journaled


def test_names_compare_case_insensitively_after_nfc(ws: WS) -> None:
    a = ws.full_run("Alpha")
    os.rename(ws.root / "backtests" / "Alpha", ws.root / "backtests" / "ALPHA")
    nfc = unicodedata.normalize("NFC", "Café")
    c = ws.full_run(nfc)
    os.rename(ws.root / "backtests" / nfc, ws.root / "backtests" / unicodedata.normalize("NFD", "CAFÉ"))
    os.rename(ws.root / "runs" / a["run_id"], ws.root / "runs" / a["run_id"].upper())
    doc = ws.json("sweep", "--exit-code")
    assert doc["findings"] == [], doc["findings"]
    assert c["strategy"] == nfc


def test_exit_code(ws: WS) -> None:
    ws.full_run("Alpha")
    (ws.root / "backtests" / f"Gone_FAILED_{OLD}").mkdir()
    ws.sop("sweep", "--exit-code")                                  # quarantined only: 0
    (ws.root / "runs" / "stray").mkdir()
    ws.sop("sweep", "--exit-code", code=1)                          # a zombie remains
    ws.sop("sweep")                                                 # without --exit-code: 0
    ws.sop("sweep", "--fix", "--exit-code")                         # fixed: nothing remains
    (ws.root / "backtests" / "readme.txt").write_text("x")
    ws.sop("sweep", "--fix", "--exit-code", code=1)                 # unsafe entries are never fixed
    doc = ws.json("sweep", "--fix", "--exit-code", code=1)          # --json still prints its document
    assert [f["kind"] for f in doc["findings"]] == ["quarantined", "unsafe_entry"]


def test_json_shape(ws: WS) -> None:
    ws.full_run("Alpha")
    (ws.root / "runs" / "stray").mkdir()
    p = ws.sop("sweep", "--json")
    doc = json.loads(p.stdout)                                      # exactly one document on stdout
    assert {"findings", "report"} <= set(doc)
    assert doc["counts"]["zombie_run"] == 1 and doc["dry_run"] is True and doc["txid"] is None
    (f,) = doc["findings"]
    assert {k: f[k] for k in KEYS} == {"kind": "zombie_run", "strategy": "", "run_id": "stray",
                                       "path": "runs/stray", "action": "delete", "done": False}
    err = ws.json("sweep", "--purge-failed", code=2)
    assert err["error"]["code"] == 2 and "--older-than" in err["error"]["message"]


def test_report_path_option_and_contents(ws: WS, tmp_path: Path) -> None:
    ws.full_run("Alpha")
    (ws.root / "backtests" / "Zed").mkdir()
    target = tmp_path / "deep" / "er" / "report.md"
    doc = ws.json("sweep", "--report", str(target))
    assert Path(doc["report"]) == target and target.is_file()
    assert not (ws.root / "outputs").exists()
    text = target.read_text(encoding="utf-8")
    for line in ("# sop integrity report", "**Mode:** dry run", "(UTC)", "**Sweep transaction:** none",
                 "| zombie_folder | 1 | 1 |", "## zombie_folder (1)", "## Needs a person\n\nNothing.",
                 "| Zed |  | backtests/Zed |  | delete | planned |"):
        assert line in text, line
    # the config's report path, relative to the root
    (ws.root / ".sop" / "config.toml").write_text('[sweep]\nreport = "logs/janitor.md"\n[lock]\nretries = 1\n')
    doc = ws.json("sweep")
    assert Path(doc["report"]) == ws.root / "logs" / "janitor.md"


def test_purge_failed_by_the_age_in_the_name(ws: WS) -> None:
    now = datetime.now(UTC)
    old = ws.root / "backtests" / f"A_FAILED_{stamp(now - timedelta(days=3))}"
    old_run = ws.root / "runs" / f"r1_FAILED_{stamp(now - timedelta(days=3))}-2"
    young = ws.root / "backtests" / f"B_FAILED_{stamp(now - timedelta(hours=5))}"
    for d in (old, old_run, young):
        d.mkdir(parents=True)
        (d / "equity.csv").write_text("x")
    ws.sop("sweep", "--purge-failed", code=2)                       # needs an age
    ws.sop("sweep", "--older-than", "1d", code=2)                   # an age needs --purge-failed
    doc = ws.json("sweep", "--purge-failed", "--older-than", "1d")  # without --fix it only plans
    acts = {f["path"]: f["action"] for f in doc["findings"]}
    assert acts == {f"backtests/{old.name}": "delete", f"runs/{old_run.name}": "delete",
                    f"backtests/{young.name}": "keep"}
    assert old.exists() and old_run.exists()
    doc = ws.json("sweep", "--fix", "--purge-failed", "--older-than", "1d", "--exit-code")
    assert not old.exists() and not old_run.exists() and young.exists()
    deleted = [r["data"] for r in ws.records() if r["type"] == "delete"]
    assert {d["path"] for d in deleted} == {f"backtests/{old.name}", f"runs/{old_run.name}"}
    assert all(d["files"] == [["equity.csv", 1]] for d in deleted)
    ws.json("sweep", "--fix", "--purge-failed", "--older-than", "1h")
    assert not young.exists()


def test_purge_in_process_with_a_frozen_clock(ws: WS) -> None:
    from freezegun import freeze_time

    from journal.janitor import sweep
    (ws.root / "backtests" / "A_FAILED_20260101T000000Z").mkdir()
    (ws.root / "backtests" / "B_FAILED_20260110T000000Z").mkdir()
    with freeze_time("2026-01-12T00:00:00Z"):
        res = sweep(root=ws.root, fix=True, purge_failed=True, older_than="7d")
    assert [(f.path, f.action, f.done) for f in res.findings] == [
        ("backtests/A_FAILED_20260101T000000Z", "delete", True),
        ("backtests/B_FAILED_20260110T000000Z", "keep", False)]
    assert res.when == "2026-01-12T00:00:00Z"
    assert not (ws.root / "backtests" / "A_FAILED_20260101T000000Z").exists()
    assert (ws.root / "backtests" / "B_FAILED_20260110T000000Z").exists()


def test_python_api_returns_values_and_never_prints(ws: WS, capsys: pytest.CaptureFixture[str]) -> None:
    import journal
    (ws.root / "backtests" / "Zed").mkdir()
    first = journal.sweep(root=ws.root)
    import journal.janitor  # noqa: F401  (importing the task module must not shadow the API function)
    second = journal.sweep(root=ws.root, fix=True)
    assert [(f.kind, f.done) for f in first.findings] == [("zombie_folder", False)]
    assert first.dry_run and first.txid is None and first.remaining
    assert [(f.kind, f.done) for f in second.findings] == [("zombie_folder", True)]
    assert second.txid and not second.remaining and not (ws.root / "backtests" / "Zed").exists()
    assert capsys.readouterr() == ("", "")


def test_many_orphaned_rows_are_held_compactly_and_fixed(ws: WS) -> None:
    """Every row orphaned (runs/ emptied): the findings are the sheet's row indexes until the report and --json
    make them, one at a time, with the same words and in the same order as before; --fix removes every row."""
    from journal import janitor, xlsx
    n = 1500
    (ws.root / "runs").mkdir(exist_ok=True)
    xlsx.append_rows(ws.sheet, None, [{1: f"S{i}", 2: f"R{i}"} for i in range(n)])
    (ws.root / "backtests" / "S7").mkdir()                 # only its run is missing: then a zombie folder
    (ws.root / "runs" / "R8").mkdir()                      # only its strategy folder is missing: then a zombie run
    res = janitor.sweep(root=ws.root)
    got = res.findings
    assert len(got.orphans) == n and not any(f.kind == "orphaned_row" for f in got.others)
    assert [f.kind for f in got.others] == ["zombie_folder", "zombie_run", "identity_mismatch"]
    assert got[0] == janitor.Finding("orphaned_row", "S0", "R0", "backtests/S0", "remove row 2",
                                     detail="backtests/S0/ and runs/R0/ is missing", row=2, steps=[0])
    assert (got[7].detail, got[8].detail) == ("runs/R7/ is missing", "backtests/S8/ is missing")
    assert list(got) == [got[i] for i in range(len(got))] == got[:] and got[-1] is got.others[-1]
    assert [f.row for f in got.of_kind("orphaned_row")] == list(range(2, n + 2))
    assert res.counts["orphaned_row"] == n and res.remaining_count == len(res.remaining) == n + 3
    assert res.tally["orphaned_row"] == janitor.Tally(n, n, 0)
    report = (ws.root / "outputs" / "logs" / "integrity_report.md").read_text(encoding="utf-8")
    assert f"| orphaned_row | {n} | {n} |" in report and f"## orphaned_row ({n})" in report
    assert "| S7 | R7 | backtests/S7 | 9 | remove row 9 | planned | runs/R7/ is missing |\n" in report
    doc = ws.json("sweep", "--exit-code", code=1)
    assert doc["findings"][:n] == [render.to_json(f) for f in got.of_kind("orphaned_row")]
    assert doc["remaining"] == n + 3 and len(doc["findings"]) == n + 3

    fixed = janitor.sweep(root=ws.root, fix=True)
    assert fixed.txid and fixed.remaining_count == 0 and all(f.done for f in fixed.findings)
    assert fixed.tally["orphaned_row"] == janitor.Tally(n, n, n)
    (plan,) = [r for r in ws.records() if r["type"] == "plan" and r["txid"] == fixed.txid]
    assert [s["row_number"] for s in plan["data"]["steps"][:n]] == list(range(2, n + 2))
    assert row_pairs(ws) == [] and ws.json("sweep")["findings"] == []
    assert not (ws.root / "backtests" / "S7").exists() and not (ws.root / "runs" / "R8").exists()


def test_orphaned_rows_out_of_sheet_order_are_reported_in_row_order(ws: WS) -> None:
    """Row steps stay in sheet order (the plan's order); the findings are sorted by row, each with its own step."""
    from journal import janitor, sheet, workspace
    w = workspace.open_workspace(ws.root)
    (ws.root / "runs").mkdir(exist_ok=True)
    view = sheet.SheetView(ws.sheet, "Sheet1", 1, {1: "Strategy", 2: "RunID"}, {"strategy": 1, "runid": 2},
                           lists=([9, 3, 5], ["C", "A", "B"], ["c", "a", "b"]))
    plan = janitor.classify(w, view, [], now=datetime.now(UTC))
    got = plan.result()
    assert [(f.row, f.strategy) for f in got] == [(3, "A"), (5, "B"), (9, "C")] == [(f.row, f.strategy) for f in
                                                                                  got[:]]
    assert [plan.steps[f.steps[0]]["row_number"] for f in got] == [3, 5, 9]
    assert [s["row_number"] for s in plan.steps] == [9, 3, 5]


@pytest.mark.parametrize("n", range(6))
def test_long_output_is_echoed_in_chunks_as_one_text(n: int, capsys: pytest.CaptureFixture[str]) -> None:
    from journal import cli
    pieces = [f"line {i}" for i in range(n)]
    for sep in ("\n", ""):
        cli._echo_chunks(iter(pieces), sep=sep, per_chunk=2)
        assert capsys.readouterr().out == sep.join(pieces) + "\n"


def test_zombie_action_quarantine(ws: WS) -> None:
    (ws.root / ".sop" / "config.toml").write_text('[sweep]\nzombie_action = "quarantine"\n[lock]\nretries = 1\n')
    tx = ws.full_run("Alpha")
    shutil.rmtree(ws.root / "runs" / tx["run_id"])
    (ws.root / "runs" / "stray").mkdir()
    doc = ws.json("sweep", "--fix")
    moved = {r["data"]["src"]: r["data"]["dst"] for r in ws.records() if r["type"] == "rename"}
    assert set(moved) == {"backtests/Alpha", "runs/stray"}
    for src, dst in moved.items():
        assert not (ws.root / src).exists() and (ws.root / dst).is_dir()
        assert dst.startswith(src + "_FAILED_")
    assert {f["action"] for f in doc["findings"] if f["kind"] != "orphaned_row"} == \
        {f"quarantine to {d}" for d in moved.values()}
    assert row_pairs(ws) == []
    again = ws.json("sweep", "--exit-code")
    assert {f["kind"] for f in again["findings"]} == {"quarantined"}


def test_sheet_locked_during_fix_stops_cleanly(ws: WS) -> None:
    tx = ws.full_run("Alpha")
    shutil.rmtree(ws.root / "runs" / tx["run_id"])                  # a row to remove
    (ws.root / "backtests" / "Zed").mkdir()
    owner = ws.root / "backtests" / "~$Strategy_Master_Filter.xlsx"
    owner.write_bytes(b"\x03Ana" + b"\0" * 50)
    before, sheet_bytes, n = state(ws.root), ws.sheet.read_bytes(), len(ws.records())
    p = ws.sop("sweep", "--fix", code=3)
    assert "locked by Ana" in p.stderr and "changed nothing" in p.stderr
    assert state(ws.root) == before and ws.sheet.read_bytes() == sheet_bytes and len(ws.records()) == n
    doc = ws.json("sweep")                                          # the owner file is not an artifact
    assert owner.name not in {Path(f["path"]).name for f in doc["findings"]}
    owner.unlink()
    ws.sop("sweep", "--fix", "--exit-code")
    assert row_pairs(ws) == [] and not (ws.root / "backtests" / "Zed").exists()


def test_sheet_locked_does_not_stop_folder_only_fixes(ws: WS) -> None:
    ws.full_run("Alpha")
    (ws.root / "runs" / "stray").mkdir()
    (ws.root / "backtests" / ".~lock.Strategy_Master_Filter.xlsx#").write_text("Ana,ana,host,date,url;")
    sheet_bytes = ws.sheet.read_bytes()
    ws.sop("sweep", "--fix", "--exit-code")
    assert not (ws.root / "runs" / "stray").exists() and ws.sheet.read_bytes() == sheet_bytes


def test_symlinked_runs_folder_is_reported_and_not_entered(ws: WS, tmp_path: Path) -> None:
    ws.full_run("Alpha")
    outside = tmp_path / "elsewhere"
    shutil.move(str(ws.root / "runs"), outside)
    (outside / "stray").mkdir()
    os.symlink(outside, ws.root / "runs")
    doc = ws.json("sweep", "--fix", "--exit-code", code=1)
    assert [f["path"] for f in doc["findings"] if f["kind"] == "unsafe_entry"] == ["runs", "runs"]
    assert row_pairs(ws)[0][0] == "Alpha"                           # no row removed on a link's word
    assert (outside / "stray").is_dir() and (ws.root / "backtests" / "Alpha").is_dir()
    assert not any(f["kind"] in ("zombie_run", "orphaned_row") for f in doc["findings"])


def test_a_missing_runs_folder_does_not_empty_the_sheet(ws: WS) -> None:
    ws.full_run("Alpha")
    shutil.rmtree(ws.root / "runs")
    doc = ws.json("sweep", "--fix", "--exit-code", code=1)
    assert row_pairs(ws)[0][0] == "Alpha" and (ws.root / "backtests" / "Alpha").is_dir()
    (f,) = doc["findings"]
    assert f["kind"] == "unsafe_entry" and f["path"] == "runs" and "not checked" in f["detail"]


def test_metadata_link_is_not_followed(ws: WS, tmp_path: Path) -> None:
    tx = ws.full_run("Alpha")
    meta = ws.root / "backtests" / "Alpha" / "run_metadata.json"
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"run_id": tx["run_id"]}))
    meta.unlink()
    os.symlink(secret, meta)
    doc = ws.json("sweep", "--fix")
    (f,) = doc["findings"]
    assert f["kind"] == "identity_mismatch" and "symbolic link" in f["detail"]
    assert meta.is_symlink() and secret.exists() and row_pairs(ws) == [("Alpha", tx["run_id"])]


def test_progress_bar_only_on_a_terminal(ws: WS) -> None:
    import pty
    import select
    ws.full_run("Alpha")
    (ws.root / "runs" / "stray").mkdir()
    p = ws.sop("sweep")                                             # stderr is a pipe: no bar
    assert "\r" not in p.stderr and "checking rows" not in p.stderr
    q = ws.sop("sweep", "-q")
    assert q.stderr == "" and q.stdout.startswith("# sop integrity report")

    def on_a_tty(*args: str) -> str:
        master, slave = pty.openpty()
        env = scrubbed_env(SOP_PROGRESS_DELAY="0")                  # show it at once, however short the scan
        proc = subprocess.Popen([*_bin("sweep"), "-C", str(ws.root), *args], stdout=subprocess.DEVNULL,
                                stderr=slave, env=env)
        os.close(slave)
        out = b""
        while True:
            r, _, _ = select.select([master], [], [], 30)
            try:
                chunk = os.read(master, 4096) if r else b""
            except OSError:
                chunk = b""
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=30) == 0
        os.close(master)
        return out.decode("utf-8", "replace")
    shown = on_a_tty()
    assert "checking rows" in shown and "Report:" in shown
    assert on_a_tty("-q") == ""


# ---------------------------------------------------------------- crashes

def after_plan(root: Path, *args: str) -> int:
    """The crash point just after the sweep's plan record is on disk (from a traced run on a copy)."""
    with __import__("tempfile").TemporaryDirectory() as d:
        copy, trace = Path(d) / "ws", Path(d) / "trace"
        shutil.copytree(root, copy, symlinks=True)
        run(copy, *args, trace=trace)
        for line in trace.read_text().splitlines():
            n, _pid, kind, path = line.split(" ", 3)
            if kind == "append" and "/.sop/journal/" in path:
                return int(n) + 1
    raise AssertionError("the sweep wrote no plan")


def _crash_setup(ws: WS) -> None:
    """Fixable findings of every fixable kind: rows, folders, runs, a cascade, an old quarantine."""
    bt, rn = ws.root / "backtests", ws.root / "runs"
    ws.full_run("Keep")
    a = ws.full_run("OrphanA")
    shutil.rmtree(rn / a["run_id"])
    ws.full_run("OrphanB")
    shutil.rmtree(bt / "OrphanB")
    ws.full_run("Middle")                                          # rows below removed ones move up
    c = ws.full_run("Cascade")
    ws.write_metadata("Cascade", "cascade-old")
    (rn / "cascade-old").mkdir()
    shutil.rmtree(rn / c["run_id"])
    for d in (bt / "Zombie", rn / "zrun"):
        d.mkdir()
        (d / "data.csv").write_text("1,2\n")
    (bt / f"Old_FAILED_{OLD}").mkdir()


def test_crash_at_every_point_of_a_fix_then_recover(ws: WS, tmp_path: Path) -> None:
    _crash_setup(ws)
    args = ("sweep", "--fix", "--purge-failed", "--older-than", "1d")
    n = count_mutations(ws.root, *args)
    assert n >= 12
    ref = tmp_path / "ref"
    shutil.copytree(ws.root, ref, symlinks=True)
    assert run(ref, *args).returncode == 0
    expect = state(ref)
    assert [r for r, _ in expect["rows"]] == ["Keep", "Middle"]
    initial = state(ws.root)
    planned_seen = False
    for k in range(1, n + 1):
        root = tmp_path / f"k{k}"
        shutil.copytree(ws.root, root, symlinks=True)
        snap, rows = snapshot(root), sheet_rows(root)
        p = run(root, *args, crash_at=k)
        assert p.returncode == 137, f"crash point {k}/{n} not reached: {p.returncode} {p.stderr}"
        check_announced(root, snap, rows)                          # invariant 4: every change announced
        plan = [r for r in records(root) if r["type"] == "plan"]
        if plan and not any(r["type"] == "done" for r in records(root)):
            planned_seen = True                                    # a dry run says recovery will finish it
            doc = json.loads(run(root, "sweep", "--json").stdout)
            assert any(f["kind"] == "abandoned" and f["action"] == "finish sweep" for f in doc["findings"])
            assert not any(f["kind"] in ("zombie_folder", "zombie_run") and f["path"] in
                           {s.get("path") for s in plan[0]["data"]["steps"]} for f in doc["findings"])
        recover_twice(root)
        got = state(root)
        if plan:
            assert got == expect, f"crash at {k}/{n}: recovery did not finish the sweep"
        else:
            assert got == initial, f"crash at {k}/{n}: changed something before the plan was on record"
            assert run(root, *args).returncode == 0
            assert state(root) == expect
        journal_sound(WS(root))
        doc = json.loads(run(root, "sweep", "--json", "--exit-code").stdout)
        assert {f["kind"] for f in doc["findings"]} <= {"quarantined"}, (k, doc["findings"])
        shutil.rmtree(root)
    assert planned_seen


def test_finish_plan_is_idempotent_and_rechecks_before_deleting(ws: WS) -> None:
    """A sweep crashed after its plan; meanwhile a person re-indexed a planned zombie: recovery spares it."""
    (ws.root / "backtests" / "Zed").mkdir()
    (ws.root / "runs" / "zrun").mkdir(parents=True)
    (ws.root / "runs" / "other").mkdir()
    p = run(ws.root, "sweep", "--fix", crash_at=after_plan(ws.root, "sweep", "--fix"))
    assert p.returncode == 137
    assert [r["type"] for r in records(ws.root)] == ["plan"]
    add_rows(ws, ("Zed", "zrun"))                                  # now indexed: no longer a zombie
    ws.sop("recover")
    ws.sop("recover")
    assert (ws.root / "backtests" / "Zed").is_dir() and (ws.root / "runs" / "zrun").is_dir()
    assert not (ws.root / "runs" / "other").exists()
    recs = records(ws.root)
    assert [r["type"] for r in recs] == ["plan", "delete", "done"]
    assert set(recs[-1]["data"]["skipped"].values()) == {"a row indexes it now"}
    journal_sound(ws)


def test_sop_recover_finishes_a_sweep_even_when_run_by_env(ws: WS) -> None:
    """The plan's owner is recorded; status shows nothing open after recovery."""
    (ws.root / "runs" / "zrun").mkdir(parents=True)
    env = scrubbed_env(SOP_CRASH_AT=str(after_plan(ws.root, "sweep", "--fix") + 1))   # after the delete record
    p = subprocess.run([*_bin("sweep"), "-C", str(ws.root), "--fix"], env=env, capture_output=True, text=True)
    assert p.returncode == 137
    plan, delete = records(ws.root)
    assert plan["type"] == "plan" and plan["data"]["owner"]["pid"] == plan["pid"]
    assert delete["type"] == "delete" and (ws.root / "runs" / "zrun").is_dir()
    st = os.lstat(ws.root / "runs" / "zrun")                   # the step names this very folder
    assert plan["data"]["steps"] == [{"op": "delete", "path": "runs/zrun", "finding": "zombie_run",
                                      "id": [st.st_dev, st.st_ino]}]
    ws.sop("recover")
    assert not (ws.root / "runs" / "zrun").exists()
    assert ws.json("status")["transactions"] == []


def _bin(cmd: str) -> list[str]:
    import sys

    from conftest import BIN
    return [sys.executable, str(BIN / f"sop-{cmd}")]
