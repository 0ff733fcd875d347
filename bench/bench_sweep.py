"""Benchmark: sop-sweep's dry run on a large workspace, and --fix on 1,000 findings.

Builds, in a temp folder removed afterwards (never commit generated data):

* a *large* workspace: ``--rows`` rows (XlsxWriter), as many
  ``backtests/<strategy>/`` folders each holding ``run_metadata.json``, and
  as many ``runs/<run_id>/`` folders — every row indexed, nothing to find;
* a *fix* workspace: ``--fix-rows`` healthy rows plus 1,000 findings —
  200 orphaned rows (their run snapshot gone, so each also leaves a zombie
  strategy folder: 400 findings), 300 zombie strategy folders and 300 zombie
  run snapshots, each with a few small files.

It prints, for the large workspace, the *floor* measured in the same run —
listing both folders with ``os.scandir`` (``is_dir(follow_symlinks=False)``)
and reading the sheet's two columns with ``xlsx.read_table`` — beside the
dry run (the Python API, as the command runs it), and then the dry run as a
whole ``sop-sweep`` process.  Then ``--fix`` on the fix workspace, and,
with ``--fix-large``, on the large one with the same 1,000 findings added.

With ``--cold`` (root only: it writes ``/proc/sys/vm/drop_caches``) the floor
and the dry run are also measured with the page cache dropped first, which
is what a nightly sweep on a big disk meets.

Usage: python bench/bench_sweep.py [--rows 100000] [--fix-rows 10000] [--fix-large] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
sys.path.insert(0, str(ROOT))

from journal import xlsx  # noqa: E402
from journal.janitor import sweep  # noqa: E402


def build(root: Path, rows: int, *, meta: bool = True) -> None:
    """A workspace whose sheet, strategy folders and run folders agree row for row."""
    import xlsxwriter
    bt, rn = root / "backtests", root / "runs"
    bt.mkdir(parents=True)
    rn.mkdir()
    wb = xlsxwriter.Workbook(str(bt / "Strategy_Master_Filter.xlsx"), {"constant_memory": True})
    ws = wb.add_worksheet("Master")
    ws.write_row(0, 0, ["Strategy", "RunID", "TxID", "CommittedAt", "Sharpe", "MaxDD"])
    for r in range(1, rows + 1):
        ws.write_row(r, 0, [f"Strat{r:06d}", f"run-{r:06d}", f"tx-{r:06d}", "2026-01-01T00:00:00Z", r * 1e-5, -0.1])
    wb.close()
    for r in range(1, rows + 1):
        d = bt / f"Strat{r:06d}"
        d.mkdir()
        if meta:
            (d / "run_metadata.json").write_bytes(b'{"run_id": "run-%06d", "strategy": "Strat%06d", '
                                                  b'"metrics": {"sharpe": 1.25}}' % (r, r))
        (rn / f"run-{r:06d}").mkdir()
    subprocess.run([sys.executable, str(BIN / "sop-init"), "-C", str(root)], check=True, capture_output=True)
    (root / ".sop" / "config.toml").write_text("[lock]\nbackoff_seconds = 0\n")


def add_findings(root: Path, rows: int) -> None:
    """1,000 findings: 200 orphaned rows (+200 zombie folders they leave), 300 zombie folders, 300 zombie runs."""
    bt, rn = root / "backtests", root / "runs"
    step = max(1, rows // 200)
    for r in range(1, rows + 1, step)[:200]:
        shutil.rmtree(rn / f"run-{r:06d}")
    for i in range(300):
        for d in (bt / f"Zombie{i:04d}", rn / f"zrun-{i:04d}"):
            d.mkdir()
            for j in range(3):
                (d / f"part{j}.csv").write_text("day,pnl\n1,0.5\n" * 20)


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def floor(root: Path) -> float:
    t = time.perf_counter()
    n = 0
    for top in ("backtests", "runs"):
        with os.scandir(root / top) as it:
            for e in it:
                if not e.is_symlink() and e.is_dir(follow_symlinks=False):
                    n += 1
    xlsx.read_table(root / "backtests" / "Strategy_Master_Filter.xlsx", None, ["strategy", "runid"])
    return time.perf_counter() - t


def timed_sweep(root: Path, report: Path, **kw: object) -> tuple[float, dict[str, int]]:
    t = time.perf_counter()
    res = sweep(root=root, report=report, **kw)  # type: ignore[arg-type]
    return time.perf_counter() - t, {k: v for k, v in res.counts.items() if v}


def cli_sweep(root: Path, *args: str) -> tuple[float, dict[str, int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOP_")}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, str(BIN / "sop-sweep"), "-C", str(root), "--json", *args],
                       capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"sop-sweep failed ({p.returncode}): {p.stderr}")
    return dt, {k: v for k, v in json.loads(p.stdout)["counts"].items() if v}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--fix-rows", type=int, default=10_000)
    ap.add_argument("--fix-large", action="store_true", help="also --fix 1,000 findings in the large workspace")
    ap.add_argument("--cold", action="store_true", help="also measure with the page cache dropped (root only)")
    args = ap.parse_args()
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as d:
        big = Path(d) / "big"
        t = time.perf_counter()
        build(big, args.rows)
        print(f"built {args.rows} rows, {args.rows} strategy folders with run_metadata.json, "
              f"{args.rows} run folders in {time.perf_counter() - t:.1f} s")
        report = Path(d) / "report.md"
        floor(big)                                             # warm the page cache once
        fl = min(floor(big) for _ in range(3))
        first = timed_sweep(big, report)                       # the sheet's index is not cached yet
        runs = [timed_sweep(big, report) for _ in range(3)]
        dry = min(r[0] for r in runs)
        print(f"floor (scandir both folders + read_table 2 columns): {fl:.2f} s")
        print(f"dry run, Python API, first (sheet index not cached): {first[0]:.2f} s  = {first[0] / fl:.1f} x floor")
        print(f"dry run, Python API (best of 3 after it):           {dry:.2f} s  = {dry / fl:.1f} x floor; "
              f"findings {runs[0][1] or 'none'}")
        if args.cold:
            drop_caches()
            cfl = floor(big)
            drop_caches()
            shutil.rmtree(big / ".sop" / "cache", ignore_errors=True)
            cdry = timed_sweep(big, report)[0]
            print(f"cold page cache: floor {cfl:.2f} s, dry run {cdry:.2f} s = {cdry / cfl:.1f} x floor")
        dt, counts = cli_sweep(big)
        print(f"dry run, sop-sweep --json process:                  {dt:.2f} s; findings {counts or 'none'}")

        small = Path(d) / "fix"
        build(small, args.fix_rows)
        add_findings(small, args.fix_rows)
        dt, counts = cli_sweep(small)
        assert sum(counts.values()) == 1000, counts
        dt, counts = cli_sweep(small, "--fix")
        print(f"--fix, 1,000 findings in a {args.fix_rows}-row workspace, sop-sweep process: {dt:.2f} s "
              f"({counts})")
        _, after = cli_sweep(small)
        assert not after, after
        if args.fix_large:
            add_findings(big, args.rows)
            dt, counts = cli_sweep(big, "--fix")
            print(f"--fix, 1,000 findings in the {args.rows}-row workspace, sop-sweep process: {dt:.2f} s "
                  f"({counts})")


if __name__ == "__main__":
    main()
