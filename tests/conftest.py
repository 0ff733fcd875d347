"""Shared fixtures: a workspace in tmp_path, a scrubbed environment, and one CLI helper.

Commands run as real processes (the ``bin/`` shims under this Python), the
way a user or a script runs them; ``sop()`` checks the exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


def sop(cmd: str, *args: str, code: int | None = 0, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``sop-<cmd> args`` and check its exit status (None: any)."""
    exe = BIN / (f"sop-{cmd}" if cmd else "sop")
    p = subprocess.run([sys.executable, str(exe), *args], cwd=cwd, env=env or scrubbed_env(), text=True,
                       capture_output=True, timeout=timeout)
    if code is not None and p.returncode != code:
        raise AssertionError(f"sop-{cmd} {' '.join(args)}: exit {p.returncode}, expected {code}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


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
