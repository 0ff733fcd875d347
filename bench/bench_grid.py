#!/usr/bin/env python3
"""Many processes, one workspace: K processes run N backtests between them, each one ``journal.transaction()``.

    python bench/bench_grid.py --procs 1 2 4 --count 200 [--poll-interval 0.002]

For each K: a fresh workspace in a temporary folder, K processes started at
once, each running its share of ``examples/dask_grid.py``'s parameter sets
(the bundled moving-average backtest) one after another.  Prints the wall
time, the time per backtest, the time each process spent acquiring sop's file
locks, and how many rows were written by another process's rewrite (group
commit).  ``--poll-interval`` replaces filelock's 50 ms polling in the
benchmark's processes only (an experiment: what the polling costs).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "examples"), str(REPO / "examples" / "tools")]


def worker(root: str, items: list[dict[str, int]], poll: float | None, q: Any) -> None:
    import dask_grid
    import filelock
    import run_stage1

    import journal

    waited = [0.0]
    acquire = filelock.FileLock.acquire

    def timed(self: Any, *args: Any, **kw: Any) -> Any:
        if poll is not None:
            kw["poll_interval"] = poll
        t = time.perf_counter()
        try:
            return acquire(self, *args, **kw)
        finally:
            waited[0] += time.perf_counter() - t
    filelock.FileLock.acquire = timed  # type: ignore[method-assign]
    prices = REPO / "examples" / "data" / "prices.csv"
    grouped = 0
    for p in items:
        with journal.transaction(dask_grid.strategy_name(p), root=root) as tx:
            run_stage1.stage1(tx.strategy, tx.run_id, Path(tx.strategy_dir), Path(tx.run_dir),
                              fast=p["fast"], slow=p["slow"], prices=prices)
        grouped += len(tx.committed.also_committed) if tx.committed else 0
    q.put((waited[0], grouped))


def one(k: int, n: int, poll: float | None) -> str:
    import dask_grid

    import journal
    grid = dask_grid.grid_of_count(n)
    with tempfile.TemporaryDirectory() as tmp:
        journal.init(tmp)
        q: Any = mp.Queue()
        procs = [mp.Process(target=worker, args=(tmp, grid[i::k], poll, q)) for i in range(k)]
        t = time.perf_counter()
        for p in procs:
            p.start()
        res = [q.get() for _ in procs]
        for p in procs:
            p.join()
        wall = time.perf_counter() - t
        rows = journal.status(root=tmp).sheet
    waits = ", ".join(f"{w:.1f}" for w, _ in res)
    return (f"| {k} | {poll if poll is not None else 0.05:g} | {wall:.2f} s | {wall / n * 1000:.0f} ms | {waits} s | "
            f"{sum(g for _, g in res)} |" + ("" if rows.get("damage") is None else f" damage: {rows['damage']}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--poll-interval", type=float, default=None)
    a = ap.parse_args()
    print(f"{a.count} backtests, one workspace (file store)\n")
    print("| processes | lock poll | wall | per backtest | lock waits per process | rows grouped |")
    print("|---:|---:|---:|---:|---|---:|")
    for k in a.procs:
        print(one(k, a.count, a.poll_interval), flush=True)


if __name__ == "__main__":
    main()
