"""Plumbing: the Master Sheet's workbook reader and writer (streaming, fidelity-preserving).

INTERFACE STUB — being implemented.  See the functions below for the contract.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

Value = str | int | float | bool


def normalize_header(text: object) -> str:
    """Header names match case-insensitively, ignoring spaces, ``_`` and ``-`` (SPEC §2)."""
    if text is None:
        return ""
    s = str(text).strip().casefold()
    for ch in (" ", "_", "-", "\t", "\n", "\r", "\u00a0"):
        s = s.replace(ch, "")
    return s


@dataclass(frozen=True)
class Row:
    number: int                      # the Excel row number (1-based)
    values: dict[int, Value]         # 1-based column index -> value; only requested columns, only non-empty cells


@dataclass(frozen=True)
class Table:
    worksheet: str                   # the master worksheet's name
    header_row: int                  # Excel row number of the header row
    headers: dict[int, str]          # 1-based column index -> header text as written
    columns: dict[str, int]          # normalize_header(text) -> column index (first occurrence wins)
    rows: list[Row] = field(default_factory=list)  # data rows that hold at least one value, in sheet order


def read_table(path: str | os.PathLike[str], worksheet: str | None = None,
               columns: list[str] | None = None) -> Table:
    raise NotImplementedError


def append_rows(path: str | os.PathLike[str], worksheet: str | None,
                rows: list[dict[int, Value]]) -> list[int]:
    raise NotImplementedError


def remove_rows(path: str | os.PathLike[str], worksheet: str | None, numbers: list[int]) -> None:
    raise NotImplementedError


def create_workbook(path: str | os.PathLike[str], headers: list[str]) -> None:
    raise NotImplementedError
