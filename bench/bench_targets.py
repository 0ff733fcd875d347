"""Benchmark: the commit targets as ratios measured in the same run (see BENCHMARKS.md, *Commit targets*).

Builds a workspace whose sheet has ``--rows`` rows x 16 columns (XlsxWriter, in a temp folder
removed afterwards) and measures, each command a separate process as a pipeline runs it
(interpreter start-up and imports included; CPU and peak RSS from ``wait4`` of that process,
which include its reaped children, i.e. the XML check's child):

* the floors, in this process: ``cp`` + fsync of the workbook; the *zip floor* (copy the other
  members raw, re-deflate only the sheet at level 1, fsync, replace);
* ``sop-commit`` in the steady state (the sheet last written by sop: a spliced append), the
  median of ``--repeat``, each right after a cp + fsync of the same workbook (the ratio is the
  median of those pairs'; ``--settle S`` syncs and waits S seconds before each of the two);
* the first ``sop-commit`` after a foreign save (the workbook re-zipped by Python's zipfile, a
  new inode and layout: the index is read again, the gate checks the sheet, the append
  rewrites it whole), the median of ``--foreign`` runs;
* ``sop-begin`` on the unchanged sheet (peak RSS);
* ``--openpyxl``: openpyxl load + append + save once (slow: ~25 s at 100k rows);
* ``--concurrent N``: N ``sop-run`` processes started at once (the default ``[lock]`` settings), each
  writing its ``run_metadata.json``; then the same N on a workspace whose sheet is empty (what N
  processes cost on this machine before the sheet has any size: interpreters, imports, the
  journal, the backtest command), and the difference in steady commits (the sheet's share);
* ``--no-ids N``: ``sop init`` and ``sop-begin`` on N rows whose Strategy/RunID cells are empty,
  against N rows that hold them.

The load average is printed with every figure (other work may share the machine).

Usage: python bench/bench_targets.py [--rows 100000] [--repeat 5] [--foreign 3] [--openpyxl]
       [--concurrent 64] [--no-ids 50000] [--settle 1]

Run it with the interpreter of the install to measure: a venv with ``pip install '.[fast]'`` starts
in ~10 ms where one with editable installs and other .pth files starts in 40-50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
sys.path.insert(0, str(ROOT))
SHEET = Path("backtests") / "Strategy_Master_Filter.xlsx"
# Children compile sop once and reuse the bytecode, as an installed package does (a checkout run with
# PYTHONDONTWRITEBYTECODE=1 would compile every module in every process: ~0.1 s each).
# $SOP_DEFLATE passes through: SOP_DEFLATE=zlib measures without ISA-L.
ENV = {k: v for k, v in os.environ.items()
       if (not k.startswith("SOP_") or k == "SOP_DEFLATE") and k != "PYTHONDONTWRITEBYTECODE"}
ENV.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "sop-bench-pycache"))


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


# Linux starts a forked child's peak RSS at its parent's and keeps it across exec, so the measured
# process is started by this small launcher (a fresh interpreter, ~10 MB), never by this process.
LAUNCHER = r"""
import json, os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:])
_, status, ru = os.wait4(p.pid, 0)
wall = time.perf_counter() - t
json.dump({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024,
           "code": os.waitstatus_to_exitcode(status)}, sys.stderr)
"""


def proc(*cmd: str, check: bool = True) -> dict[str, Any]:
    """Run a process; its wall time, CPU (user + system, with its reaped children) and peak RSS."""
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    p = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=ENV, stdout=out_f, stderr=err_f)
    out_f.seek(0)
    err_f.seek(0)
    out, err = out_f.read().decode(), err_f.read().decode()
    head, _, stats = err.rpartition("\n") if not err.startswith("{") else ("", "", err)
    res = json.loads(stats)
    if p.returncode or (check and res["code"] != 0):
        raise SystemExit(f"{cmd} failed ({res['code']}): {head}")
    return {**res, "out": out, "load": os.getloadavg()[0]}


def sop(cmd: str, root: Path, *args: str, check: bool = True) -> dict[str, Any]:
    return proc(sys.executable, str(BIN / f"sop-{cmd}"), "-C", str(root), *args, check=check)


def build(root: Path, rows: int, ids: bool = True) -> None:
    import xlsxwriter

    (root / "backtests").mkdir(parents=True)
    wb = xlsxwriter.Workbook(str(root / SHEET), {"constant_memory": True})
    ws = wb.add_worksheet("Master")
    ws.write_row(0, 0, ["Strategy", "RunID", "TxID", "CommittedAt"] + [f"Metric{i}" for i in range(12)])
    for r in range(1, rows + 1):
        ids_ = [f"Strat{r:07d}", f"run-{r:07d}"] if ids else [None, None]
        ws.write_row(r, 0, [*ids_, f"tx-{r:07d}", "2026-01-01T00:00:00Z"] + [r * 0.001 * (i + 1) for i in range(12)])
    wb.close()


def configure(root: Path) -> str:
    """No lock back-off for the timed commits (they run one at a time); returns the config as sop init wrote it."""
    cfg = root / ".sop" / "config.toml"
    original = cfg.read_text()
    cfg.write_text("[lock]\nbackoff_seconds = 0\ntimeout_seconds = 600\n")
    return original


def begin(root: Path, name: str) -> dict[str, str]:
    tx = json.loads(sop("begin", root, "--strategy", name, "--json", "--owner-pid", str(os.getpid()))["out"])
    Path(tx["strategy_dir"], "run_metadata.json").write_text(json.dumps({"run_id": tx["run_id"],
                                                                         "metrics": {"Metric0": 1.5}}))
    return tx


def settle(seconds: float) -> None:
    """Let the disk write out what the last step left dirty, so that a measurement does not pay for it."""
    if seconds > 0:
        os.sync()
        time.sleep(seconds)


def cp_fsync(src: Path) -> float:
    dst = src.with_name(".cp-floor.xlsx")
    t = time.perf_counter()
    with open(src, "rb") as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g, 1 << 22)
        g.flush()
        os.fsync(g.fileno())
    wall = time.perf_counter() - t
    dst.unlink()
    return wall


def zip_floor(src: Path) -> tuple[float, float]:
    """Copy every other member raw, inflate and re-deflate only the sheet at level 1, fsync, replace."""
    from journal.xlsx.package import Package, write_package

    dst = src.with_name(".zip-floor.xlsx")
    t, c = time.perf_counter(), time.process_time()
    with Package(src) as pkg, open(dst, "wb") as out:
        part = pkg.sheet(None).part
        write_package(pkg, out, {part: lambda: pkg.chunks(part)}, set())
        out.flush()
        os.fsync(out.fileno())
    os.replace(dst, src.with_name(".zip-floor-done.xlsx"))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    src.with_name(".zip-floor-done.xlsx").unlink()
    return wall, cpu


def foreign_save(path: Path) -> None:
    """Another program saves the workbook: every member deflated anew (level 6), a new file."""
    tmp = path.with_name(".foreign.xlsx")
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as out:
        for info in z.infolist():
            out.writestr(info, z.read(info.filename), zipfile.ZIP_DEFLATED, 6)
    os.replace(tmp, path)


def concurrent_runs(root: Path, n: int, what: str) -> float:
    """``n`` sop-run processes started at once, each writing its run_metadata.json; prints and returns the wall."""
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(BIN / "sop-run"), "-C", str(root), "--strategy",
                               f"Run{i}", "--", sys.executable, "-c",
                               "import json,os; json.dump({'run_id': os.environ['SOP_RUN_ID']}, "
                               "open(os.path.join(os.environ['SOP_STRATEGY_DIR'], 'run_metadata.json'),"
                               "'w'))"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(n)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t
    errs = {p.stderr.read().decode()[-300:] for p, c in zip(procs, codes, strict=True) if c and p.stderr}
    from journal import sheet, workspace
    view = sheet.read(workspace.open_workspace(root), cache=False)
    present = sum(1 for i in range(n) if view.strategy_rows(f"Run{i}"))
    print(f"| {n} concurrent sop-run, {what} | {wall:.1f} s | | | {load()} | exit codes "
          f"{sorted(set(codes))}, {present}/{n} rows |", flush=True)
    for e in errs:
        print("   stderr:", e.replace("\n", " "))
    return wall


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def row(what: str, runs: list[dict[str, Any]], extra: str = "") -> str:
    loads = [r["load"] for r in runs]
    return (f"| {what} | {med(runs, 'wall'):.3f} s | {med(runs, 'cpu'):.3f} s | {max(r['rss_mb'] for r in runs):.0f} MB"
            f" | {min(loads):.2f}-{max(loads):.2f} | {extra} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--foreign", type=int, default=3)
    ap.add_argument("--openpyxl", action="store_true")
    ap.add_argument("--concurrent", type=int, default=0)
    ap.add_argument("--no-ids", type=int, default=0)
    ap.add_argument("--settle", type=float, default=0.0,
                    help="sync and wait this many seconds before each steady commit and its cp + fsync")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "ws"
        t = time.perf_counter()
        build(root, args.rows)
        sop("init", root)
        default_config = configure(root)
        path = root / SHEET
        print(f"built {args.rows:,} rows x 16 columns ({path.stat().st_size / 1e6:.1f} MB) in "
              f"{time.perf_counter() - t:.0f} s; {load()}", flush=True)
        sop("commit", root, begin(root, "Warm")["txid"])        # sop writes the sheet once: laid out
        begins = [sop("begin", root, "--strategy", f"B{i}", "--owner-pid", str(os.getpid())) for i in range(3)]
        # Each steady commit is paired with a cp + fsync of the same workbook just before it, so that
        # both meet the same disk (a VM's disk drifts by 2x within a minute); the ratio is the median
        # of the pairs' ratios.
        steady, cps, pairs = [], [], []
        for i in range(args.repeat):
            tx = begin(root, f"Steady{i}")
            settle(args.settle)
            cps.append({"wall": cp_fsync(path), "cpu": 0.0, "rss_mb": 0, "load": os.getloadavg()[0]})
            settle(args.settle)
            steady.append(sop("commit", root, tx["txid"]))
            pairs.append(steady[-1]["wall"] / cps[-1]["wall"])
        floors = []
        for _ in range(3):
            w, c = zip_floor(path)
            floors.append({"wall": w, "cpu": c, "rss_mb": 0, "load": os.getloadavg()[0]})
        foreign = []
        for i in range(args.foreign):
            tx = begin(root, f"Foreign{i}")
            foreign_save(path)
            foreign.append(sop("commit", root, tx["txid"]))
        print()
        print(f"| measure ({args.rows:,} rows) | wall (median) | CPU | peak RSS | load | ratio |")
        print("|---|---:|---:|---:|---|---|")
        print(row("cp + fsync of the workbook (floor)", cps))
        print(row("zip floor: other members raw, sheet re-deflated (level 1), fsync", floors))
        print(row(f"sop-commit, steady state (median of {args.repeat})", steady,
                  f"{statistics.median(pairs):.2f} x cp+fsync (median of the pairs; "
                  f"{min(pairs):.2f}-{max(pairs):.2f})"))
        print(row(f"sop-commit, first after a foreign save (median of {args.foreign})", foreign,
                  f"{med(foreign, 'wall') / med(floors, 'wall'):.2f} x zip floor"))
        print(row("sop-begin, unchanged sheet", begins))
        if args.openpyxl:
            copy = path.with_name("openpyxl.xlsx")
            shutil.copyfile(path, copy)
            code = ("import openpyxl,sys; wb=openpyxl.load_workbook(sys.argv[1]); "
                    "wb.worksheets[0].append(['x','y','z','2026',1.5]); wb.save(sys.argv[1])")
            op = proc(sys.executable, "-c", code, str(copy))
            print(row("openpyxl load + append + save (once)", [op],
                      f"steady sop-commit is {op['wall'] / med(steady, 'wall'):.0f} x faster"))
        if args.concurrent:                                     # with the default [lock] settings
            (root / ".sop" / "config.toml").write_text(default_config)
            one = med(steady, "wall")
            wall = concurrent_runs(root, args.concurrent, f"{args.rows:,}-row sheet")
            # The same runs on a sheet of one row: what 64 processes cost on 2 cores before the sheet
            # has any size (interpreters, imports, the journal, the backtest command); the ratio
            # that follows is what the sheet adds, in commits.
            tiny = Path(d) / "tiny"
            tiny.mkdir()
            sop("init", tiny)
            (tiny / "runs").mkdir(exist_ok=True)
            floor = concurrent_runs(tiny, args.concurrent, "sheet of 0 rows (the floor)")
            print(f"| {args.concurrent} concurrent sop-run: total | {wall / one:.1f} x one steady commit "
                  f"({one:.3f} s) | | | {load()} | the sheet's share: ({wall:.1f} - {floor:.1f}) s = "
                  f"{(wall - floor) / one:.1f} x one commit |")
    if args.no_ids:
        for ids in (True, False):
            with tempfile.TemporaryDirectory() as d:
                root = Path(d) / "ws"
                build(root, args.no_ids, ids=ids)
                init = sop("init", root)
                shutil.rmtree(root / ".sop" / "cache", ignore_errors=True)
                first = sop("begin", root, "--strategy", "X", "--owner-pid", str(os.getpid()))
                label = "with Strategy/RunID" if ids else "without Strategy/RunID values"
                print(row(f"sop init, {args.no_ids:,} rows {label}", [init]))
                print(row(f"sop-begin (no cached index), {args.no_ids:,} rows {label}", [first]))


if __name__ == "__main__":
    main()
