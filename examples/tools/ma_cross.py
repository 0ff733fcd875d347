"""A tiny, real backtest: a long-only moving-average crossover on daily closes.

Pure Python (no numpy, no pandas), so the example runs wherever sop does.
It knows nothing about sop: :mod:`run_stage1` is the harness that puts it
under sop's control.  The rules:

* the signal on day *t* is long when SMA(fast) > SMA(slow) of the closes up
  to and including day *t*, else flat;
* the position taken on day *t*'s close earns day *t+1*'s return (no
  look-ahead); no costs, no leverage;
* a trade is one long spell, entry close to exit close; one still open on
  the last day is closed there.
"""

from __future__ import annotations

import csv
import hashlib
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

TRADING_DAYS = 252


@dataclass(frozen=True)
class Trade:
    entry_date: str
    entry_price: float
    exit_date: str
    exit_price: float
    ret: float


@dataclass(frozen=True)
class Result:
    dates: list[str]
    equity: list[float]
    position: list[int]
    trades: list[Trade]
    metrics: dict[str, float | int]


def load_prices(path: Path) -> tuple[list[str], list[float]]:
    """Dates and closes from a ``date,close`` CSV, oldest first."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["date"] for r in rows], [float(r["close"]) for r in rows]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sma(values: list[float], n: int) -> list[float | None]:
    """Simple moving average; None until ``n`` values are in."""
    out: list[float | None] = [None] * len(values)
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= n:
            total -= values[i - n]
        if i >= n - 1:
            out[i] = total / n
    return out


def backtest(dates: list[str], closes: list[float], fast: int, slow: int, capital: float = 10_000.0) -> Result:
    """Run the crossover and measure it."""
    if not 0 < fast < slow:
        raise ValueError(f"need 0 < fast < slow, got fast={fast}, slow={slow}")
    if len(closes) <= slow:
        raise ValueError(f"need more than {slow} prices, got {len(closes)}")
    f, s = sma(closes, fast), sma(closes, slow)
    signal = [1 if a is not None and b is not None and a > b else 0 for a, b in zip(f, s, strict=True)]
    equity = [capital]
    daily: list[float] = []
    trades: list[Trade] = []
    entry: int | None = None
    for t in range(1, len(closes)):
        held = signal[t - 1]
        r = closes[t] / closes[t - 1] - 1.0 if held else 0.0
        daily.append(r)
        equity.append(equity[-1] * (1.0 + r))
        if signal[t] and not signal[t - 1]:
            entry = t
        elif not signal[t] and signal[t - 1] and entry is not None:
            trades.append(_trade(dates, closes, entry, t))
            entry = None
    if entry is not None:
        trades.append(_trade(dates, closes, entry, len(closes) - 1))
    return Result(dates, equity, signal, trades, measure(equity, daily, trades, signal))


def _trade(dates: list[str], closes: list[float], i: int, j: int) -> Trade:
    return Trade(dates[i], closes[i], dates[j], closes[j], closes[j] / closes[i] - 1.0)


def measure(equity: list[float], daily: list[float], trades: list[Trade],
            position: list[int]) -> dict[str, float | int]:
    """Sharpe (annualised, no risk-free rate), CAGR, max drawdown (negative), trades and friends."""
    years = len(daily) / TRADING_DAYS
    growth = equity[-1] / equity[0]
    sd = statistics.stdev(daily) if len(daily) > 1 else 0.0
    peak, mdd = equity[0], 0.0
    for e in equity:
        peak = max(peak, e)
        mdd = min(mdd, e / peak - 1.0)
    wins = sum(1 for t in trades if t.ret > 0)
    return {
        "sharpe": round(statistics.fmean(daily) / sd * math.sqrt(TRADING_DAYS), 4) if sd > 0 else 0.0,
        "cagr": round(growth ** (1 / years) - 1.0, 6) if years > 0 else 0.0,
        "max_drawdown": round(mdd, 6),
        "total_return": round(growth - 1.0, 6),
        "trades": len(trades),
        "win_rate": round(wins / len(trades), 4) if trades else 0.0,
        "exposure": round(sum(position) / len(position), 4),
        "final_equity": round(equity[-1], 2),
    }


def write_equity_csv(result: Result, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["date", "equity", "position"])
        for d, e, p in zip(result.dates, result.equity, result.position, strict=True):
            w.writerow([d, f"{e:.2f}", p])


def write_trades_csv(trades: list[Trade], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(Trade.__dataclass_fields__), lineterminator="\n")
        w.writeheader()
        for t in trades:
            w.writerow({**asdict(t), "ret": f"{t.ret:.6f}"})
