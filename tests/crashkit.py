"""Helpers for the crash tests: run a command killed at mutation k, then prove SPEC §7.

A command runs as a real process with ``SOP_CRASH_AT=k``: journal/fsops.py
calls ``os._exit(137)`` just before its k-th filesystem mutation, which is
what a kill -9 or a power cut at that moment leaves behind (every earlier
write was fsynced).  ``SOP_TRACE_MUTATIONS`` counts the mutations of an
uncrashed run, so every k from 1 to that count is tried.

Only the injected runs (``crash_at``, ``fail_at``) are real processes; the
traced count, recovery, sop-fsck and sop-sweep run in-process through
``conftest.sop()``, which re-reads the injection environment per call.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from conftest import scrubbed_env, sop


def run(root: Path, cmd: str, *args: str, crash_at: int | None = None, fail_at: str | None = None,
        trace: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra: dict[str, str] = {}
    if crash_at is not None:
        extra["SOP_CRASH_AT"] = str(crash_at)
    if fail_at is not None:
        extra["SOP_FAIL_AT"] = fail_at
    if trace is not None:
        extra["SOP_TRACE_MUTATIONS"] = str(trace)
    injected = crash_at is not None or fail_at is not None       # os._exit / OSError for a whole process
    return sop(cmd, "-C", str(root), *args, code=None, env=scrubbed_env(**extra), timeout=120, proc=injected)


def count_mutations(root: Path, cmd: str, *args: str, copy: bool = True) -> int:
    """How many mutations an uncrashed run of the command makes (on a copy of ``root``, unless not ``copy``)."""
    with tempfile.TemporaryDirectory() as d:
        if copy:
            target = Path(d) / "ws"
            shutil.copytree(root, target, symlinks=True)
        else:
            target = root
        trace = Path(d) / "trace"
        p = run(target, cmd, *args, trace=trace)
        assert p.returncode in (0, 1, 3), p.stderr
        return len(trace.read_text().splitlines()) if trace.exists() else 0


def records(root: Path) -> list[dict[str, Any]]:
    out = []
    for seg in sorted((root / ".sop" / "journal").glob("*.jsonl")):
        for line in seg.read_bytes().split(b"\n"):
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass          # a torn tail, cut by the next writer
    return out


def sheet_rows(root: Path) -> list[tuple[str, str]]:
    """(strategy, run id) of each data row, read by python-calamine (a reader nobody here wrote)."""
    from python_calamine import CalamineWorkbook
    wb = CalamineWorkbook.from_path(str(root / "backtests" / "Strategy_Master_Filter.xlsx"))
    data = wb.get_sheet_by_index(0).to_python()
    out = []
    for r in data[1:]:
        if any(c not in ("", None) for c in r):
            rid = r[1]
            out.append((str(r[0]), str(int(rid)) if isinstance(rid, float) else str(rid)))
    return out


def snapshot(root: Path) -> dict[str, Any]:
    """Everything recovery could change: files under backtests/ and runs/, the sheet, the journal."""
    files: dict[str, int] = {}
    for top in ("backtests", "runs", ".sop/journal"):
        base = root / top
        if base.exists():
            for p in sorted(base.rglob("*")):
                files[p.relative_to(root).as_posix()] = p.lstat().st_size
    return files


def states(root: Path) -> dict[str, dict[str, Any]]:
    """Each run transaction's final state and names, replayed from the journal's records."""
    out: dict[str, dict[str, Any]] = {}
    last = {"begin": "begun", "decide": "committing", "defer": "deferred", "committed": "committed",
            "adopt": "committed", "rollback": "aborting", "aborted": "aborted"}
    for r in records(root):
        if r["type"] == "begin":
            out[r["txid"]] = {"strategy": r["data"]["strategy"], "run_id": r["data"]["run_id"], "state": "begun"}
        elif r["txid"] in out and r["type"] in last:
            out[r["txid"]]["state"] = last[r["type"]]
    return out


def check_announced(root: Path, before: dict[str, Any], rows_before: list[tuple[str, str]]) -> None:
    """Invariant 4 on a crashed state: every change made so far has a durable journal record."""
    recs = records(root)
    made = {r["data"]["path"] for r in recs if r["type"] == "mkdir"}
    made |= {r["data"]["dst"] for r in recs if r["type"] == "rename"}
    gone = {r["data"]["src"] for r in recs if r["type"] == "rename"} | \
        {r["data"]["path"] for r in recs if r["type"] == "delete"}
    now = snapshot(root)
    for top in ("backtests", "runs"):
        for path in now:
            parts = path.split("/")
            if parts[0] == top and len(parts) == 2 and path not in before and ".sop-tmp-" not in path:
                assert path in made, f"{path} appeared without a journal record"
        for path in before:
            parts = path.split("/")
            if parts[0] == top and len(parts) == 2 and path not in now and ".sop-tmp-" not in path:
                assert path in gone, f"{path} vanished without a journal record"
    appended = {str(r["data"]["row"].get("runid")) for r in recs if r["type"] == "append"}
    removed = {str(r["data"].get("run_id")) for r in recs if r["type"] == "remove_row"}
    rows_now = sheet_rows(root)
    for s, rid in set(rows_now) - set(rows_before):
        assert rid in appended, f"row {s}/{rid} written without a journal record"
    for s, rid in set(rows_before) - set(rows_now):
        assert rid in removed, f"row {s}/{rid} removed without a journal record"


def check_invariants(root: Path, live: set[str] = frozenset(),  # type: ignore[assignment]
                     lost: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """SPEC §7 after recovery.  ``live`` holds txids whose owner is still alive (left open); ``lost`` the
    run ids of committed rows a person's stale save took off the sheet before the command ran (their rows
    may stay missing, but their folders must stay: invariant 8)."""
    rows = sheet_rows(root)                                              # 3: the workbook reads
    import openpyxl
    openpyxl.load_workbook(root / "backtests" / "Strategy_Master_Filter.xlsx").close()
    strategies = [s.casefold() for s, _ in rows]
    assert len(strategies) == len(set(strategies)), f"a strategy on two rows: {rows}"      # 1
    open_names: list[str] = []
    all_states = states(root)
    swept = {str(r["data"].get("run_id", "")).casefold() for r in records(root) if r["type"] == "remove_row"}
    accepted = {str(r["data"].get("run_id", "")).casefold() for r in records(root)
                if r["type"] in ("lost_accepted", "released")}
    restored = {str(r["data"].get("run_id", "")).casefold() for r in records(root) if r["type"] == "restored"}
    lost_ids = {x.casefold() for x in lost}
    quarantined = {p.name for top in ("backtests", "runs") if (root / top).is_dir() for p in (root / top).iterdir()
                   if "_FAILED_" in p.name}
    latest = {st["strategy"].casefold(): t for t, st in all_states.items()}   # insertion order: begin order
    for txid, st in all_states.items():
        s, rid = st["strategy"], st["run_id"]
        sdir, rdir = root / "backtests" / s, root / "runs" / rid
        if st["state"] == "committed" and rid.casefold() in (swept | accepted) - restored:
            pass                        # a later, journaled sweep or release removed its row, or accepted its loss
        elif st["state"] == "committed" and rid.casefold() in lost_ids and (s, rid) not in rows:
            assert sdir.is_dir() or any(q.startswith(f"{s}_FAILED_") for q in quarantined), \
                f"{txid}: a lost row's strategy folder was destroyed"                         # 8
            assert rdir.is_dir() or any(q.startswith(f"{rid}_FAILED_") for q in quarantined), \
                f"{txid}: a lost row's run folder was destroyed"
        elif st["state"] == "committed":                                                   # 2
            assert (s, rid) in rows, f"{txid} committed without its row"
            assert sdir.is_dir() and rdir.is_dir(), f"{txid} committed without its folders"
        elif txid in live:
            assert st["state"] in ("begun", "committing", "deferred"), f"live {txid} was {st['state']}"  # 6
            open_names += [s.casefold(), rid.casefold()]
        else:
            assert st["state"] == "aborted", f"{txid} left {st['state']} after recovery"
            assert not rdir.exists(), f"{txid} aborted but its run folder remains"
            if latest[s.casefold()] == txid:      # else a later run of the same strategy owns the folder now
                assert not sdir.exists(), f"{txid} aborted but its strategy folder remains"
            assert (s, rid) not in rows
    assert len(open_names) == len(set(open_names))                                          # 1
    for p in (root / "backtests").iterdir():
        assert ".sop-tmp-" not in p.name, f"temporary file left: {p.name}"
    from journal import wal, workspace  # 7
    ws = workspace.open_workspace(root)
    list(wal.iter_records(ws))                    # raises JournalDamaged on any damage
    assert wal.load(ws).torn is None, "a torn tail survived recovery"
    if (Path(__file__).parent.parent / "journal" / "audit.py").exists():
        p = run(root, "fsck")
        assert p.returncode == 0, p.stdout + p.stderr


def recover_twice(root: Path) -> None:
    """Recover, check it succeeded, and that a second recovery changes nothing."""
    p = run(root, "recover")
    assert p.returncode == 0, p.stdout + p.stderr
    snap = snapshot(root)
    sheet = (root / "backtests" / "Strategy_Master_Filter.xlsx").read_bytes()
    p = run(root, "recover")
    assert p.returncode == 0, p.stdout + p.stderr
    assert snapshot(root) == snap, "a second recovery changed something"
    assert (root / "backtests" / "Strategy_Master_Filter.xlsx").read_bytes() == sheet


def check_sweep_clean(root: Path, allowed: frozenset[str] = frozenset({"quarantined"})) -> None:
    """After recovery a sweep finds nothing but quarantine (and what ``allowed`` adds)."""
    p = run(root, "sweep", "--json")
    assert p.returncode == 0, p.stderr
    kinds = {f["kind"] for f in json.loads(p.stdout)["findings"]}
    assert kinds <= allowed, f"sweep after recovery found {sorted(kinds - allowed)}"
