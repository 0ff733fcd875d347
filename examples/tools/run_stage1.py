#!/usr/bin/env python3
"""Stage 1 of a backtest pipeline, under sop's control: run the MA crossover, write its artifacts.

This is the execution harness of the SOP's seed, and the code to copy into
your own pipeline.  The enforcement surfaces are all in :func:`main`:

1. **Pre-run gatekeeper.**  ``journal.transaction()`` starts with
   ``journal.begin()``, which reads the Master Sheet before anything is
   written, and refuses with a HARD_STOP (``Refused``, exit 1, nothing
   created) a strategy that already has a row, a zombie folder, a name
   another run holds, or an unsafe name.
2. **Post-run commitment.**  When the ``with`` block ends, ``journal.commit()``
   runs the validation gate (``run_metadata.json`` names this run id;
   ``runs/<run_id>/`` exists) and appends the row.  If the sheet stays open
   in Excel through every retry, the run is rolled back: "Run passed but
   Indexing failed. Artifacts scrubbed to maintain consistency." (exit 3).
3. **Rollback.**  If the block raises (the engine failed, Ctrl-C), both
   folders are quarantined to ``<name>_FAILED_<ts>`` and nothing is indexed.

Run it on its own (it opens its own transaction), or under ``sop-run``,
which owns the transaction and hands it over in ``SOP_*`` variables:

    python3 examples/tools/run_stage1.py --fast 10 --slow 50
    sop-run --strategy MA_Cross_5_20 -- python3 examples/tools/run_stage1.py --fast 5 --slow 20

Exit status: 0 indexed; 1 refused by a gate, or the backtest failed (rolled
back); otherwise sop's (see sop(1)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ma_cross  # noqa: E402  (the engine beside this file)

DEFAULT_PRICES = Path(__file__).resolve().parent.parent / "data" / "prices.csv"


class EngineFailed(RuntimeError):
    """The backtest itself failed (here: on purpose, with --simulate-failure)."""


def stage1(strategy: str, run_id: str, strategy_dir: Path, run_dir: Path, *, fast: int, slow: int,
           prices: Path, simulate_failure: bool = False) -> dict[str, float | int]:
    """Run the backtest and write its artifacts into the folders sop created.

    ``backtests/<strategy>/``: the equity curve, then ``run_metadata.json``
    last (the evidence the commit gate reads).  ``runs/<run_id>/``: the
    persistence snapshot (parameters and trades).
    """
    started = datetime.now(UTC)
    dates, closes = ma_cross.load_prices(prices)
    result = ma_cross.backtest(dates, closes, fast, slow)
    ma_cross.write_equity_csv(result, strategy_dir / "equity_curve.csv")
    params = {"strategy": strategy, "run_id": run_id, "engine": "ma_cross", "fast": fast, "slow": slow,
              "data_file": prices.name, "data_sha256": ma_cross.file_sha256(prices)}
    (run_dir / "params.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    if simulate_failure:
        raise EngineFailed(f"simulated failure after writing part of {strategy}'s artifacts")
    ma_cross.write_trades_csv(result.trades, run_dir / "trades.csv")
    meta = {
        "run_id": run_id,                       # must equal the transaction's: the commit gate checks it
        "strategy": strategy,
        "fast": fast,
        "slow": slow,
        "data_file": prices.name,
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metrics": result.metrics,              # its keys fill matching columns of the Master Sheet
    }
    (strategy_dir / "run_metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return result.metrics


def summary(strategy: str, run_id: str, m: dict[str, float | int]) -> str:
    return (f"{strategy} (run {run_id}): sharpe {m['sharpe']:.2f}, CAGR {m['cagr']:.1%}, "
            f"max drawdown {m['max_drawdown']:.1%}, {m['trades']} trades")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the moving-average crossover backtest under sop's control.")
    ap.add_argument("--fast", type=int, default=10, help="fast moving average, in days (default 10)")
    ap.add_argument("--slow", type=int, default=50, help="slow moving average, in days (default 50)")
    ap.add_argument("--strategy", help="the strategy name (default MA_Cross_<fast>_<slow>)")
    ap.add_argument("--prices", type=Path, default=DEFAULT_PRICES, help="a date,close CSV")
    ap.add_argument("-C", "--root", help="the sop workspace (default: $SOP_ROOT, else the folder above with .sop/)")
    ap.add_argument("--simulate-failure", action="store_true", help="fail half-way, to see the rollback")
    a = ap.parse_args(argv)

    if os.environ.get("SOP_TXID"):
        # Under sop-run: it began the transaction (the gatekeeper has passed), and it
        # commits when we exit 0 or quarantines when we don't.  We only write.
        strategy, run_id = os.environ["SOP_STRATEGY"], os.environ["SOP_RUN_ID"]
        try:
            m = stage1(strategy, run_id, Path(os.environ["SOP_STRATEGY_DIR"]), Path(os.environ["SOP_RUN_DIR"]),
                       fast=a.fast, slow=a.slow, prices=a.prices, simulate_failure=a.simulate_failure)
        except (EngineFailed, OSError, ValueError) as e:
            print(f"backtest failed: {e}", file=sys.stderr)
            return 1
        print(f"backtest done: {summary(strategy, run_id, m)}")
        return 0

    # On its own: the Python API does begin / commit / abort around the engine.
    import journal
    from journal.errors import SopError

    strategy = a.strategy or f"MA_Cross_{a.fast}_{a.slow}"
    tx = None
    try:
        with journal.transaction(strategy, root=a.root) as tx:       # 1. the gatekeeper (HARD_STOP)
            m = stage1(tx.strategy, tx.run_id, Path(tx.strategy_dir), Path(tx.run_dir),
                       fast=a.fast, slow=a.slow, prices=a.prices, simulate_failure=a.simulate_failure)
        # 2. leaving the block committed it: the gate passed and the row is on the sheet
    except SopError as e:                                             # refused, sheet locked, ...
        print(f"error: {e.message}", file=sys.stderr)
        if e.detail:
            print(e.detail, file=sys.stderr)
        return e.exit_code
    except (EngineFailed, OSError, ValueError) as e:                  # 3. rolled back: quarantined
        print(f"backtest failed: {e}", file=sys.stderr)
        if tx is not None and tx.aborted is not None:                 # the handle says where the folders went
            for src, dst in tx.aborted.moved.items():
                print(f"sop rolled the run back; what it wrote in {src}/ is quarantined in {dst}/", file=sys.stderr)
        return 1
    row = tx.committed.row if tx.committed else "?"
    print(f"indexed {summary(tx.strategy, tx.run_id, m)} as row {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
