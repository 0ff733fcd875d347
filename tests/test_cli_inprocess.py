"""The test layers themselves: the in-process CLI helper is faithful to a real process.

conftest's ``sop()`` runs a command in this process (click's ``CliRunner``)
unless ``proc=True``.  Here one flow runs both ways and must agree; the
helper leaves no trace in this process (environment, working directory,
fault injection, segment size); a traceback fails the caller instead of
becoming an exit status; and every console script (the ``bin/`` shims)
starts as a real process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, FAST_CONFIG, scrubbed_env, sop, sop_inprocess

from journal import cli, fsops, wal

TXID = re.compile(r"tx-\d{8}T\d{6}Z-[0-9a-f]+")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def _norm(text: str, root: Path) -> str:
    """Output with what differs between two workspaces (the root, txids, times) replaced."""
    return STAMP.sub("<time>", TXID.sub("<txid>", text.replace(str(root), "<root>")))


def _flow(root: Path, proc: bool) -> list[tuple[int, Any, str]]:
    """init, begin (text and --json), a refused begin, commit, status --json: (exit, stdout, stderr) of each."""
    root.mkdir()
    out: list[subprocess.CompletedProcess[str]] = []

    def run(cmd: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        p = sop(cmd, "-C", str(root), *args, code=code, proc=proc)
        out.append(p)
        return p
    run("init", "--json")
    (root / ".sop" / "config.toml").write_text(FAST_CONFIG)
    run("begin", "--strategy", "Other", "--run-id", "r-0")
    tx = json.loads(run("begin", "--strategy", "Alpha", "--run-id", "r-1", "--json").stdout)
    run("begin", "--strategy", "alpha", code=1)
    (root / "backtests" / "Alpha" / "run_metadata.json").write_text(json.dumps({"run_id": "r-1", "sharpe": 1.5}))
    run("commit", tx["txid"], "--json")
    run("commit", tx["txid"])
    run("abort", "tx-nope", "--json", code=4)
    status = json.loads(run("status", "--json").stdout)
    assert [t["strategy"] for t in status["transactions"]] == ["Other"]
    assert status["transactions"][0]["owner"]["pid"] == os.getpid()    # the default owner: the caller's parent
    assert status["transactions"][0]["alive"] is True
    out.append(sop("", "--version", proc=proc))
    return [(p.returncode, _norm(p.stdout, root), _norm(p.stderr, root)) for p in out]


def test_in_process_and_subprocess_agree_on_one_flow(tmp_path: Path) -> None:
    inproc = _flow(tmp_path / "a", proc=False)
    real = _flow(tmp_path / "b", proc=True)
    assert [c for c, _, _ in inproc] == [0, 0, 0, 1, 0, 0, 4, 0, 0]
    for i, (got, want) in enumerate(zip(inproc, real, strict=True)):
        assert got == want, f"call {i} differs in-process"
    assert f"is held by transaction <txid> (begun, owner pid {os.getpid()}" in inproc[3][2]
    assert "<txid>" in inproc[1][1] and "already committed" in inproc[5][2]    # the comparison compared something


def test_the_journal_is_the_same_either_way(tmp_path: Path) -> None:
    def records(proc: bool) -> list[tuple[str, str, Any]]:
        root = tmp_path / f"ws-{proc}"
        root.mkdir()
        sop("init", "-C", str(root), proc=proc)
        doc = json.loads(sop("begin", "-C", str(root), "--strategy", "S", "--run-id", "r", "--json",
                             proc=proc).stdout)
        sop("abort", "-C", str(root), doc["txid"], "--delete", proc=proc)
        recs = []
        for seg in sorted((root / ".sop" / "journal").glob("*.jsonl")):
            for line in seg.read_bytes().splitlines():
                r = json.loads(line)
                data = {k: v for k, v in r["data"].items() if k not in ("owner", "reason")}
                recs.append((r["type"], r["user"], data))
                if r["type"] == "begin":
                    assert r["data"]["owner"]["pid"] == os.getpid()
        return recs
    inproc, real = records(False), records(True)
    assert inproc == real and [t for t, _, _ in inproc][0] == "begin" and len(inproc) >= 6


def test_the_helper_leaves_no_trace_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    sop("init", "-C", str(root))
    trace = tmp_path / "trace"
    monkeypatch.setenv("KEEP_ME", "1")
    cwd, environ, segment_bytes = os.getcwd(), dict(os.environ), wal.SEGMENT_BYTES
    sop("begin", "--strategy", "A", cwd=root,
        env=scrubbed_env(SOP_TRACE_MUTATIONS=str(trace), SOP_SEGMENT_BYTES="900", SOP_OWNER_PID=str(os.getpid())))
    assert len(trace.read_text().splitlines()) >= 4                # the trace was read afresh for the call
    assert os.getcwd() == cwd and dict(os.environ) == environ and wal.SEGMENT_BYTES == segment_bytes
    assert "SOP_TRACE_MUTATIONS" not in os.environ and os.getppid() != os.getpid()
    n = len(trace.read_text().splitlines())
    sop("begin", "-C", str(root), "--strategy", "B")                 # no longer traced: the injection state is reset
    assert len(trace.read_text().splitlines()) == n
    fsops.point("check", tmp_path / "nothing")                        # and the API in this process is not traced
    assert len(trace.read_text().splitlines()) == n


def test_segment_bytes_applies_per_call(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    sop("init", "-C", str(root))
    for i in range(3):
        sop("begin", "-C", str(root), "--strategy", f"S{i}", env=scrubbed_env(SOP_SEGMENT_BYTES="700"))
    assert len(list((root / ".sop" / "journal").glob("*.jsonl"))) >= 3
    small = len(list((root / ".sop" / "journal").glob("*.jsonl")))
    for i in range(3, 6):
        sop("begin", "-C", str(root), "--strategy", f"S{i}")           # the default again: no more seals
    assert len(list((root / ".sop" / "journal").glob("*.jsonl"))) == small


def test_a_traceback_fails_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from journal import porcelain

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("a bug, not an exit status")
    monkeypatch.setattr(porcelain, "status", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        sop_inprocess("status", "-C", str(tmp_path))


@pytest.mark.parametrize("env", [{"SOP_CRASH_AT": "1"}, {"SOP_FAIL_AT": "1:EIO"}])
def test_process_level_injection_is_refused_in_process(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(AssertionError, match="proc=True"):
        sop_inprocess("init", "-C", str(tmp_path), env=scrubbed_env(**env))
    assert not (tmp_path / ".sop").exists()


def test_every_console_script_starts_as_a_process() -> None:
    """The bin/ shims, one real process each (at once): usage on --help, exit 0."""
    names = ["", *cli.COMMANDS]
    assert {"sweep", "log", "fsck"} <= set(cli.COMMANDS)
    procs = {n: subprocess.Popen([sys.executable, str(BIN / (f"sop-{n}" if n else "sop")), "--help"],
                                 env=scrubbed_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in names}
    for n, p in procs.items():
        out, err = p.communicate(timeout=120)
        prog = f"sop-{n}" if n else "sop"
        assert p.returncode == 0, err
        assert out.startswith(f"Usage: {prog} "), out
        if n != "run":                                                 # sop-run only ever runs as a process
            assert out == sop(n, "--help").stdout                      # the in-process help is the same
    assert sorted(p.name for p in BIN.iterdir()) == sorted(f"sop-{n}" if n else "sop" for n in names)


def test_a_traced_run_counts_the_same_mutations_either_way(tmp_path: Path) -> None:
    """The crash loops count crash points in-process and crash a real process: the counts must agree."""
    root = tmp_path / "ws"
    root.mkdir()
    sop("init", "-C", str(root))
    (root / ".sop" / "config.toml").write_text(FAST_CONFIG)
    tx = json.loads(sop("begin", "-C", str(root), "--strategy", "A", "--json").stdout)
    (root / "backtests" / "A" / "run_metadata.json").write_text(json.dumps({"run_id": tx["run_id"]}))
    (root / "runs" / "stray").mkdir()
    import shutil

    def traced(proc: bool, *args: str) -> list[tuple[str, str]]:
        copy, trace = tmp_path / f"copy-{proc}", tmp_path / f"trace-{proc}"
        shutil.copytree(root, copy, symlinks=True)
        sop(args[0], "-C", str(copy), *args[1:], env=scrubbed_env(SOP_TRACE_MUTATIONS=str(trace)), proc=proc)
        lines = [ln.split(" ", 3) for ln in trace.read_text().splitlines()]
        shutil.rmtree(copy)
        trace.unlink()
        paths = [path.replace(str(copy), "<root>").split(".sop-tmp-")[0] for _n, _pid, _kind, path in lines]
        paths = [re.sub(r"[0-9a-f]{16}", "<key>", re.sub(r"(/pending/.+)\.\d+$", r"\1.<pid>", p)) for p in paths]
        return [(kind, path) for (_n, _pid, kind, _), path in zip(lines, paths, strict=True)]
    for args in (("commit", tx["txid"]), ("sweep", "--fix"), ("begin", "--strategy", "B", "--run-id", "rb")):
        inproc = traced(False, *args)
        assert inproc == traced(True, *args) and len(inproc) >= 3, args


def test_a_command_run_as_the_program_leaves_by_os_exit_only_when_nothing_needs_the_orderly_exit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """cli._as_program: os._exit(status) after flushing (no interpreter teardown), else SystemExit as click does."""
    import threading

    import click

    exits: list[int] = []

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(sys, "argv", ["sop-x"])

    def command(code: object) -> click.Command:
        @click.command()
        def cmd() -> None:
            click.echo("out")
            raise SystemExit(code)
        return cmd

    with pytest.raises(Exited):
        cli._as_program(command(4), "sop-x")
    with pytest.raises(Exited):
        cli._as_program(command(None), "sop-x")
    assert exits == [4, 0]
    with pytest.raises(SystemExit) as e:
        cli._as_program(command("a message"), "sop-x")             # printed by the interpreter: the orderly way
    assert e.value.code == "a message"
    monkeypatch.setitem(sys.modules, "psycopg", sys)                 # a database connection to close
    with pytest.raises(SystemExit) as e:
        cli._as_program(command(3), "sop-x")
    assert e.value.code == 3
    monkeypatch.delitem(sys.modules, "psycopg")
    monkeypatch.setattr(sys, "getprofile", lambda: object())       # python -m cProfile: let it write its report
    with pytest.raises(SystemExit) as e:
        cli._as_program(command(5), "sop-x")
    assert e.value.code == 5
    monkeypatch.undo()
    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(sys, "argv", ["sop-x"])
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with pytest.raises(SystemExit) as e:                         # another thread: let the interpreter join it
            cli._as_program(command(0), "sop-x")
        assert e.value.code == 0
    finally:
        stop.set()
        t.join()
    assert exits == [4, 0]
