"""Windows, through pip's sop-*.exe launchers: each bug of the Windows issue, as a user meets it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
from winlane import WinWS, env, exe


def _py(code: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, text=True, **kw)  # type: ignore[call-overload]


def _wait_for(path: Path, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_the_commands_are_real_exe_launchers() -> None:
    for cmd in ("", "init", "begin", "commit", "run", "recover", "sweep", "status"):
        with open(exe(cmd), "rb") as f:
            assert f.read(2) == b"MZ"


def test_journal_is_binary_and_verifies_after_begin_and_commit(wws: WinWS) -> None:
    """Blocker: text-mode os.open wrote \\r\\n and every command after sop-begin exited 5."""
    txid = wws.run("begin", "--strategy", "Alpha").stdout.strip()
    wws.write_metadata("Alpha", wws.tx(txid)["run_id"])
    wws.run("commit", txid)
    data = b"".join(p.read_bytes() for p in sorted((wws.root / ".sop" / "journal").iterdir()))
    assert data and b"\r\n" not in data
    wws.run("fsck")
    doc = wws.json("status")
    assert doc["journal"]["ok"] and doc["transactions"] == []
    assert [r[0] for r in wws.rows()][1:] == ["Alpha"]


def test_default_owner_is_the_caller_not_the_launcher(wws: WinWS) -> None:
    """Blocker and silent loss: the owner was sop-begin.exe (gone at once), or every pid looked alive."""
    txid = wws.run("begin", "--strategy", "Alpha").stdout.strip()
    import os
    t = wws.tx(txid)
    assert t["owner"]["pid"] == os.getpid(), t
    assert t["alive"] is True and not t["abandoned"], t
    wws.run("recover")
    assert wws.tx(txid)["state"] == "begun"            # a live run is not rolled back


def test_owner_that_exited_is_abandoned_and_recovered(wws: WinWS) -> None:
    """Liveness without kill(pid, 0): a gone owner (create time, not just the pid) is abandoned."""
    child = _py("import time; time.sleep(60)")
    try:
        txid = wws.run("begin", "--strategy", "Beta", "--owner-pid", str(child.pid)).stdout.strip()
        assert wws.tx(txid)["alive"] is True
    finally:
        child.kill()
        child.wait()
    t = wws.tx(txid)
    assert t["alive"] is False and t["abandoned"], t
    wws.run("recover")
    assert wws.tx(txid) == {}
    assert not (wws.root / "backtests" / "Beta").exists() or \
        any(p.name.startswith("Beta_FAILED_") for p in (wws.root / "backtests").iterdir())


def test_a_pid_that_is_not_running_is_refused(wws: WinWS) -> None:
    child = _py("pass")
    child.wait()
    wws.run("begin", "--strategy", "Gamma", "--owner-pid", str(child.pid), code=1)


def test_non_latin_names_through_a_pipe_on_the_ansi_code_page(wws: WinWS) -> None:
    """Output through a pipe uses the ANSI code page; a name it lacks must not crash the command."""
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.stdout.encoding)"], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, env=env())
    assert probe.stdout.strip().lower().replace("-", "") != "utf8", "the test needs a non-UTF-8 code page"
    name = "Стратегия_α_戦略"
    txid = wws.run("begin", "--strategy", name, encoding="mbcs").stdout.strip()
    status = wws.run("status", encoding="mbcs")
    assert txid in status.stdout and "Traceback" not in status.stderr
    doc = json.loads(wws.run("status", "--json", encoding="mbcs").stdout)
    assert doc["transactions"][0]["strategy"] == name
    wws.run("log", encoding="mbcs")


def test_sop_run_commits_on_success_and_rolls_back_on_failure(wws: WinWS) -> None:
    script = ("import json, os, pathlib; d = pathlib.Path(os.environ['SOP_STRATEGY_DIR']); "
              "d.mkdir(parents=True, exist_ok=True); (d / 'run_metadata.json').write_text(json.dumps("
              "{'run_id': os.environ['SOP_RUN_ID'], 'strategy': os.environ['SOP_STRATEGY']}))")
    wws.run("run", "--strategy", "Ok", "--", sys.executable, "-c", script)
    assert [r[0] for r in wws.rows()][1:] == ["Ok"]
    p = wws.run("run", "--strategy", "Bad", "--", sys.executable, "-c", script + "; raise SystemExit(7)", code=7)
    assert "Bad" not in [r[0] for r in wws.rows()], p.stderr
    assert any(n.name.startswith("Bad_FAILED_") for n in (wws.root / "backtests").iterdir())
    assert wws.json("status")["transactions"] == []


def test_killing_sop_run_does_not_orphan_its_command(wws: WinWS, tmp_path: Path) -> None:
    """sop-run's command is in a kill-on-close Job Object: killing sop-run.exe ends the backtest too."""
    pidfile = tmp_path / "child.pid"
    script = f"import os, time, pathlib; pathlib.Path({str(pidfile)!r}).write_text(str(os.getpid())); time.sleep(120)"
    run = subprocess.Popen([exe("run"), "-C", str(wws.root), "--strategy", "Killed", "--", sys.executable, "-c",
                            script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env())
    try:
        _wait_for(pidfile)
        while not pidfile.read_text():
            time.sleep(0.05)
        backtest = int(pidfile.read_text())
        assert psutil.pid_exists(backtest)
        tree = psutil.Process(run.pid).children(recursive=True)
    finally:
        run.kill()
        run.communicate(timeout=60)
    gone, alive = psutil.wait_procs([p for p in tree if p.is_running()], timeout=20)
    assert alive == [], f"orphaned: {alive}"
    assert not psutil.pid_exists(backtest)
    wws.run("recover")
    assert wws.json("status")["transactions"] == []


def test_metadata_over_64k_with_crlf_is_read_whole(wws: WinWS) -> None:
    """A text-mode read stopped short of 64 KiB (CRLF) and the sweep reported a false mismatch."""
    txid = wws.run("begin", "--strategy", "Big").stdout.strip()
    run_id = wws.tx(txid)["run_id"]
    meta = wws.root / "backtests" / "Big" / "run_metadata.json"
    body = {"notes": ["x" * 70 for _ in range(3000)], "run_id": run_id, "strategy": "Big"}
    meta.write_text(json.dumps(body, indent=1), encoding="utf-8")      # text mode: \r\n line ends
    assert meta.stat().st_size > 3 * 65536 and b"\r\n" in meta.read_bytes()
    wws.run("commit", txid)
    doc = wws.json("sweep", "--exit-code")
    assert doc["findings"] == [], doc["findings"]


def test_desktop_junk_is_not_a_finding(wws: WinWS) -> None:
    for name in ("desktop.ini", "Thumbs.db", ".DS_Store", "._Alpha"):
        (wws.root / "backtests" / name).write_bytes(b"x")
        (wws.root / "runs").mkdir(exist_ok=True)
        (wws.root / "runs" / name).write_bytes(b"x")
    doc = wws.json("sweep", "--exit-code")
    assert doc["findings"] == [], doc["findings"]


def _hold_folder(path: Path) -> int:
    """Open a folder as a shell or Explorer sitting in it does: a handle without FILE_SHARE_DELETE."""
    import ctypes
    from ctypes import wintypes
    k = ctypes.WinDLL("kernel32", use_last_error=True)
    k.CreateFileW.restype = wintypes.HANDLE
    k.CreateFileW.argtypes = [wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, wintypes.LPVOID, wintypes.DWORD,
                              wintypes.DWORD, wintypes.HANDLE]
    h = k.CreateFileW(str(path), 0x80000000, 0x1 | 0x2, None, 3, 0x02000000, None)   # FILE_FLAG_BACKUP_SEMANTICS
    assert h not in (None, wintypes.HANDLE(-1).value), ctypes.get_last_error()
    return int(h)


def _release(handle: int) -> None:
    import ctypes
    from ctypes import wintypes
    ctypes.WinDLL("kernel32").CloseHandle(wintypes.HANDLE(handle))


def test_a_folder_held_open_is_busy_retry(wws: WinWS) -> None:
    """Deleting or renaming a folder that a program holds open: exit 6 'busy, retry', not 5; the retry works."""
    txid = wws.run("begin", "--strategy", "Held").stdout.strip()
    folder = wws.root / "backtests" / "Held"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "equity.csv").write_text("t,v\n")
    handle = _hold_folder(folder)
    try:
        p = wws.run("abort", txid, code=6)
        assert "busy, retry" in p.stderr, p.stderr
        assert wws.tx(txid)["state"] in ("begun", "aborting")           # still open: the retry finishes it
        p = wws.run("abort", "--delete", txid, code=6)
        assert "busy, retry" in p.stderr, p.stderr
    finally:
        _release(handle)
    wws.run("abort", txid)
    assert wws.json("status")["transactions"] == []
    assert not folder.exists()


HOLD = r"""
import ctypes, sys, time
from ctypes import wintypes
k = ctypes.WinDLL("kernel32", use_last_error=True)
k.CreateFileW.restype = wintypes.HANDLE
k.CreateFileW.argtypes = [wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, wintypes.LPVOID, wintypes.DWORD,
                          wintypes.DWORD, wintypes.HANDLE]
# as Excel holds an open workbook: read and write access, others may only read
h = k.CreateFileW(sys.argv[1], 0x80000000 | 0x40000000, 0x1, None, 3, 0x80, None)
if h in (None, wintypes.HANDLE(-1).value):
    raise SystemExit(f"CreateFileW failed: {ctypes.get_last_error()}")
print("held", flush=True)
sys.stdin.readline()
k.CloseHandle(h)
"""


def test_a_workbook_held_with_excels_share_mode(wws: WinWS) -> None:
    """A second process holds the sheet as Excel does (no owner file): commit is 'locked' (3), never damage."""
    first = wws.run("begin", "--strategy", "Held1").stdout.strip()
    wws.write_metadata("Held1", wws.tx(first)["run_id"])
    second = wws.run("begin", "--strategy", "Held2").stdout.strip()
    wws.write_metadata("Held2", wws.tx(second)["run_id"])
    before = wws.sheet.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(wws.sheet)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        p = wws.run("commit", first, code=3)                           # on_locked = rollback (the default)
        assert "lock" in p.stderr.lower(), p.stderr
        wws.run("commit", "--defer-on-lock", second, code=3)
        assert wws.tx(second)["state"] == "deferred"
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    assert wws.sheet.read_bytes() == before                             # untouched while held
    assert any(n.name.startswith("Held1_FAILED_") for n in (wws.root / "backtests").iterdir())
    wws.run("recover")                                                  # the sheet is free: the row goes in
    assert [r[0] for r in wws.rows()][1:] == ["Held2"]
    assert wws.json("status")["transactions"] == []
