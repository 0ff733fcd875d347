"""Formula references: shifting a formula when rows are removed, translating a shared formula to its cell."""

from __future__ import annotations

import re
from collections.abc import Callable

from .constants import MAX_COL, MAX_ROW
from .ranges import RowMap, col_index, col_letters

_FORMULA_RE = re.compile(r"""
    "(?:[^"]|"")*"                                          # a string literal
  | \[(?:[^\[\]]|\[[^\[\]]*\])*\]                            # [structured ref] or [external book]
  | (?<![\w.$\]:'!\#])
    (?P<sheet>(?:'(?:[^']|'')+'|[^\W\d][\w.]*)!)?
    (?:
        (?P<c1>\$?[A-Za-z]{1,3})(?P<r1>\$?\d+)(?::(?P<c2>\$?[A-Za-z]{1,3})(?P<r2>\$?\d+))?
      | (?P<rr1>\$?\d+):(?P<rr2>\$?\d+)
      | (?P<cc1>\$?[A-Za-z]{1,3}):(?P<cc2>\$?[A-Za-z]{1,3})
    )
    (?![\w(.!\[:])
""", re.X)


def _sheet_is(sheet: str | None, own: str) -> bool:
    if sheet is None:
        return True
    name = sheet[:-1]
    if name.startswith("'"):
        name = name[1:-1].replace("''", "'")
    return name.casefold() == own.casefold()


class _Part:
    """One row or column part of a reference: ``$`` flag and number."""

    __slots__ = ("absolute", "n")

    def __init__(self, text: str, is_col: bool) -> None:
        self.absolute = text.startswith("$")
        t = text.lstrip("$")
        self.n = col_index(t) if is_col else int(t)


def _fmt_row(absolute: bool, n: int) -> str:
    return ("$" if absolute else "") + str(n)


def _fmt_col(absolute: bool, n: int) -> str:
    return ("$" if absolute else "") + col_letters(n)


def _rewrite_formula(text: str, own: str, fn: Callable[[re.Match[str]], str | None]) -> str:
    """Apply ``fn`` to every reference token; None keeps the token."""
    def sub(m: re.Match[str]) -> str:
        if m.group("c1") is None and m.group("rr1") is None and m.group("cc1") is None:
            return m.group(0)
        out = fn(m)
        return m.group(0) if out is None else out
    return _FORMULA_RE.sub(sub, text)


def _valid_ref(m: re.Match[str]) -> bool:
    try:
        if m.group("c1") is not None:
            cols = [m.group("c1"), m.group("c2")]
            rows = [m.group("r1"), m.group("r2")]
        elif m.group("rr1") is not None:
            cols, rows = [], [m.group("rr1"), m.group("rr2")]
        else:
            cols, rows = [m.group("cc1"), m.group("cc2")], []
        return (all(1 <= col_index(c.lstrip("$")) <= MAX_COL for c in cols if c)
                and all(1 <= int(r.lstrip("$")) <= MAX_ROW for r in rows if r))
    except ValueError:
        return False


def shift_formula(text: str, rows: RowMap, own: str, *, anchor: tuple[int, int] | None = None) -> str:
    """A formula of the master sheet after its rows were removed.

    References to this sheet follow their target (Excel's Delete Row): rows below a removed row
    move up, a range spanning one shrinks, a removed cell becomes ``#REF!``.  With ``anchor``
    (old top row, new top row) — conditional formats and validations, whose formulas are relative
    to their range — relative rows keep their distance to the anchor instead.
    """
    def fn(m: re.Match[str]) -> str | None:
        if not _sheet_is(m.group("sheet"), own) or not _valid_ref(m) or m.group("cc1") is not None:
            return None
        sheet = m.group("sheet") or ""
        if m.group("c1") is not None:
            c1, r1 = m.group("c1"), _Part(m.group("r1"), False)
            c2, r2 = m.group("c2"), (_Part(m.group("r2"), False) if m.group("r2") else None)
        else:
            c1 = c2 = ""
            r1, r2 = _Part(m.group("rr1"), False), _Part(m.group("rr2"), False)

        def move(p: _Part) -> int | None:
            if anchor is not None and not p.absolute:
                n = p.n - anchor[0] + anchor[1]
                return n if 1 <= n <= MAX_ROW else None
            return rows.row(p.n)

        if r2 is None:
            n = move(r1)
            if n is None:
                return sheet + "#REF!"
            return sheet + c1 + _fmt_row(r1.absolute, n)
        if anchor is not None and not (r1.absolute and r2.absolute):
            a, b = move(r1), move(r2)
            if a is None or b is None:
                return sheet + "#REF!"
        else:
            lo, hi = sorted((r1.n, r2.n))
            sp = rows.span(lo, hi)
            if sp is None:
                return sheet + "#REF!"
            a, b = sp if r1.n <= r2.n else (sp[1], sp[0])
        if c1:
            return sheet + c1 + _fmt_row(r1.absolute, a) + ":" + (c2 or "") + _fmt_row(r2.absolute, b)
        return sheet + _fmt_row(r1.absolute, a) + ":" + _fmt_row(r2.absolute, b)

    return _rewrite_formula(text, own, fn)


def translate_formula(text: str, drow: int, dcol: int) -> str:
    """A formula copied ``drow`` rows down and ``dcol`` columns right (a shared formula's cell)."""
    if not drow and not dcol:
        return text

    def fn(m: re.Match[str]) -> str | None:
        if not _valid_ref(m):
            return None
        sheet = m.group("sheet") or ""
        parts: list[str] = []
        if m.group("c1") is not None:
            pairs = [(m.group("c1"), m.group("r1")), (m.group("c2"), m.group("r2"))]
        elif m.group("rr1") is not None:
            pairs = [(None, m.group("rr1")), (None, m.group("rr2"))]
        else:
            pairs = [(m.group("cc1"), None), (m.group("cc2"), None)]
        for c, r in pairs:
            if c is None and r is None:
                continue
            piece = ""
            if c is not None:
                cp = _Part(c, True)
                n = cp.n if cp.absolute else cp.n + dcol
                if not 1 <= n <= MAX_COL:
                    return sheet + "#REF!"
                piece += _fmt_col(cp.absolute, n)
            if r is not None:
                rp = _Part(r, False)
                n = rp.n if rp.absolute else rp.n + drow
                if not 1 <= n <= MAX_ROW:
                    return sheet + "#REF!"
                piece += _fmt_row(rp.absolute, n)
            parts.append(piece)
        return sheet + ":".join(parts)

    return _rewrite_formula(text, "", fn)


