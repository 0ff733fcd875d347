"""Benchmark: whole-process sop-begin and sop-commit on a large Master Sheet, and 16 concurrent commits.

Builds a workspace whose sheet has ``--rows`` rows x 16 columns (XlsxWriter,
in a temp folder that is removed afterwards), then measures, as a user sees
them (each command a separate process):

* ``sop-begin`` start-up on an unchanged sheet (after one warm-up run);
* one ``sop-commit`` (gate, decision, one-row append);
* 16 ``sop-commit`` processes started at once (group commit), against
  16 x one commit, which is what one whole-sheet rewrite per commit costs.

Usage: python bench/bench_commit.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
sys.path.insert(0, str(ROOT))


def sop(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOP_")}
    p = subprocess.run([sys.executable, str(BIN / f"sop-{args[0]}"), "-C", str(root), *args[1:]],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"sop-{args[0]} failed ({p.returncode}): {p.stderr}")
    return p


def build(root: Path, rows: int) -> None:
    import xlsxwriter
    (root / "backtests").mkdir(parents=True)
    wb = xlsxwriter.Workbook(str(root / "backtests" / "Strategy_Master_Filter.xlsx"), {"constant_memory": True})
    ws = wb.add_worksheet("Master")
    headers = ["Strategy", "RunID", "TxID", "CommittedAt"] + [f"Metric{i}" for i in range(12)]
    ws.write_row(0, 0, headers)
    for r in range(1, rows + 1):
        ws.write_row(r, 0, [f"Strat{r:06d}", f"run-{r:06d}", f"tx-{r:06d}", "2026-01-01T00:00:00Z"]
                     + [r * 0.001 * (i + 1) for i in range(12)])
    wb.close()
    subprocess.run([sys.executable, str(BIN / "sop-init"), "-C", str(root)], check=True, capture_output=True)
    (root / ".sop" / "config.toml").write_text("[lock]\nbackoff_seconds = 0\ntimeout_seconds = 300\n")


def begin(root: Path, name: str) -> dict[str, str]:
    tx = json.loads(sop("begin", "--strategy", name, "--json", "--owner-pid", str(os.getpid()), root=root).stdout)
    Path(tx["strategy_dir"], "run_metadata.json").write_text(json.dumps({"run_id": tx["run_id"],
                                                                         "metrics": {"Metric0": 1.5}}))
    return tx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "ws"
        t = time.perf_counter()
        build(root, args.rows)
        print(f"built {args.rows} rows x 16 columns in {time.perf_counter() - t:.1f} s")
        begin(root, "Warm")                                     # warm caches
        begins = []
        for i in range(5):
            t = time.perf_counter()
            sop("begin", "--strategy", f"B{i}", "--owner-pid", str(os.getpid()), root=root)
            begins.append(time.perf_counter() - t)
        one = []
        for i in range(3):
            tx = begin(root, f"One{i}")
            t = time.perf_counter()
            sop("commit", tx["txid"], root=root)
            one.append(time.perf_counter() - t)
        txs = [begin(root, f"Many{i}") for i in range(16)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOP_")}
        t = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, str(BIN / "sop-commit"), "-C", str(root), tx["txid"]], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for tx in txs]
        codes = [p.wait() for p in procs]
        many = time.perf_counter() - t
        assert codes == [0] * 16, codes
        from journal import sheet, workspace
        view = sheet.read(workspace.open_workspace(root))
        present = sum(1 for tx in txs if view.run_rows(tx["run_id"]))
        one_med = statistics.median(one)
        print()
        print(f"| measure ({args.rows:,} rows x 16 columns) | result | target |")
        print("|---|---|---|")
        print(f"| sop-begin, whole process, unchanged sheet (median of 5) | {statistics.median(begins):.3f} s "
              f"| <= 0.3 s |")
        print(f"| one sop-commit, whole process (median of 3) | {one_med:.3f} s | <= 2 s |")
        print(f"| 16 concurrent sop-commit processes | {many:.3f} s = {many / one_med:.2f} x one commit; "
              f"{present}/16 rows | all 16 rows, <= 3 x one commit |")
        print(f"| the same 16 as one rewrite each (16 x one commit, estimated) | {16 * one_med:.1f} s | |")


if __name__ == "__main__":
    main()
