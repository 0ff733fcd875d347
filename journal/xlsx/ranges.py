"""Cell references and ranges: column letters, rectangular ranges, and where rows go on removal."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .constants import MAX_COL, MAX_ROW

_COL_CACHE: dict[int, str] = {}


def col_letters(index: int) -> str:
    """1-based column index -> Excel letters (1 -> A, 27 -> AA)."""
    s = _COL_CACHE.get(index)
    if s is None:
        if not 1 <= index <= MAX_COL:
            raise ValueError(f"column {index} is outside 1..{MAX_COL}")
        n, out = index, ""
        while n:
            n, rem = divmod(n - 1, 26)
            out = chr(65 + rem) + out
        _COL_CACHE[index] = s = out
    return s


def col_index(letters: str | bytes) -> int:
    """Excel column letters -> 1-based index."""
    if isinstance(letters, bytes):
        letters = letters.decode("ascii")
    n = 0
    for ch in letters.upper():
        n = n * 26 + ord(ch) - 64
    return n


_REF_RE = re.compile(r"^\$?([A-Za-z]{1,3})\$?(\d+)$")


@dataclass
class Range:
    """A rectangular range ``c1 r1 : c2 r2``; whole rows/columns use the sheet's limits."""

    c1: int
    r1: int
    c2: int
    r2: int

    @classmethod
    def parse(cls, text: str) -> Range:
        text = text.strip()
        a, _, b = text.partition(":")
        b = b or a
        ma, mb = _REF_RE.match(a), _REF_RE.match(b)
        if ma and mb:
            c1, r1 = col_index(ma.group(1)), int(ma.group(2))
            c2, r2 = col_index(mb.group(1)), int(mb.group(2))
        elif re.fullmatch(r"\$?\d+", a) and re.fullmatch(r"\$?\d+", b):
            c1, c2, r1, r2 = 1, MAX_COL, int(a.lstrip("$")), int(b.lstrip("$"))
        elif re.fullmatch(r"\$?[A-Za-z]{1,3}", a) and re.fullmatch(r"\$?[A-Za-z]{1,3}", b):
            c1, c2, r1, r2 = col_index(a.lstrip("$")), col_index(b.lstrip("$")), 1, MAX_ROW
        else:
            raise ValueError(text)
        return cls(min(c1, c2), min(r1, r2), max(c1, c2), max(r1, r2))

    def __str__(self) -> str:
        a = f"{col_letters(self.c1)}{self.r1}"
        b = f"{col_letters(self.c2)}{self.r2}"
        return a if a == b else f"{a}:{b}"


class RowMap:
    """Where each row goes when the rows in ``deleted`` are removed (Excel's Delete Row)."""

    def __init__(self, deleted: Iterable[int]) -> None:
        self.deleted = sorted(set(deleted))
        self.dset = set(self.deleted)
        self.first = self.deleted[0] if self.deleted else MAX_ROW + 1

    def row(self, r: int) -> int | None:
        """The new number of row ``r``; None when it is removed."""
        if r < self.first:
            return r
        if r in self.dset:
            return None
        return r - bisect.bisect_left(self.deleted, r)

    def span(self, r1: int, r2: int) -> tuple[int, int] | None:
        """The rows r1..r2 after removal (a span shrinks); None when all of them are removed."""
        if r2 < self.first:
            return r1, r2
        a = r1
        while a <= r2 and a in self.dset:
            a += 1
        b = r2
        while b >= a and b in self.dset:
            b -= 1
        if a > b:
            return None
        nb = MAX_ROW if r2 == MAX_ROW else self.row(b)
        return self.row(a), nb  # type: ignore[return-value]

    def range(self, text: str) -> str | None:
        rg = Range.parse(text)
        sp = self.span(rg.r1, rg.r2)
        if sp is None:
            return None
        if rg.c1 == 1 and rg.c2 == MAX_COL and re.fullmatch(r"\$?\d+:\$?\d+", text.strip()):
            return f"{sp[0]}:{sp[1]}"
        if rg.r1 == 1 and rg.r2 == MAX_ROW:
            return text
        rg.r1, rg.r2 = sp
        return str(rg)

    def sqref(self, text: str) -> str | None:
        """A space-separated list of ranges after removal; None when nothing is left."""
        out = [r for r in (self.range(t) for t in text.split()) if r]
        return " ".join(out) if out else None

