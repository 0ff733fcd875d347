"""Helpers of the Windows lane's tests: the launchers on PATH and a workspace driven through them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

FAST_CONFIG = """\
[lock]
timeout_seconds = 20
retries = 2
backoff_seconds = 0
"""


def exe(cmd: str) -> str:
    """The launcher of ``sop-<cmd>`` on PATH: a real .exe, never a .py or a shim."""
    path = shutil.which(f"sop-{cmd}" if cmd else "sop")
    assert path and path.lower().endswith(".exe"), f"no sop-{cmd}.exe launcher on PATH ({path})"
    return path


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SOP_") and k != "PYTHONIOENCODING"}
    out.update(extra)
    return out


class WinWS:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sheet = root / "backtests" / "Strategy_Master_Filter.xlsx"

    def run(self, cmd: str, *args: str, code: int | None = 0, timeout: float = 120,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([exe(cmd), "-C", str(self.root), *args], capture_output=True, text=True,
                           encoding=kw.pop("encoding", "utf-8"), errors="replace", stdin=subprocess.DEVNULL,
                           env=kw.pop("env", env()), timeout=timeout, **kw)
        if code is not None:
            assert p.returncode == code, f"sop-{cmd} {args}: exit {p.returncode}, expected {code}\n" \
                                         f"stdout: {p.stdout}\nstderr: {p.stderr}"
        return p

    def json(self, cmd: str, *args: str, code: int | None = 0, **kw: Any) -> Any:
        return json.loads(self.run(cmd, *args, "--json", code=code, **kw).stdout)

    def tx(self, txid: str) -> dict[str, Any]:
        for t in self.json("status")["transactions"]:
            if t["txid"] == txid:
                return t
        return {}

    def write_metadata(self, strategy: str, run_id: str) -> Path:
        p = self.root / "backtests" / strategy / "run_metadata.json"
        p.write_text(json.dumps({"run_id": run_id, "strategy": strategy}), encoding="utf-8")
        return p

    def rows(self) -> list[list[Any]]:
        import openpyxl
        wb = openpyxl.load_workbook(self.sheet)
        try:
            return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
        finally:
            wb.close()
