#!/usr/bin/env python3
"""Generate examples/data/prices.csv: 500 business days of a seeded random walk.

Run once; the CSV is committed, so the example never depends on this script
or on the network.  The same seed gives the same file on every machine
(``random.Random`` is stable across Python versions for ``random()``).

    python3 examples/tools/make_prices.py [--seed 7] [--days 500] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from datetime import date, timedelta
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "prices.csv"


def business_days(start: date, n: int) -> list[date]:
    """The first ``n`` weekdays from ``start`` (holidays are ignored: it is a toy)."""
    out: list[date] = []
    d = start
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


def random_walk(seed: int, n: int, start: float = 100.0, drift: float = 0.0003, vol: float = 0.012) -> list[float]:
    """Closing prices from a geometric random walk with Box–Muller normals (no numpy needed)."""
    rng = random.Random(seed)
    prices = [start]
    while len(prices) < n:
        u1, u2 = rng.random() or 1e-12, rng.random()
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        prices.append(prices[-1] * math.exp(drift + vol * z))
    return prices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--days", type=int, default=500)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args()
    days = business_days(date(2023, 1, 2), a.days)
    closes = random_walk(a.seed, a.days)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("w", newline="", encoding="ascii") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["date", "close"])
        for d, c in zip(days, closes, strict=True):
            w.writerow([d.isoformat(), f"{c:.4f}"])
    print(f"wrote {a.days} days to {a.out}")


if __name__ == "__main__":
    main()
