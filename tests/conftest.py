"""Shared fixtures: a workspace in tmp_path, a scrubbed environment, and one CLI helper.

Tests are layered (the project's testing issue): the API in-process for most
behaviour; the commands through ``sop()``, which by default invokes the click
command objects of :mod:`journal.cli` in this process with click's
``CliRunner``; and real processes (``sop(..., proc=True)``, the ``bin/``
shims under this Python) only where the process itself matters: crash and
I/O-error injection (``SOP_CRASH_AT``, ``SOP_FAIL_AT``), kills, several
commands at once, signals, ``sop-run``, an owner that must be a separate
process, terminals, and smoke tests of the scripts themselves.

Either way ``sop()`` returns a ``subprocess.CompletedProcess`` (returncode,
stdout, stderr apart) and checks the exit status.  The in-process path is
made faithful to a real process for the call's duration: the environment is
exactly the one given (``scrubbed_env()`` by default, keys removed again
afterwards), ``cwd`` is the working directory, ``os.getppid()`` is this
process (what a child of it would see, so the default owner of ``sop-begin``
is the test process), the per-process fault-injection state of
:mod:`journal.fsops` is re-read from that environment and forgotten after,
and ``journal.wal.SEGMENT_BYTES`` follows ``$SOP_SEGMENT_BYTES`` as it would
at a fresh import.  A traceback is never turned into an exit status: it
fails the test.  ``SOP_TESTS_PROC=1`` in the environment of pytest sends
every call through a real process (to check the two agree).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# tests/windows/ runs only on Windows (.ci/windows-lane); elsewhere its conftest.py is not even imported, so that
# it never stands in for this one as the module "conftest".  tests/cluster/ (several hosts, one PostgreSQL) runs
# only with SOP_CLUSTER=1 (.ci/cluster-lane); it is a package, so its conftest is "cluster.conftest".
collect_ignore = ([] if sys.platform == "win32" else ["windows"]) + \
    ([] if os.environ.get("SOP_CLUSTER") == "1" else ["cluster"])
BIN = ROOT / "bin"
FAST_CONFIG = """\
[lock]
timeout_seconds = 20
retries = 2
backoff_seconds = 0
"""


def scrubbed_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOP_")}
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(autouse=True)
def _scrub_sop_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("SOP_"):
            monkeypatch.delenv(k)


ALWAYS_PROC = os.environ.get("SOP_TESTS_PROC") == "1"     # read before the autouse fixture scrubs SOP_*
PROCESS_ONLY = ("SOP_CRASH_AT", "SOP_FAIL_AT")             # fault injection that belongs to a whole process
DEFAULT_SEGMENT_BYTES = 8 << 20                            # journal.wal's default, when $SOP_SEGMENT_BYTES is unset


def sop(cmd: str, *args: str, code: int | None = 0, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120, proc: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``sop-<cmd> args`` (``sop args`` when cmd is "") and check its exit status (None: any).

    In this process by default; ``proc=True`` runs the ``bin/`` shim as a real process instead.
    """
    env = scrubbed_env() if env is None else env
    if proc or ALWAYS_PROC:
        exe = BIN / (f"sop-{cmd}" if cmd else "sop")
        p = subprocess.run([sys.executable, str(exe), *args], cwd=cwd, env=env, text=True,
                           capture_output=True, timeout=timeout)
    else:
        p = sop_inprocess(cmd, *args, cwd=cwd, env=env)
    if code is not None and p.returncode != code:
        raise AssertionError(f"sop-{cmd} {' '.join(args)}: exit {p.returncode}, expected {code}"
                             f"{'' if proc or ALWAYS_PROC else ' (in-process)'}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ is exactly ``env`` inside the block, and exactly what it was after it."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _runner() -> Any:
    """A CliRunner that, like a real process, lets click measure the terminal for --help (CliRunner fixes 80)."""
    from click import formatting
    from click.testing import CliRunner

    class Runner(CliRunner):
        @contextlib.contextmanager
        def isolation(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            with super().isolation(*args, **kwargs) as streams:
                formatting.FORCED_WIDTH = None             # CliRunner puts its saved value back on exit
                yield streams
    return Runner()


def sop_inprocess(cmd: str, *args: str, cwd: Path | None = None,
                  env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Invoke the click command of ``sop-<cmd>`` (the ``sop`` group when cmd is "") in this process."""
    from unittest import mock

    from journal import cli, fsops, wal
    env = scrubbed_env() if env is None else dict(env)
    assert cmd != "run", "sop-run forwards signals and hands its stdout fd to the command: use proc=True"
    assert not any(k in env for k in PROCESS_ONLY), f"{PROCESS_ONLY} act on a whole process: use proc=True"
    command = cli.COMMANDS[cmd] if cmd else cli.sop
    saved_segment_bytes = wal.SEGMENT_BYTES
    with contextlib.ExitStack() as stack:                  # undone in reverse order
        stack.callback(fsops.reset)                        # last, in the restored environment: forget injections
        stack.callback(setattr, wal, "SEGMENT_BYTES", saved_segment_bytes)
        stack.enter_context(_environ(env))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(mock.patch.object(os, "getppid", os.getpid))     # as a child of this process sees it
        stack.enter_context(mock.patch.object(sys, "__stdout__", None))      # no terminal (a child's stdout is a pipe)
        wal.SEGMENT_BYTES = int(env.get("SOP_SEGMENT_BYTES", str(DEFAULT_SEGMENT_BYTES)))
        fsops.reset()                                      # a fresh process reads SOP_TRACE_MUTATIONS afresh
        result = _runner().invoke(command, list(args), prog_name=f"sop-{cmd}" if cmd else "sop",
                                    catch_exceptions=False)
    return subprocess.CompletedProcess([f"sop-{cmd}" if cmd else "sop", *args], result.exit_code,
                                       result.stdout, result.stderr)


def sop_json(cmd: str, *args: str, code: int | None = 0, **kw: Any) -> Any:
    p = sop(cmd, *args, "--json", code=code, **kw)
    return json.loads(p.stdout)


class WS:
    """A test workspace and shortcuts to drive it through the CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sheet = root / "backtests" / "Strategy_Master_Filter.xlsx"

    def sop(self, cmd: str, *args: str, code: int | None = 0, **kw: Any) -> subprocess.CompletedProcess[str]:
        return sop(cmd, "-C", str(self.root), *args, code=code, **kw)

    def json(self, cmd: str, *args: str, code: int | None = 0, **kw: Any) -> Any:
        return sop_json(cmd, "-C", str(self.root), *args, code=code, **kw)

    def begin(self, strategy: str, *args: str) -> str:
        return self.sop("begin", "--strategy", strategy, *args).stdout.strip()

    def write_metadata(self, strategy: str, run_id: str, **extra: Any) -> Path:
        p = self.root / "backtests" / strategy / "run_metadata.json"
        p.write_text(json.dumps({"run_id": run_id, "strategy": strategy, **extra}))
        return p

    def begin_tx(self, strategy: str) -> dict[str, Any]:
        return self.json("begin", "--strategy", strategy)

    def full_run(self, strategy: str, **metrics: Any) -> dict[str, Any]:
        tx = self.begin_tx(strategy)
        self.write_metadata(strategy, tx["run_id"], metrics=metrics)
        self.sop("commit", tx["txid"])
        return tx

    def rows(self) -> list[list[Any]]:
        """Every row of the master worksheet, read by openpyxl (an independent reader)."""
        import openpyxl
        wb = openpyxl.load_workbook(self.sheet)
        try:
            return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
        finally:
            wb.close()

    def records(self) -> list[dict[str, Any]]:
        out = []
        for seg in sorted((self.root / ".sop" / "journal").glob("*.jsonl")):
            for line in seg.read_bytes().splitlines():
                out.append(json.loads(line))
        return out

    def tree(self) -> set[str]:
        """Every path under backtests/ and runs/ (relative), to prove nothing changed."""
        out = set()
        for top in ("backtests", "runs"):
            base = self.root / top
            if base.exists():
                for p in base.rglob("*"):
                    out.add(p.relative_to(self.root).as_posix())
        return out


@pytest.fixture
def sleeper() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Processes to own transactions; killed (and reaped) to make their transactions abandoned."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["sleep", "600"])
        procs.append(p)
        return p
    yield start
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def ws(tmp_path: Path) -> WS:
    root = tmp_path / "ws"
    root.mkdir()
    sop("init", "-C", str(root))
    (root / ".sop" / "config.toml").write_text(FAST_CONFIG)
    return WS(root)


@pytest.fixture
def api_root(tmp_path: Path) -> Path:
    """A workspace made through the Python API (``journal.init``), with the fast lock settings."""
    import journal
    root = tmp_path / "ws"
    root.mkdir()
    journal.init(root)
    (root / ".sop" / "config.toml").write_text(FAST_CONFIG)
    return root
