"""Benchmark the workbook engine (journal.xlsx) against openpyxl on a large Master Sheet.

    python bench/bench_sheet.py [--rows 100000] [--cols 16] [--repeat 3] [--keep]

Generates the workbook into a temporary folder (nothing is committed): XlsxWriter, shared
strings as Excel writes them, a header row (Strategy, RunID, TxID, CommittedAt, metrics…) and
``--rows`` data rows.  Every measurement runs in a fresh child process, which reports the
wall and CPU time of the operation alone (imports and interpreter start-up excluded; CPU
includes sop's own validator grandchild) and its peak resident set size: ``ru_maxrss`` of
``RUSAGE_SELF`` read inside the child at the end (so it includes the interpreter and its imports,
~20 MB), and that of ``RUSAGE_CHILDREN`` (sop's validator, which runs beside it; Linux keeps
ru_maxrss across exec, so a child counts the pages it shared with its parent at fork: an upper
bound).  Appends work on a fresh
copy of the workbook each time.  The median and best wall time of ``--repeat`` runs are shown, and
the child's CPU time (openpyxl runs once).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
op, path = sys.argv[1], sys.argv[2]
if op == "generate":
    sys.path.insert(0, sys.argv[3])
    from bench_sheet import generate
    t, cpu = time.perf_counter(), time.process_time()
    out = generate(path, int(sys.argv[4]), int(sys.argv[5]))
elif op == "sop-append":
    from journal import xlsx
    t, cpu = time.perf_counter(), time.process_time()
    out = xlsx.append_rows(path, None, [{1: "bench_new", 2: "run-new", 3: "tx-new", 4: "2025-01-01T00:00:00Z", 5: 1.5}])
elif op == "sop-remove":
    from journal import xlsx
    t, cpu = time.perf_counter(), time.process_time()
    out = xlsx.remove_rows(path, None, [2])
elif op == "sop-read":
    from journal import xlsx
    t, cpu = time.perf_counter(), time.process_time()
    table = xlsx.read_table(path, columns=["strategy", "runid"])
    out = len(table.rows)
elif op == "openpyxl-append":
    import openpyxl
    t, cpu = time.perf_counter(), time.process_time()
    wb = openpyxl.load_workbook(path)
    wb.worksheets[0].append(["bench_new", "run-new", "tx-new", "2025-01-01T00:00:00Z", 1.5])
    wb.save(path)
    out = None
elif op == "openpyxl-read":
    import openpyxl
    t, cpu = time.perf_counter(), time.process_time()
    wb = openpyxl.load_workbook(path, read_only=True)
    rows = [(r[0].row, r[0].value, r[1].value) for r in wb.worksheets[0].iter_rows(min_row=2, max_col=2)
            if r[0].value is not None or r[1].value is not None]
    wb.close()
    out = len(rows)
elif op == "calamine-read":
    from python_calamine import CalamineWorkbook
    t, cpu = time.perf_counter(), time.process_time()
    data = CalamineWorkbook.from_path(path).get_sheet_by_index(0).to_python(skip_empty_area=False)
    out = sum(1 for r in data[1:] if r[0] != "" or r[1] != "")
else:
    raise SystemExit(f"unknown op {op}")
dt = time.perf_counter() - t
kids = resource.getrusage(resource.RUSAGE_CHILDREN)   # sop's validator child, when it ran one
print(json.dumps({"seconds": dt, "cpu": time.process_time() - cpu + kids.ru_utime + kids.ru_stime,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "child_maxrss_mb": kids.ru_maxrss / 1024, "out": out}))
"""


def generate(path: Path | str, rows: int, cols: int) -> None:
    import xlsxwriter

    wb = xlsxwriter.Workbook(str(path))
    ws = wb.add_worksheet("Master")
    header = ["Strategy", "RunID", "TxID", "CommittedAt"] + [f"Metric{i}" for i in range(cols - 4)]
    ws.write_row(0, 0, header)
    for r in range(1, rows + 1):
        ws.write_row(r, 0, [f"strat_{r:06d}", f"run-{r:08d}", f"tx{r:x}", "2024-01-01T00:00:00Z"]
                     + [r * 0.5 + i for i in range(cols - 4)])
    wb.close()


def measure(op: str, src: Path, work: Path, copy: bool, *extra: str) -> dict[str, float]:
    """Run one operation in a fresh child (this process stays small: Linux keeps ru_maxrss across exec)."""
    target = src
    if copy:
        target = work / f"copy-{op}{src.suffix}"
        shutil.copyfile(src, target)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", CHILD, op, str(target), *extra], capture_output=True, text=True,
                       env=env)
    if p.returncode:
        raise SystemExit(f"{op} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def median_of(op: str, src: Path, work: Path, copy: bool, repeat: int) -> dict[str, float]:
    runs = [measure(op, src, work, copy) for _ in range(repeat)]
    return {"seconds": statistics.median(r["seconds"] for r in runs), "best": min(r["seconds"] for r in runs),
            "cpu": statistics.median(r["cpu"] for r in runs),
            "maxrss_mb": max(r["maxrss_mb"] for r in runs),
            "child_maxrss_mb": max(r["child_maxrss_mb"] for r in runs), "out": runs[0]["out"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sop-bench-"))
    try:
        src = work / "Strategy_Master_Filter.xlsx"
        measure("generate", src, work, False, str(Path(__file__).resolve().parent), str(args.rows), str(args.cols))
        size = src.stat().st_size / 1e6
        res = {
            "sop-append": median_of("sop-append", src, work, True, args.repeat),
            "sop-remove": median_of("sop-remove", src, work, True, args.repeat),
            "sop-read": median_of("sop-read", src, work, False, args.repeat),
            "calamine-read": median_of("calamine-read", src, work, False, args.repeat),
            "openpyxl-read": median_of("openpyxl-read", src, work, False, 1),
            "openpyxl-append": median_of("openpyxl-append", src, work, True, 1),
        }
        assert res["sop-read"]["out"] == res["openpyxl-read"]["out"] == args.rows, res
        print(f"# Workbook engine benchmark — {datetime.date.today().isoformat()}")
        print(f"# {args.rows:,} rows x {args.cols} columns, {size:.1f} MB .xlsx (XlsxWriter, shared strings)")
        print(f"# Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
              f"{platform.system()} {platform.release()}")
        print()
        load = os.getloadavg()[0]
        print(f"# load average at the end: {load:.2f} (other processes on the machine inflate wall times)")
        print()
        print("| operation | wall median (s) | wall best (s) | CPU (s) | peak RSS (MB) | child peak RSS (MB) "
              "| wall ÷ sop's |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        rows = [
            ("sop append_rows (1 row)", "sop-append", None),
            ("openpyxl load + append + save", "openpyxl-append", "sop-append"),
            ("sop remove_rows (row 2)", "sop-remove", None),
            ("sop read_table(Strategy, RunID)", "sop-read", None),
            ("openpyxl read_only, 2 columns", "openpyxl-read", "sop-read"),
            ("python-calamine, whole sheet", "calamine-read", "sop-read"),
        ]
        for label, key, base in rows:
            r = res[key]
            ratio = f"{r['seconds'] / res[base]['seconds']:.1f}×" if base else "—"
            child = f"{r['child_maxrss_mb']:.0f}" if r["child_maxrss_mb"] else "—"
            print(f"| {label} | {r['seconds']:.2f} | {r['best']:.2f} | {r['cpu']:.2f} | {r['maxrss_mb']:.0f} "
                  f"| {child} | {ratio} |")
    finally:
        if args.keep:
            print(f"\n(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
