"""Benchmark: sop-sweep's dry run when everything is a finding — its memory, as a whole process.

Builds (in a temp folder, removed afterwards) a workspace whose Master Sheet
holds ``--rows`` rows and whose ``backtests/`` and ``runs/`` are empty, so
that every row is an *orphaned row*: ``--rows`` findings.  Then runs
``sop-sweep`` (the dry run, text report to the workspace's report file),
``sop-sweep --json`` (every finding on standard output, sent to /dev/null)
and the dry run again, as whole processes, started by a small launcher so
that peak RSS (from ``wait4``) is the sweep's own.  The first run parses the
sheet (nothing has cached its index yet) and caches the index; the other two
load it from ``.sop/cache/``, as every sweep after the sheet's last save does.
The issue's target: <= 500 MB at 1,000,000 findings.

    python3 bench/bench_findings.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from journal import xlsx  # noqa: E402

LAUNCHER = r"""
import json, os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, ru = os.wait4(p.pid, 0)
json.dump({"wall": time.perf_counter() - t, "cpu": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024,
           "code": os.waitstatus_to_exitcode(status)}, sys.stderr)
"""


def measured(*cmd: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOP_")}
    p = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, capture_output=True, text=True)
    return json.loads(p.stderr.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sop-bench-findings-") as tmp:
        root = Path(tmp) / "ws"
        root.mkdir()
        subprocess.run([sys.executable, str(ROOT / "bin" / "sop-init"), "-C", str(root)], check=True,
                       capture_output=True)
        (root / "runs").mkdir(exist_ok=True)          # present and empty: a missing runs/ stops the check
        t = time.perf_counter()
        sheet = root / "backtests" / "Strategy_Master_Filter.xlsx"
        batch = 100_000
        for start in range(0, a.rows, batch):
            xlsx.append_rows(sheet, None, [{1: f"S{i}", 2: f"R{i}"} for i in range(start, min(a.rows, start + batch))])
        print(f"built a sheet of {a.rows:,} rows, no folders, in {time.perf_counter() - t:.1f} s; "
              f"load {os.getloadavg()[0]:.2f}")
        bin_ = ROOT / "bin" / "sop-sweep"
        for label, args in (("sop-sweep (report to its file; parses the sheet)", []),
                            ("sop-sweep --json (to /dev/null)", ["--json"]),
                            ("sop-sweep again (report to its file; index cached)", [])):
            m = measured(sys.executable, str(bin_), "-C", str(root), *args)
            if not args:
                head = (root / "outputs" / "logs" / "integrity_report.md").read_text(encoding="utf-8")[:2000]
                assert f"| orphaned_row | {a.rows} |" in head, head
            print(f"| {label} | {a.rows:,} findings | {m['wall']:.2f} s | {m['cpu']:.2f} s | {m['rss_mb']:.0f} MB "
                  f"| exit {m['code']} | load {os.getloadavg()[0]:.2f} |")


if __name__ == "__main__":
    main()
