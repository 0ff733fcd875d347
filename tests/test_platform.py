"""Windows and macOS, tested on Linux through the portable layer (the Windows lane runs tests/windows/).

Each test names the bug of the Windows issue it pins down.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from conftest import BIN, WS, scrubbed_env

# journal's modules are imported inside the tests: imported here, at collection, they would sit on the
# package and hide the broken module that tests/test_layers.py puts in sys.modules.
PKG = Path(__file__).resolve().parent.parent / "journal"


def test_every_os_open_is_binary() -> None:
    """Blocker: without O_BINARY Windows' text mode wrote \\r\\n and every journal record failed its checksum."""
    calls = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.open":
                calls.append((path.name, node.lineno, ast.unparse(node.args[1])))
    assert calls and [c for c in calls if "O_BINARY" not in c[2]] == []


# ---------------------------------------------------------------- liveness without /proc or kill(pid, 0)

@pytest.fixture
def no_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Windows signal 0 is CTRL_C_EVENT: liveness must never call os.kill."""
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        assert sig != 0, "os.kill(pid, 0) used as a liveness probe"
        real_kill(pid, sig)
    monkeypatch.setattr(os, "kill", kill)


def test_psutil_probe_alive_gone_and_reused(no_kill: None) -> None:
    from journal import owner
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        o = owner.owner_of(p.pid, probe=owner._probe_psutil)
        assert o.start and float(o.start) > 0 and o.boot == ""
        assert owner.liveness(o, probe=owner._probe_psutil).alive is True
        reused = msgspec.structs.replace(o, start=f"{float(o.start) - 100:.6f}")     # same pid, another process
        live = owner.liveness(reused, probe=owner._probe_psutil)
        assert live.alive is False and "another process" in live.why
        p.kill()
        deadline = time.monotonic() + 10
        while (owner._probe_psutil(p.pid) or ("?",))[0] != "Z":           # killed, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert owner.liveness(o, probe=owner._probe_psutil).alive is False             # a zombie is gone
    finally:
        p.kill()
        p.wait()
    assert owner._probe_psutil(p.pid) is None
    assert owner.liveness(o, probe=owner._probe_psutil).alive is False
    with pytest.raises(Exception, match="not running"):
        owner.owner_of(p.pid, probe=owner._probe_psutil)


def test_linux_probe_keeps_the_start_time_text_journals_hold(no_kill: None) -> None:
    """Open transactions written before psutil keep their owners: /proc's clock ticks, as before."""
    from journal import owner
    o = owner.owner_of(os.getpid())
    assert o.start.isdigit() and o.boot
    assert owner.liveness(o).alive is True


# ---------------------------------------------------------------- the default owner and launchers

def _table(*procs: Any) -> object:
    by_pid = {p.pid: p for p in procs}
    return by_pid.get


def test_default_owner_looks_past_a_console_script_launcher() -> None:
    """Silent loss: pip's sop-begin.exe is the parent, gone when the command returns."""
    from journal import owner
    script = r"C:\venv\Scripts\sop-begin.exe"
    args = [script, "--strategy", "A"]
    info = _table(owner.Proc(10, 9, script, ("sop-begin", "--strategy", "A")),            # the launcher
                  owner.Proc(9, 8, r"C:\Windows\System32\cmd.exe", ("cmd.exe",)))
    assert owner.owner_ancestor(10, script, args, info=info) == 9                        # type: ignore[arg-type]
    # pip's launcher sets sys.argv[0] to its own path without ".exe"
    assert owner.owner_ancestor(10, script.removesuffix(".exe"), args, info=info) == 9    # type: ignore[arg-type]


def test_default_owner_looks_past_a_venv_redirector_but_not_a_users_python() -> None:
    from journal import owner
    script = r"C:\venv\Scripts\sop-begin.exe"
    args = [script, "--strategy", "A"]
    info = _table(owner.Proc(11, 10, r"C:\venv\Scripts\python.exe", (r"C:\venv\Scripts\python.exe", *args)),
                  owner.Proc(10, 9, script, ("sop-begin", "--strategy", "A")),
                  owner.Proc(9, 8, r"C:\Python313\python.exe", ("python", "run_stage1.py")))
    assert owner.owner_ancestor(11, script, args, info=info) == 9                        # type: ignore[arg-type]
    assert owner.owner_ancestor(9, script, args, info=info) == 9                         # type: ignore[arg-type]


def test_default_owner_on_posix_is_the_parent_and_env_wins() -> None:
    from journal import owner
    assert owner.default_owner_pid({}) == os.getppid()
    assert owner.default_owner_pid({}, launchers=True) == os.getppid()      # pytest's parent launched nothing
    assert owner.default_owner_pid({"SOP_OWNER_PID": "42"}, launchers=True) == 42


# ---------------------------------------------------------------- output on any code page

def test_non_latin_names_through_a_pipe_on_a_legacy_code_page(ws: WS) -> None:
    """Output through a pipe on Windows uses the ANSI code page: a name it lacks must not crash."""
    name = "Стратегия_α_戦略"
    env = scrubbed_env(PYTHONIOENCODING="cp1252")
    run = [sys.executable, str(BIN / "sop-begin"), "-C", str(ws.root), "--strategy", name]
    p = subprocess.run(run, env=env, capture_output=True)
    assert p.returncode == 0, p.stderr
    for cmd in ("sop-status", "sop-log"):
        p = subprocess.run([sys.executable, str(BIN / cmd), "-C", str(ws.root)], env=env, capture_output=True)
        assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    p = subprocess.run([sys.executable, str(BIN / "sop-status"), "-C", str(ws.root), "--json"], env=env,
                       capture_output=True)
    assert p.returncode == 0 and p.stdout.isascii()
    assert json.loads(p.stdout)["transactions"][0]["strategy"] == name


# ---------------------------------------------------------------- sop-run's child

def test_stop_on_windows_sends_ctrl_break_else_terminates(monkeypatch: pytest.MonkeyPatch) -> None:
    """sop-run died on Ctrl-C forwarding ('Unsupported signal: 2') and left the transaction open."""
    from journal import child
    monkeypatch.setattr(child, "WINDOWS", True)
    monkeypatch.setattr(child.signal, "CTRL_BREAK_EVENT", 1, raising=False)
    done: list[object] = []

    def unsupported(sig: int) -> None:
        done.append(("signal", sig))
        raise OSError(87, "no console")

    proc = SimpleNamespace(poll=lambda: None, send_signal=unsupported, terminate=lambda: done.append("terminate"))
    child.stop(proc, 2)                                                     # type: ignore[arg-type]
    assert done == [("signal", 1), "terminate"]
    done.clear()
    child.stop(SimpleNamespace(poll=lambda: 0), 2)                          # type: ignore[arg-type]
    assert done == []


def test_stop_on_posix_forwards_the_signal() -> None:
    from journal import child
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    child.stop(p, 15)
    assert p.wait(timeout=10) == -15


# ---------------------------------------------------------------- the sweep

def test_metadata_is_read_to_its_end_whatever_each_read_returns(ws: WS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Metadata over 64 KiB was read short on Windows, and the sweep reported a false mismatch."""
    from journal import janitor
    p = ws.root / "meta.json"
    p.write_bytes(json.dumps({"notes": "x" * 300_000, "run_id": "r1", "strategy": "Big"}).encode())
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, min(n, 65536 - 7)))
    ident, why = janitor.read_identity(str(p))
    assert why == "" and ident is not None and (ident.run_id, ident.strategy) == ("r1", "Big")


def test_desktop_junk_is_not_a_finding(ws: WS) -> None:
    """desktop.ini, Thumbs.db, .DS_Store and ._* became findings that 'need a person'."""
    from journal import names
    ws.full_run("Alpha")
    (ws.root / "runs").mkdir(exist_ok=True)
    for top in ("backtests", "runs"):
        for n in ("desktop.ini", "Thumbs.db", "THUMBS.DB", ".DS_Store", "._Alpha"):
            (ws.root / top / n).write_bytes(b"\0")
    assert ws.json("sweep", "--exit-code")["findings"] == []
    assert names.is_os_junk("Desktop.ini") and not names.is_os_junk("desktop.ini.bak")


# ---------------------------------------------------------------- the sheet's cache key

def test_a_128_bit_file_id_fits_the_index_cache_key(tmp_path: Path) -> None:
    """ReFS and Dev Drive file ids are 128 bits: the cache key overflowed msgpack's integers."""
    from journal import sheet
    st = SimpleNamespace(st_size=1, st_mtime_ns=2, st_ino=(1 << 127) + 5, st_dev=7)
    stamp = sheet._stamp(tmp_path, st)                                     # type: ignore[arg-type]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(stamp)) == stamp
    other = sheet._stamp(tmp_path, SimpleNamespace(st_size=1, st_mtime_ns=2, st_ino=5, st_dev=7))  # type: ignore[arg-type]
    assert stamp != other                                                   # the high half still counts


# ---------------------------------------------------------------- busy folders, held files, durable syncs

def test_a_folder_held_open_is_busy_retry(ws: WS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting or renaming a folder with a file open in it exited 5 instead of 'busy, retry' (6)."""
    txid = ws.begin("Held")
    (ws.root / "backtests" / "Held").mkdir(parents=True, exist_ok=True)
    real_rename = os.rename

    def busy(src: object, dst: object) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", str(src))
    monkeypatch.setattr(os, "rename", busy)
    p = ws.sop("abort", txid, code=6)
    assert "busy, retry" in p.stderr
    monkeypatch.setattr(os, "rename", real_rename)
    ws.sop("abort", txid)
    assert ws.json("status")["transactions"] == []


def test_sharing_violations_are_busy() -> None:
    from journal import fsops
    class WinErr(OSError):
        winerror = 32
    assert fsops.is_busy(WinErr(13, "sharing violation"))
    assert fsops.is_busy(OSError(errno.EBUSY, "busy"))
    assert not fsops.is_busy(OSError(errno.EACCES, "denied"))


def test_replace_is_tried_again_while_the_target_is_held(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A sheet held for a moment (antivirus, a sync client) is replaced after a brief retry; held on, it fails."""
    from journal import fsops
    tries: list[int] = []

    def held_twice(src: Path, dst: Path) -> None:
        tries.append(1)
        if len(tries) <= 2:
            raise PermissionError(13, "held")
    monkeypatch.setattr(fsops, "_replace_once", held_twice)
    fsops.replace(tmp_path / "a", tmp_path / "b", pauses=(0, 0, 0))
    assert len(tries) == 3
    tries.clear()
    monkeypatch.setattr(fsops, "_replace_once", lambda s, d: (_ for _ in ()).throw(PermissionError(13, "held")))
    with pytest.raises(PermissionError):
        fsops.replace(tmp_path / "a", tmp_path / "b", pauses=(0, 0))


def test_fsync_on_macos_is_a_full_fsync(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import fcntl

    from journal import fsops
    calls: list[int] = []
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", 51, raising=False)
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, op, *a: calls.append(op))
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(-1))
    with open(tmp_path / "f", "wb") as f:
        fsops.fsync(f.fileno())
    assert calls == [51]


@pytest.mark.skipif(sys.platform != "linux", reason="the old file is released by a helper on Linux only")
def test_a_large_replaced_file_is_released_by_a_helper_after_the_rename(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    """During the rename a ``cat`` holds the old file (its descriptor 3, nothing of ours on 1, 2 or
    any other descriptor), so the rename only unlinks it; the helper leaves once the write is done
    and the old file is then gone for good; the new file is whole."""
    from journal import fsops

    monkeypatch.setattr(fsops, "RELEASE_LATER_BYTES", 1 << 16)
    target = tmp_path / "big.bin"
    target.write_bytes(b"o" * (1 << 17))
    old_ino = target.stat().st_ino
    leaked_r, leaked_w = os.pipe()
    os.set_inheritable(leaked_w, True)               # as a caller's pipe that we were given would be
    seen: dict[str, Any] = {}
    real_replace = fsops.replace

    def replace(src: Path, dst: Path, pauses: tuple[float, ...] | None = None) -> None:
        ((pid, _),) = fsops._holders[-1:]
        deadline = time.monotonic() + 10
        while True:                                  # cat's own start-up opens (locale) and closes files
            fds = {}
            for n in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    fds[int(n)] = os.readlink(f"/proc/{pid}/fd/{n}")
            if sorted(fds) == [0, 1, 2, 3] or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        seen["fds"], seen["pid"] = fds, pid
        seen["stat3"] = os.stat(f"/proc/{pid}/fd/3")
        real_replace(src, dst, pauses)
        seen["after"] = os.stat(f"/proc/{pid}/fd/3")              # unlinked, still held
    monkeypatch.setattr(fsops, "replace", replace)
    try:
        fsops.atomic_write(target, b"n" * (1 << 17))
    finally:
        os.close(leaked_w)
    assert target.read_bytes() == b"n" * (1 << 17)
    fds = seen["fds"]
    assert sorted(fds) == [0, 1, 2, 3], fds
    assert fds[0].startswith("pipe:") and fds[1] == fds[2] == os.devnull
    assert seen["stat3"].st_ino == old_ino and seen["after"].st_nlink == 0
    deadline = time.monotonic() + 10
    while seen["pid"] in [p for p, _ in fsops._holders] and time.monotonic() < deadline:
        time.sleep(0.01)
        fsops._reap_holders()
    assert seen["pid"] not in [p for p, _ in fsops._holders]     # it left, and was reaped
    os.close(leaked_r)


@pytest.mark.skipif(sys.platform != "linux", reason="the old file is released by a helper on Linux only")
def test_without_a_helper_the_replace_frees_the_file_itself(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``cat`` to be found, a small file, a link with a second name, no ``/proc``, a network file
    system: nothing is started and the write is the same."""
    from journal import fsops

    monkeypatch.setattr(fsops, "RELEASE_LATER_BYTES", 1 << 16)
    started: list[object] = []
    real_spawn = os.posix_spawn

    def spawn(*a: Any, **k: Any) -> int:
        started.append(a)
        return real_spawn(*a, **k)
    monkeypatch.setattr(os, "posix_spawn", spawn)
    monkeypatch.setattr(fsops, "_CATS", (str(tmp_path / "no-cat"),))
    big = tmp_path / "big.bin"
    big.write_bytes(b"o" * (1 << 17))
    fsops.atomic_write(big, b"n" * (1 << 17))
    assert big.read_bytes() == b"n" * (1 << 17)
    monkeypatch.setattr(fsops, "_CATS", ("/bin/cat", "/usr/bin/cat"))
    small = tmp_path / "small.bin"
    small.write_bytes(b"o" * 100)
    fsops.atomic_write(small, b"n")
    linked = tmp_path / "linked.bin"
    linked.write_bytes(b"o" * (1 << 17))
    os.link(linked, tmp_path / "other-name.bin")
    fsops.atomic_write(linked, b"n")
    real_listdir = os.listdir

    def no_proc(path: Any = ".") -> list[str]:
        if str(path).startswith("/proc"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_listdir(path)
    monkeypatch.setattr(os, "listdir", no_proc)
    big.write_bytes(b"o" * (1 << 17))
    fsops.atomic_write(big, b"m")                            # no /proc: nothing started, the write is whole
    monkeypatch.setattr(os, "listdir", real_listdir)
    # a network file system: NFS would rename an open target aside (.nfsXXXX)
    from journal import fstype
    fstype.forget()
    monkeypatch.setattr(fstype, "find_mount", lambda path: fstype.Mount(path, "nfs4", "srv:/x", True))
    big.write_bytes(b"o" * (1 << 17))
    fsops.atomic_write(big, b"k")
    fstype.forget()
    assert started == [(str(tmp_path / "no-cat"), ["cat"], {})]
    assert small.read_bytes() == linked.read_bytes() == b"n" and big.read_bytes() == b"k"
    assert (tmp_path / "other-name.bin").read_bytes() == b"o" * (1 << 17)
