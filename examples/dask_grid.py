#!/usr/bin/env python3
"""A parameter grid of backtests on a Dask cluster, each one a sop transaction in one shared workspace.

    pip install '.[grid]'                      # sop and dask[distributed]
    dask scheduler &                           # on one host (prints tcp://HOST:8786)
    dask worker tcp://HOST:8786 --nthreads 1 & # on every host that sees the workspace
    python3 examples/dask_grid.py --root /shared/ws --scheduler tcp://HOST:8786 \\
        --grid fast=5,10,20 slow=50,100

or ``--count 200`` for 200 parameter sets, and ``--local 4`` instead of
``--scheduler`` to start a scheduler and 4 worker processes on this machine.

Every task runs one moving-average backtest (``examples/tools/ma_cross.py``
on the bundled prices, through ``run_stage1.stage1``: the equity curve and
``run_metadata.json`` in ``backtests/<strategy>/``, the parameters and trades
in ``runs/<run_id>/``) inside ``journal.transaction()``, and returns what
became of it:

* ``committed``: the gate passed and the row is on the Master Sheet (its number);
* ``refused``: the gatekeeper said no and nothing was created — the strategy
  already has a row (running the same grid again refuses every strategy),
  or another run holds it, or a zombie folder is in the way;
* ``aborted``: the backtest raised (``--simulate-failure``), the commit gate
  refused, or the sheet stayed locked: the run was rolled back and its folders
  quarantined (where to is in the result), or deferred;
* ``failed``: anything else (sop's damage or busy errors, a bug): printed
  with its traceback, and the exit status is 1.

The strategy name comes from the parameters (``sma_fast10_slow50``), so a
parameter set is one strategy and one row whichever host runs it.  The
script uses only sop's public API and the workspace's root folder, so it
works with whichever journal store the workspace's ``.sop/config.toml``
names; every host must see the workspace at the same path (``--root``).

Exit status: 0 when every task committed, was refused or was rolled back;
1 when a task failed otherwise; 2 for a bad command line or workspace.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent / "tools"
DEFAULT_PRICES = TOOLS.parent / "data" / "prices.csv"
OUTCOMES = ("committed", "refused", "aborted", "failed")


# ---------------------------------------------------------------- the grid

def strategy_name(params: dict[str, int]) -> str:
    """One parameter set, one strategy: ``sma_fast10_slow50``."""
    return f"sma_fast{params['fast']}_slow{params['slow']}"


def grid_from_specs(specs: list[str]) -> list[dict[str, int]]:
    """``fast=5,10,20 slow=50,100`` -> every (fast, slow) with fast < slow, in order."""
    values: dict[str, list[int]] = {}
    for spec in specs:
        key, sep, vals = spec.partition("=")
        if not sep or key not in ("fast", "slow"):
            raise ValueError(f"grid axis {spec!r}: write fast=5,10,20 or slow=50,100")
        values[key] = [int(v) for v in vals.split(",") if v.strip()]
    if set(values) != {"fast", "slow"}:
        raise ValueError("the grid needs both axes: fast=... slow=...")
    return [{"fast": f, "slow": s} for f, s in itertools.product(values["fast"], values["slow"]) if 0 < f < s]


def grid_of_count(n: int) -> list[dict[str, int]]:
    """N distinct parameter sets: fast 5..24 against slow 30, 35, 40, ... (examples/slurm_array.sh uses the same)."""
    return [{"fast": 5 + i % 20, "slow": 30 + 5 * (i // 20)} for i in range(n)]


# ---------------------------------------------------------------- one task (runs on a worker)

def run_one(root: str, params: dict[str, int], prices: str, tools: str, fail: bool = False) -> dict[str, Any]:
    """One backtest in one sop transaction; returns what happened as plain data (never raises).

    Runs in a Dask worker process, on any host: it imports sop and the
    example engine there (``tools`` is the folder of ``run_stage1.py``).
    """
    t0 = time.perf_counter()
    strategy = strategy_name(params)
    out: dict[str, Any] = {"strategy": strategy, "params": params, "host": socket.gethostname(),
                           "pid": os.getpid(), "outcome": "failed", "row": None, "run_id": None,
                           "moved": {}, "message": ""}
    try:
        import journal
        from journal.errors import Refused, SheetLocked, SopError
        if tools not in sys.path:
            sys.path.insert(0, tools)
        import run_stage1
    except ImportError:
        out["message"] = traceback.format_exc()
        return out

    tx = None
    try:
        with journal.transaction(strategy, root=root) as tx:         # the gatekeeper: Refused if it has a row
            out["run_id"] = tx.run_id
            run_stage1.stage1(tx.strategy, tx.run_id, Path(tx.strategy_dir), Path(tx.run_dir),
                              fast=params["fast"], slow=params["slow"], prices=Path(prices),
                              simulate_failure=fail)
        out["outcome"] = "committed"                                  # leaving the block committed it
        out["row"] = tx.committed.row if tx.committed else None
    except Refused as e:
        if tx is None:                                                # begin refused: nothing was created
            out["outcome"] = "refused"
        elif tx.aborted is not None:                                  # the commit gate refused: rolled back
            out["outcome"], out["moved"] = "aborted", dict(tx.aborted.moved)
        out["message"] = e.message
    except SheetLocked as e:                                          # the sheet stayed locked
        out["outcome"] = "aborted"
        out["moved"] = dict(tx.aborted.moved) if tx is not None and tx.aborted is not None else {}
        out["message"] = f"{e.message} ({e.locked_by})"
    except SopError as e:                                             # damage, busy, ...: not an outcome
        out["message"] = f"exit {e.exit_code}: {e.message}" + (f" {e.detail}" if e.detail else "")
    except Exception as e:                                            # the backtest raised: rolled back
        if tx is not None and tx.aborted is not None and isinstance(e, run_stage1.EngineFailed | ValueError | OSError):
            out["outcome"], out["moved"] = "aborted", dict(tx.aborted.moved)
            out["message"] = str(e)
        else:
            out["message"] = traceback.format_exc()
    out["seconds"] = round(time.perf_counter() - t0, 4)
    return out


# ---------------------------------------------------------------- the driver

def run_grid(client: Any, root: str, grid: list[dict[str, int]], prices: Path,
             fail_every: int = 0) -> list[dict[str, Any]]:
    """Submit one task per parameter set and collect the results as they finish."""
    from distributed import as_completed

    futures = [client.submit(run_one, root, p, str(prices), str(TOOLS),
                             fail=bool(fail_every) and i % fail_every == fail_every - 1,
                             key=f"backtest-{strategy_name(p)}-{i}", pure=False, retries=0)
               for i, p in enumerate(grid)]
    results: list[dict[str, Any]] = []
    for fut in as_completed(futures):
        try:
            results.append(fut.result())
        except Exception:                                             # the worker died, or could not unpickle
            results.append({"strategy": fut.key, "outcome": "failed", "row": None, "run_id": None, "moved": {},
                            "message": traceback.format_exc()})
    return results


def summarize(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    counts = Counter(r["outcome"] for r in results)
    secs = [r["seconds"] for r in results if "seconds" in r]
    return {"tasks": len(results), **{k: counts.get(k, 0) for k in OUTCOMES}, "wall_seconds": round(wall, 3),
            "mean_task_seconds": round(sum(secs) / len(secs), 4) if secs else None,
            "hosts": sorted({f"{r.get('host')}:{r.get('pid')}" for r in results if "host" in r})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a parameter grid of backtests on Dask, one sop transaction each.")
    ap.add_argument("--root", required=True, help="the sop workspace, at the same path on every worker's host")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--scheduler", help="the Dask scheduler's address, e.g. tcp://10.0.0.5:8786")
    where.add_argument("--local", type=int, metavar="N", help="start a local cluster of N worker processes instead")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--grid", nargs="+", metavar="AXIS=V,V", help="e.g. fast=5,10,20 slow=50,100")
    what.add_argument("--count", type=int, metavar="N", help="N distinct parameter sets")
    ap.add_argument("--workers", type=int, default=0, metavar="N",
                    help="wait (up to --wait seconds) until N workers have joined before submitting")
    ap.add_argument("--wait", type=float, default=120.0, help="seconds to wait for --workers (default 120)")
    ap.add_argument("--prices", type=Path, default=DEFAULT_PRICES, help="a date,close CSV every worker can read")
    ap.add_argument("--simulate-failure", type=int, default=0, metavar="K",
                    help="every K-th backtest fails half-way (to see the rollback)")
    ap.add_argument("--json", action="store_true", help="print the summary and every result as one JSON document")
    a = ap.parse_args(argv)

    try:
        grid = grid_from_specs(a.grid) if a.grid else grid_of_count(a.count)
    except ValueError as e:
        ap.error(str(e))
    root = Path(a.root).absolute()
    if not (root / ".sop").is_dir():
        print(f"error: {root} is not a sop workspace (run 'sop init' there)", file=sys.stderr)
        return 2

    from distributed import Client, LocalCluster

    if a.local is not None:
        cluster = LocalCluster(n_workers=a.local, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        cluster, client = None, Client(a.scheduler, timeout="30s")
    try:
        if a.workers:
            try:
                client.wait_for_workers(a.workers, timeout=a.wait)
            except TimeoutError:
                print(f"error: fewer than {a.workers} workers joined in {a.wait:g} s", file=sys.stderr)
                return 2
        t0 = time.perf_counter()
        results = run_grid(client, str(root), grid, a.prices.absolute(), a.simulate_failure)
        wall = time.perf_counter() - t0
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

    summary = summarize(results, wall)
    results.sort(key=lambda r: r["strategy"])
    if a.json:
        print(json.dumps({"summary": summary, "results": results}, indent=1))
    else:
        for r in results:
            if r["outcome"] == "aborted":
                moved = ", ".join(f"{k} -> {v}" for k, v in r["moved"].items()) or "deferred"
                print(f"aborted {r['strategy']}: {r['message']}; {moved}")
            elif r["outcome"] == "failed":
                print(f"FAILED {r['strategy']}: {r['message']}", file=sys.stderr)
        print(f"{summary['tasks']} backtests in {summary['wall_seconds']:.1f} s on {len(summary['hosts'])} "
              f"worker process(es): {summary['committed']} committed, {summary['refused']} refused, "
              f"{summary['aborted']} aborted, {summary['failed']} failed")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
