"""Plumbing: the Master Sheet as sop sees it — strategies, run ids, and their rows.

This layer knows the SPEC's rules (which columns are required, how names
compare, how values are typed) and leaves the bytes of the workbook to
:mod:`journal.xlsx`.

The index cache, ``.sop/cache/sheet-index-<hash>.msgpack`` (one per sheet
path and worksheet), holds the sheet's rows, strategies and run ids for one
version of the file, keyed on its size, mtime, inode and device, with
whether the writer's checks passed on it and where sop's writer laid it out
(:class:`journal.xlsx.Layout`).  Its format, version 2 (:class:`_Packed`):
``sop-sheet-index 2 <l|b>\n`` (``l``/``b`` the machine's byte order), the
header's length (4 bytes, little-endian), the header (a msgpack array,
:class:`_Header`), then the sections: row numbers (unsigned 32-bit, native
order), and for strategies then run ids a blob (``\0``, then each text in
UTF-8 followed by ``\0``) and the offset of each text's leading ``\0``
(unsigned 32-bit, one more for the last ``\0``); a column holding non-ASCII
text is followed (after both columns) by its comparison keys, packed the
same way; when the header's ``ordered`` is set (sop writes it so since
2026-12), the file ends with each column's row indexes (unsigned 32-bit)
sorted by key, which a look-up bisects.  Any other content is not this
version: the sheet is read again.

A commit does not rewrite that file: it writes the rows it appended (and
those of the commits before it since the file was written) to the delta
file beside it, ``sheet-index-<hash>-delta.msgpack`` (:func:`_load_delta`):
``sop-sheet-delta 1\n``, the header's length (4 bytes, little-endian), the
header (a msgpack array, :class:`_DeltaHeader`: the stamp and row count of
the cache file it extends, the sheet versions it describes, each with its
stamp, how many of the delta's rows it holds, whether it is writable and its
layout, and the CRC-32 of the rest), then the rows (:class:`_DeltaRows`:
numbers, strategies, run ids).  It names the version before the commit as
well as the one after, so a workbook that never took the old one's place
(a crash, a file held open) still finds its index.  Once the delta would
hold more than 1/16 of the file's rows or :data:`DELTA_MAX` rows, the commit
writes the cache file anew instead.  A delta that does not extend the cache
file as it is, names no version matching the sheet, or fails its CRC is not
believed.
"""

from __future__ import annotations

import array
import bisect
import functools
import hashlib
import itertools
import math
import operator
import os
import struct
import sys
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from . import fsops, names
from .errors import Refused, SheetDamaged
from .workspace import Workspace

if TYPE_CHECKING:
    from types import ModuleType

    from . import xlsx


def _x() -> ModuleType:
    """The workbook engine, imported on first use: a cached index needs none of it."""
    from . import xlsx
    return xlsx

STRATEGY = "strategy"
RUNID = "runid"
TXID = "txid"
COMMITTED_AT = "committedat"
DEFAULT_HEADERS = ["Strategy", "RunID", "TxID", "CommittedAt"]


@dataclass(frozen=True)
class SheetRow:
    number: int
    strategy: str
    run_id: str
    values: dict[int, Any] = field(default_factory=dict)


class SheetView:
    """The master worksheet's index: who is on which row.

    Held as three parallel lists (row numbers, strategies, run ids) and two
    key maps built on first use, or, when loaded from the cache, as the
    packed cache file itself (:class:`_Packed`): a few look-ups search its
    bytes, and the lists are made only when something asks for them, so a
    cached index of 1M rows loads in milliseconds and ~50 MB.
    :class:`SheetRow` objects are made only when asked for.
    """

    def __init__(self, path: Path, worksheet: str, header_row: int, headers: dict[int, str],
                 columns: dict[str, int], rows: list[SheetRow] | None = None, *,
                 lists: tuple[list[int], list[str], list[str]] | None = None,
                 keys: tuple[list[str], list[str]] | None = None, packed: _Packed | None = None) -> None:
        self.path, self.worksheet, self.header_row = path, worksheet, header_row
        self.headers, self.columns = headers, columns
        self._rows = rows
        self.packed = packed
        if lists is None and packed is None:
            rs = rows or []
            lists = ([r.number for r in rs], [r.strategy for r in rs], [r.run_id for r in rs])
        self._lists = lists
        self._keylists = keys
        self._maps: tuple[dict[str, list[int]], dict[str, list[int]]] | None = None
        self._found: dict[tuple[int, str], list[int]] = {}     # look-ups made (the view never changes)
        self._orders: list[bytes] | None = None                 # its cache file's order sections, once sorted
        self.stamp: list[int] = []                  # the file version this index describes
        self.writable = False                       # this version passed the writer's checks (sop wrote it)
        self.layout: list[Any] | None = None        # where sop's writer laid this version out (xlsx.Layout)
        self.base: tuple[list[int], int] | None = None  # the cache file this index extends: its stamp, its rows

    def _all(self) -> tuple[list[int], list[str], list[str]]:
        if self._lists is None:
            assert self.packed is not None
            self._lists = self.packed.lists()
        return self._lists

    @property
    def numbers(self) -> list[int]:
        return self._all()[0]

    @property
    def strategies(self) -> list[str]:
        return self._all()[1]

    @property
    def run_ids(self) -> list[str]:
        return self._all()[2]

    def __len__(self) -> int:
        return len(self.packed) if self._lists is None and self.packed is not None else len(self.numbers)

    def last_number(self) -> int:
        """The last row holding a value (rows are in sheet order), or the header row."""
        if self._lists is None and self.packed is not None:
            return self.packed.last_number() or self.header_row
        return self.numbers[-1] if self.numbers else self.header_row

    @property
    def rows(self) -> list[SheetRow]:
        if self._rows is None:
            self._rows = [SheetRow(n, s, r) for n, s, r in zip(self.numbers, self.strategies, self.run_ids,
                                                                strict=True)]
        return self._rows

    def keylists(self) -> tuple[list[str], list[str]]:
        """The comparison keys of every row's strategy and run id ("" where empty)."""
        if self._keylists is None and self.packed is not None:
            self._keylists = self.packed.keylists()
        if self._keylists is None:
            key = names.key
            self._keylists = ([key(s) if s else "" for s in self.strategies],
                              [key(r) if r else "" for r in self.run_ids])
        return self._keylists

    def _index(self) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        if self._maps is None:
            maps: list[dict[str, list[int]]] = []
            for keys in self.keylists():
                m: dict[str, list[int]] = {}
                for i, k in enumerate(keys):
                    if k:
                        got = m.get(k)
                        if got is None:
                            m[k] = [i]
                        else:
                            got.append(i)
                maps.append(m)
            self._maps = (maps[0], maps[1])
        return self._maps

    def _row(self, i: int) -> SheetRow:
        if self._rows is not None:
            return self._rows[i]
        if self._lists is None and self.packed is not None:
            return self.packed.row(i)
        return SheetRow(self.numbers[i], self.strategies[i], self.run_ids[i])

    @property
    def by_strategy(self) -> dict[str, list[SheetRow]]:
        return {k: [self._row(i) for i in v] for k, v in self._index()[0].items()}

    @property
    def by_run(self) -> dict[str, list[SheetRow]]:
        return {k: [self._row(i) for i in v] for k, v in self._index()[1].items()}

    def _find(self, which: int, name: str) -> list[SheetRow]:
        k = names.key(name)
        found = self._found.get((which, k))
        if found is None:                       # a command asks for the same name a few times: look once
            found = self._found[(which, k)] = self._look_up(which, k)
        return [self._row(i) for i in found]

    def _look_up(self, which: int, k: str) -> list[int]:
        """The indexes of the rows whose column ``which`` has the comparison key ``k``."""
        if self._maps is not None:
            return self._maps[which].get(k, [])
        pk = self.packed
        if pk is not None and (pk.ordered or self._keylists is None):   # search the packed bytes
            return pk.find(which, k)
        keys = self.keylists()[which]          # a few look-ups: a scan in C beats building a map
        out: list[int] = []
        i = -1
        while True:
            try:
                i = keys.index(k, i + 1)
            except ValueError:
                return out
            out.append(i)

    def present(self, which: int, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` (comparison keys) are on the sheet, as strategies (0) or run ids (1).

        A packed index is split a megabyte at a time, so the sheet's keys never exist as one set
        (at 1M rows that set and its strings are ~200 MB; a ledger's keys are few by comparison)."""
        want = set(keys)
        want.discard("")                    # an empty cell is no key
        if not want:
            return want
        pk = self.packed
        if self._keylists is not None or pk is None:
            return want.intersection(self.keylists()[which])
        if pk.ordered and len(want) <= _PRESENT_LOOKUPS:    # a few keys: bisect the order, ~20 reads each
            return {k for k in want if pk.find(which, k)}
        found_extra = want.intersection(pk.extra_keys(which))
        blob, _offs = pk._keyed(which)
        wanted = {k.encode() for k in want}
        found: set[bytes] = set()
        step, at, n = _PRESENT_STEP, 1, len(blob)
        while at < n:
            end = blob.find(b"\0", min(at + step, n - 1))
            found |= wanted.intersection(blob[at:end].split(b"\0"))
            at = end + 1
        return {k.decode() for k in found} | found_extra

    def strategy_rows(self, strategy: str) -> list[SheetRow]:
        return self._find(0, strategy)

    def run_rows(self, run_id: str) -> list[SheetRow]:
        return self._find(1, run_id)


_PRESENT_STEP = 1 << 20         # present(): the packed keys split this many bytes at a time...
_PRESENT_LOOKUPS = 2000         # ...unless this few keys are asked of an ordered index


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise SheetDamaged(f"Master Sheet not found: {path}",
                           detail="Action: move it back or restore it from a backup, or set [sheet] path in "
                                  ".sop/config.toml; 'sop-status' says whether the journal holds committed rows "
                                  "('sop init --from-journal' rebuilds it from them).")
    if path.is_dir():
        raise SheetDamaged(f"Master Sheet is a folder, not a workbook: {path}")
    if not path.is_file():
        raise SheetDamaged(f"Master Sheet is not a regular file (a FIFO or a device), not a workbook: {path}",
                           detail="Action: put the workbook back in its place; sop never opens such a file.")


class _Header(msgspec.Struct, array_like=True):
    """The cached index's header; the columns follow it packed (see :class:`_Packed`)."""

    stamp: list[int]
    worksheet: str
    header_row: int
    headers: dict[int, str]
    columns: dict[str, int]
    count: int                      # rows
    sizes: list[int]                # byte length of each section after the header, in order
    ascii: list[bool]               # per column (strategies, run ids): every text is ASCII (keys are .lower())
    writable: bool = False          # the writer's checks passed on this version (it wrote it, or checked it)
    layout: list[Any] | None = None  # xlsx.Layout.to_list() of this version, when sop's writer laid it out
    ordered: bool = False           # each column's rows sorted by key follow the other sections


_MAGIC = b"sop-sheet-index 2 " + sys.byteorder.encode()[:1] + b"\n"   # native byte order: a local cache
_encode_header = msgspec.msgpack.Encoder().encode
_decode_header = msgspec.msgpack.Decoder(_Header).decode
_U32 = struct.Struct("=I")           # the sections' integers: unsigned 32-bit, native order (array "I")
_U32_PAIR = struct.Struct("=II")


class _File:
    """A cache file held open and read a range at a time (``os.pread``): a look-up reads a few hundred bytes.

    Not where a file held open may not be replaced (Windows, and network shares, where another
    host may hold it): there the file is read whole (:func:`_open_cache`).  sop only ever
    replaces the file, never writes into it; a file cut short underneath (by someone else) is
    an OSError, not a wrong answer.
    """

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | fsops.O_BINARY)
        weakref.finalize(self, os.close, fd)
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def read(self, at: int, n: int) -> bytes:
        if sys.platform == "win32":         # never made there (see _open_cache)
            raise OSError("no pread on Windows")
        b = os.pread(self.fd, n, at) if n > 0 else b""
        if len(b) != n:
            raise OSError(f"the sheet index cache changed while it was read (wanted {n} bytes at {at}, got {len(b)})")
        return b


_HOLD_OPEN = sys.platform != "win32"


def _open_cache(ws: Workspace, path: Path) -> bytes | _File:
    """The cache file at ``path``: held open on a local POSIX file system, else read whole."""
    from . import fstype

    if _HOLD_OPEN and fstype.network_mount(ws.sop_dir) is None:     # known already: the store's check asked
        return _File(path)
    return path.read_bytes()


class _Packed:
    """A sheet's index as the cache file holds it, searched in place.

    The file: ``_MAGIC``, the header's length (4 bytes, little-endian), the header
    (msgpack, :class:`_Header`), then the sections ``numbers`` (one unsigned 32-bit
    integer per row, native order) and, for strategies and then run ids, a ``blob``
    (``\\0``, then each text in UTF-8 followed by ``\\0``) and its ``offsets`` (one
    unsigned 32-bit integer per row, where its text's leading ``\\0`` is, and one more
    for the final ``\\0``); for a column holding non-ASCII text, its keys' blob and
    offsets follow the same way (an ASCII text's key is its ``.lower()``, so an ASCII
    column's keys are its blob lowered).  Texts hold no ``\\0`` (XML cannot carry it).
    When the header says ``ordered``, two sections end the file: for strategies then run
    ids, every row's index (unsigned 32-bit, native order) sorted by the row's key as
    UTF-8 bytes (ties by index), so that a look-up bisects them and reads ~20 keys.

    The file is read a range at a time (:class:`_File`) until something needs all of
    it (``lists``, ``keylists``, ``sections``).  ``extra`` holds the rows after the
    file's (those of a matching delta file): they count, are found and listed as
    rows ``count``, ``count + 1``…
    """

    def __init__(self, hdr: _Header, src: bytes | _File, start: int) -> None:
        self.hdr = hdr
        self.src = src
        self._raw: bytes | None = src if isinstance(src, bytes) else None
        size = len(src) if isinstance(src, bytes) else src.size
        at = start
        self.spans: list[tuple[int, int]] = []      # where each section is in the file
        for n_bytes in hdr.sizes:
            if n_bytes < 0:
                raise ValueError("sections do not match the header")
            self.spans.append((at, at + n_bytes))
            at += n_bytes
        self.ordered = hdr.ordered
        self.order_at = 5 + 2 * (not hdr.ascii[0]) + 2 * (not hdr.ascii[1])     # the first order section
        if at != size or len(self.spans) != self.order_at + 2 * self.ordered:
            raise ValueError("sections do not match the header")
        n = hdr.count
        key_at = 5
        self.key_parts: list[int | None] = [None, None]     # the section of a column's own keys
        for c in (0, 1):
            if not hdr.ascii[c]:
                self.key_parts[c] = key_at
                key_at += 2
        sizes = hdr.sizes
        offsets = [2, 4, *(k + 1 for k in self.key_parts if k is not None)]
        if (sizes[0] != 4 * n or any(sizes[k] != 4 * (n + 1) for k in offsets)
                or (self.ordered and any(sizes[self.order_at + c] != 4 * n for c in (0, 1)))):
            raise ValueError("sections do not match the count")
        self.extra: tuple[list[int], list[str], list[str]] = ([], [], [])
        self._extra_keys: list[list[str] | None] = [None, None]
        self._parts: list[memoryview] | None = None
        self._lowered: list[bytes | None] = [None, None]

    # -- a few bytes at a time

    def _get(self, at: int, n: int) -> bytes:
        if self._raw is not None and at + n <= len(self._raw):
            return self._raw[at:at + n]
        assert isinstance(self.src, _File)
        return self.src.read(at, n)

    def _u32(self, at: int) -> int:
        return int(_U32.unpack(self._get(at, 4))[0])

    def _text_bytes(self, sec: int, i: int) -> bytes:
        """Text ``i`` of the blob in section ``sec`` (its offsets are section ``sec + 1``), in UTF-8."""
        a, b = _U32_PAIR.unpack(self._get(self.spans[sec + 1][0] + 4 * i, 8))
        return self._get(self.spans[sec][0] + a + 1, b - a - 1)

    def _key_bytes(self, c: int, i: int) -> bytes:
        k = self.key_parts[c]
        return self._text_bytes(k, i) if k is not None else self._text_bytes(1 + 2 * c, i).lower()

    def __len__(self) -> int:
        return self.hdr.count + len(self.extra[0])

    def last_number(self) -> int:
        if self.extra[0]:
            return self.extra[0][-1]
        n = self.hdr.count
        return self._u32(self.spans[0][0] + 4 * (n - 1)) if n else 0

    def text(self, c: int, i: int) -> str:
        n = self.hdr.count
        return (self.extra[1], self.extra[2])[c][i - n] if i >= n else self._text_bytes(1 + 2 * c, i).decode()

    def row(self, i: int) -> SheetRow:
        n = self.hdr.count
        if i >= n:
            j = i - n
            return SheetRow(self.extra[0][j], self.extra[1][j], self.extra[2][j])
        return SheetRow(self._u32(self.spans[0][0] + 4 * i), self.text(0, i), self.text(1, i))

    def extra_keys(self, c: int) -> list[str]:
        got = self._extra_keys[c]
        if got is None:
            got = self._extra_keys[c] = _keys((self.extra[1], self.extra[2])[c])
        return got

    def find(self, c: int, key: str) -> list[int]:
        """The rows (indexes) whose column ``c`` (0 strategies, 1 run ids) has the comparison key ``key``."""
        out = self._bisect(c, key.encode()) if self.ordered else self._scan(c, key)
        if self.extra[0]:
            keys, n = self.extra_keys(c), self.hdr.count
            j = -1
            while True:
                try:
                    j = keys.index(key, j + 1)
                except ValueError:
                    break
                out.append(n + j)
        return out

    def _bisect(self, c: int, want: bytes) -> list[int]:
        s, e = self.spans[self.order_at + c]
        order = _Order(self, s, (e - s) // 4)
        lo = bisect.bisect_left(order, want, key=lambda i: self._key_bytes(c, i))
        out = []
        while lo < len(order):
            i = order[lo]
            if self._key_bytes(c, i) != want:
                break
            out.append(i)
            lo += 1
        return sorted(out)

    def merged_order(self, c: int, keys: list[str]) -> bytes:
        """Column ``c``'s order section once rows with ``keys`` follow the file's (and its ``extra``'s)
        rows: the file's order with each new row put in its place, as a fresh sort would."""
        s, e = self.spans[self.order_at + c]
        old = array.array("I")
        old.frombytes(self._get(s, e - s))
        start = self.hdr.count
        out = array.array("I")
        prev = 0
        for j in sorted(range(len(keys)), key=keys.__getitem__):
            at = bisect.bisect_right(old, keys[j].encode(), lo=prev, key=lambda i: self._key_bytes(c, i))
            out.extend(old[prev:at])
            out.append(start + j)
            prev = at
        out.extend(old[prev:])
        return out.tobytes()

    # -- the whole file

    @property
    def raw(self) -> bytes:
        """The file up to its order sections (which the lists never need: 8 MB at 1M rows)."""
        if self._raw is None:
            assert isinstance(self.src, _File)
            self._raw = self.src.read(0, self.spans[self.order_at - 1][1])
        return self._raw

    @property
    def parts(self) -> list[memoryview]:
        """The file's sections but the order sections, as ranges of it (nothing copied)."""
        if self._parts is None:
            mv = memoryview(self.raw)
            self._parts = [mv[s:e] for s, e in self.spans[:self.order_at]]
        return self._parts

    def _keyed(self, c: int) -> tuple[bytes, memoryview]:
        """Column ``c``'s keys as (blob, offsets): its own key sections, or an ASCII blob lowered once."""
        blob, offs, to_lower = self.key_blob(c)
        if not to_lower:
            return bytes(blob), offs
        low = self._lowered[c]
        if low is None:
            low = self._lowered[c] = bytes(blob).lower()
        return low, offs

    def key_blob(self, c: int) -> tuple[memoryview, memoryview, bool]:
        """Column ``c``'s keys as (blob, offsets, whether they are its texts still to be lowered), copied
        from nothing (an ASCII column's keys are its texts lowered)."""
        k = self.key_parts[c]
        if k is not None:
            return self.parts[k], self.parts[k + 1].cast("I"), False
        return self.parts[1 + 2 * c], self.parts[2 + 2 * c].cast("I"), True

    def _scan(self, c: int, key: str) -> list[int]:
        """``find`` in a file without order sections (an older sop's): search the keys' blob."""
        blob, offs = self._keyed(c)
        want = b"\0" + key.encode() + b"\0"
        out = []
        p = blob.find(want)
        while p >= 0:
            out.append(bisect.bisect_left(offs, p))
            p = blob.find(want, p + 1)
        return out

    def _texts(self, blob: bytes | memoryview) -> list[str]:
        return bytes(blob[1:-1]).decode().split("\0") if self.hdr.count else []

    def lists(self) -> tuple[list[int], list[str], list[str]]:
        x = self.extra
        return (self.parts[0].cast("I").tolist() + x[0], self._texts(self.parts[1]) + x[1],
                self._texts(self.parts[3]) + x[2])

    def keylists(self) -> tuple[list[str], list[str]]:
        return (self._texts(self._keyed(0)[0]) + self.extra_keys(0),
                self._texts(self._keyed(1)[0]) + self.extra_keys(1))

    def sections(self) -> tuple[list[Section], list[bool]]:
        """The packed sections of these rows (the file's and ``extra``), but the order sections."""
        secs: list[Section] = [[p] for p in self.parts]
        ascii_ = list(self.hdr.ascii)
        if not self.extra[0]:
            return secs, ascii_
        grown = _grown(secs, ascii_, *self.extra)
        if grown is not None:
            return grown, ascii_
        nums, strategies, run_ids = self.lists()                # a column's first non-ASCII text: pack anew
        return _sections(SheetView(Path(), "", 0, {}, {}, lists=(nums, strategies, run_ids)))

    @staticmethod
    def load(src: bytes | _File) -> _Packed:
        at = len(_MAGIC)
        first = src[:at + 4] if isinstance(src, bytes) else src.read(0, at + 4)
        if len(first) != at + 4 or not first.startswith(_MAGIC):
            raise ValueError("not a sheet index of this version")
        n = int.from_bytes(first[at:], "little")
        hdr = _decode_header(src[at + 4:at + 4 + n] if isinstance(src, bytes) else src.read(at + 4, n))
        return _Packed(hdr, src, at + 4 + n)


class _Order:
    """An order section as a sequence of row indexes, read four bytes at a time (for :func:`bisect.bisect_left`)."""

    def __init__(self, pk: _Packed, at: int, n: int) -> None:
        self.pk, self.at, self.n = pk, at, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> int:
        return self.pk._u32(self.at + 4 * j)


def _keys(texts: list[str]) -> list[str]:
    """The comparison keys of a column's texts ("" where empty)."""
    joined = "\0".join(texts)
    if joined.isascii():
        return joined.lower().split("\0") if texts else []
    key = names.key
    return [key(t) if t else "" for t in texts]


ORDER_PIECE = 1 << 16      # keys made and tags taken this many at a time when an order section is sorted


def _sorted_order(pieces: Callable[[], Iterator[list[bytes]]], n: int) -> bytes:
    """An order section: the indexes of ``n`` keys, sorted by key, ties by index.

    ``pieces()`` gives the keys as UTF-8 bytes (whose order is str order), a piece of the
    column at a time.  Keys already in order (a column of names or run ids made in
    sequence) are found so in one pass, and their order is the rows' own.  Otherwise each
    key is tagged with its index, big-endian, after a \0 (no key holds one, and it sorts
    before every other byte, so a key still sorts before the longer keys it begins): one
    list of bytes sorted without a key function.  At 1M rows that holds ~60 MB, where
    sorting the indexes by a list of str keys held ~120 MB (the keys, an int per row, and
    the sort's own key list) on top of the index being written.
    """
    last: bytes | None = None
    count = 0
    in_order = True
    for keys in pieces():
        count += len(keys)
        if in_order and keys:
            in_order = (last is None or last <= keys[0]) and all(map(operator.le, keys, keys[1:]))
            last = keys[-1]
    if count != n:
        raise ValueError(f"an order section of {n} rows was given {count} keys")
    if in_order:
        return array.array("I", range(n)).tobytes()
    tags = array.array("I", range(n))
    if sys.byteorder == "little":
        tags.byteswap()
    raw = tags.tobytes()
    del tags
    tagged: list[bytes] = []
    at = 0
    for keys in pieces():
        m = len(keys)
        cut = map(slice, range(4 * at, 4 * (at + m), 4), range(4 * at + 4, 4 * (at + m) + 4, 4))
        tagged += map(b"\0".join, zip(keys, map(raw.__getitem__, cut), strict=True))
        at += m
    tagged.sort()
    out = array.array("I")
    last4 = operator.itemgetter(slice(-4, None))
    for i in range(0, n, ORDER_PIECE):
        out.frombytes(b"".join(map(last4, tagged[i:i + ORDER_PIECE])))
    if sys.byteorder == "little":
        out.byteswap()
    return out.tobytes()


Section = list[bytes | memoryview]     # one section of the cache file, in pieces written one after another


def _column(texts: list[str]) -> tuple[bool, list[Section]]:
    """A column's sections (blob, offsets, and for non-ASCII text its keys' blob and offsets)."""
    blob = ("\0" + "".join(t + "\0" for t in texts)).encode()
    ascii_ = blob.isascii()
    out: list[Section] = [[blob], [_offsets(texts, 0, ascii_)]]
    if not ascii_:
        keys = _keys(texts)
        out += [[("\0" + "".join(k + "\0" for k in keys)).encode()], [_offsets(keys)]]
    return ascii_, out


def _offsets(texts: list[str], start: int = 0, ascii_: bool = False) -> bytes:
    """Where each text's leading \0 lies in its blob, from ``start``, and one more for the blob's last \0."""
    lens = map(len, texts) if ascii_ else map(len, map(str.encode, texts))   # ASCII: characters are bytes
    return array.array("I", itertools.accumulate(map((1).__add__, lens), initial=start)).tobytes()


class _Packer:
    """An index packed as its rows arrive, a chunk of the sheet at a time (:func:`_read`): the rows of a
    1M-row sheet never exist as lists of texts, only as the sections :class:`_Packed` searches."""

    def __init__(self) -> None:
        self.nums = array.array("I")
        self.blobs = [bytearray(b"\0"), bytearray(b"\0")]
        self.offs = [array.array("I", [0]), array.array("I", [0])]
        self.keys: list[tuple[bytearray, array.array[int]] | None] = [None, None]   # non-ASCII columns' keys

    def add(self, numbers: list[int], strategies: list[str], run_ids: list[str]) -> None:
        self.nums.extend(numbers)
        for c, texts in enumerate((strategies, run_ids)):
            ascii_ = _append_texts(self.blobs[c], self.offs[c], texts)
            kp = self.keys[c]
            if kp is None and not ascii_:          # the column's first non-ASCII text: the keys so far are
                kp = self.keys[c] = (bytearray(), array.array("I"))
                n = len(self.offs[c]) - len(texts)  # the texts before this batch were ASCII: their keys
                end = self.offs[c][n - 1]           # are their text lowered, at the same offsets
                kp[0].extend(self.blobs[c][:end + 1].lower())
                kp[1].extend(self.offs[c][:n])
            if kp is not None:
                _append_texts(kp[0], kp[1], _keys(texts))

    def packed(self) -> _Packed:
        sections: list[bytes | bytearray | array.array[int]] = [self.nums, self.blobs[0], self.offs[0],
                                                                 self.blobs[1], self.offs[1]]
        for kp in self.keys:
            if kp is not None:
                sections += [kp[0], kp[1]]
        raw = b"".join(sections)
        hdr = _Header([], "", 0, {}, {}, len(self.nums), [memoryview(x).nbytes for x in sections],
                      [k is None for k in self.keys])
        return _Packed(hdr, raw, 0)


def _append_texts(blob: bytearray, offs: array.array[int], texts: list[str]) -> bool:
    """Add texts to a blob and its offsets; whether they were all ASCII."""
    if not texts:
        return True
    data = ("\0".join(texts) + "\0").encode()
    blob += data
    ascii_ = data.isascii()
    offs.frombytes(_offsets(texts, offs[-1], ascii_)[4:])      # the first is offs[-1] itself
    return ascii_


def _write_index(ws: Workspace, view: SheetView, sections: list[Section], count: int, ascii_: list[bool],
                 orders: list[bytes] | None = None) -> bool:
    """Write the cache file of ``view`` (its stamp, flags and layout) with these sections; whether it was written."""
    sections = sections + [[o] for o in orders or []]
    hdr = _encode_header(_Header(view.stamp, view.worksheet, view.header_row, view.headers, view.columns, count,
                                 [sum(len(x) for x in sec) for sec in sections], ascii_, view.writable,
                                 view.layout, orders is not None))

    def write(f: BinaryIO) -> None:
        f.write(_MAGIC + len(hdr).to_bytes(4, "little") + hdr)
        for sec in sections:
            for x in sec:
                f.write(x)
    return _cache_write(ws, _cache_path(ws, view.path), write)


def _cache_write(ws: Workspace, target: Path, content: bytes | Callable[[BinaryIO], None]) -> bool:
    try:
        if not ws.cache_dir.is_dir():
            fsops.mkdir(ws.cache_dir, parents=True, exist_ok=True)
        fsops.atomic_write(target, content)
        return True
    except OSError:
        return False                               # a cache that cannot be written costs only time


def _sections(view: SheetView) -> tuple[list[Section], list[bool]]:
    """The packed sections of a view (as loaded, or packed from its lists)."""
    pk = view.packed
    if pk is not None:                      # the lists, if decoded, are the packed sections' own texts
        return pk.sections()
    a0, s0 = _column(view.strategies)
    a1, s1 = _column(view.run_ids)
    return [[array.array("I", view.numbers).tobytes()], *s0[:2], *s1[:2], *s0[2:], *s1[2:]], [a0, a1]


def _extended(old: SheetView, numbers: list[int], strategies: list[str],
              run_ids: list[str]) -> tuple[list[Section], list[bool]]:
    """The sections of ``old`` with rows added: each old section as it is, followed by the new rows' part
    (no old row is decoded or keyed again).  A column that gains its first non-ASCII text is packed anew."""
    secs, ascii_ = _sections(old)
    grown = _grown(secs, ascii_, numbers, strategies, run_ids)
    if grown is not None:
        return grown, ascii_
    full = SheetView(old.path, old.worksheet, old.header_row, old.headers, old.columns,
                     lists=(old.numbers + numbers, old.strategies + strategies, old.run_ids + run_ids))
    return _sections(full)


def _grown(secs: list[Section], ascii_: list[bool], numbers: list[int], strategies: list[str],
           run_ids: list[str]) -> list[Section] | None:
    """``secs`` with rows added after theirs; None when an ASCII column would gain non-ASCII text."""
    cols = (strategies, run_ids)
    if any(a and not "".join(t).isascii() for a, t in zip(ascii_, cols, strict=True)):
        return None
    secs = [list(sec) for sec in secs]
    secs[0].append(array.array("I", numbers).tobytes())
    pairs = [(1, strategies), (3, run_ids)]                     # (blob section, its texts)
    at = 5
    for c, texts in enumerate(cols):
        if not ascii_[c]:
            pairs.append((at, _keys(texts)))
            at += 2
    for i, texts in pairs:
        end = sum(len(x) for x in secs[i]) - 1              # the blob's final \0: the new texts follow it
        secs[i].append("".join(t + "\0" for t in texts).encode())
        secs[i + 1].append(_offsets(texts, end)[4:])
    return secs


def _key_pieces(view: SheetView, c: int, more: list[str]) -> Iterator[list[bytes]]:
    """Column ``c``'s comparison keys as UTF-8 bytes, then ``more``'s, :data:`ORDER_PIECE` at a time:
    a first read of a 1M-row sheet never holds a column's keys as one list of str (nor both columns'),
    only the pieces :func:`_sorted_order` tags."""
    pk = view.packed
    if view._keylists is not None or pk is None:
        keys = view.keylists()[c] + more
    else:
        blob, offs, low = pk.key_blob(c)
        n = pk.hdr.count
        for a in range(0, n, ORDER_PIECE):
            piece = bytes(blob[offs[a] + 1:offs[min(a + ORDER_PIECE, n)]])
            yield (piece.lower() if low else piece).split(b"\0")
        keys = pk.extra_keys(c) + more
    for a in range(0, len(keys), ORDER_PIECE):
        yield [k.encode() for k in keys[a:a + ORDER_PIECE]]


def _orders_for(view: SheetView, more: tuple[list[str], list[str]] = ([], [])) -> list[bytes]:
    """The order sections of ``view``'s rows followed by rows whose keys are ``more`` (per column)."""
    pk = view.packed
    if pk is not None and pk.ordered:                       # merge the new rows into the file's order
        return [pk.merged_order(c, pk.extra_keys(c) + more[c]) for c in (0, 1)]
    grows = bool(more[0] or more[1])
    if grows or view._orders is None:
        orders = [_sorted_order(functools.partial(_key_pieces, view, c, more[c]), len(view) + len(more[c]))
                  for c in (0, 1)]
        if grows:
            return orders
        view._orders = orders                               # a first read saves its index twice (the gate)
    return view._orders


# --------------------------------------------------------------------------------------------
# The delta file: the rows appended since the cache file was written

DELTA_RATIO = 16        # a delta holds at most 1/16 of the cache file's rows...
DELTA_MAX = 4096        # ...and at most this many (a commit rewrites it whole); then the cache file is rewritten


def _delta_limit(base_count: int) -> int:
    return min(base_count // DELTA_RATIO, DELTA_MAX)


class _Version(msgspec.Struct, array_like=True):
    """One version of the sheet that a delta file describes: the cache file's rows and the delta's first ``count``."""

    stamp: list[int]
    count: int
    writable: bool
    layout: list[Any] | None


class _DeltaHeader(msgspec.Struct, array_like=True):
    base: list[int]             # the stamp in the header of the cache file it extends...
    base_count: int             # ...and that file's rows
    versions: list[_Version]    # oldest first
    crc: int                    # CRC-32 of the rows' bytes (everything after the header)


class _DeltaRows(msgspec.Struct, array_like=True):
    numbers: list[int]
    strategies: list[str]
    run_ids: list[str]


_DELTA_MAGIC = b"sop-sheet-delta 1\n"
_encode_delta = msgspec.msgpack.Encoder().encode
_decode_delta_header = msgspec.msgpack.Decoder(_DeltaHeader).decode
_decode_delta_rows = msgspec.msgpack.Decoder(_DeltaRows).decode


def _delta_path(ws: Workspace, path: Path) -> Path:
    c = _cache_path(ws, path)
    return c.with_name(c.stem + "-delta.msgpack")


def _encode_delta_file(base: tuple[list[int], int], versions: list[_Version],
                       rows: tuple[list[int], list[str], list[str]]) -> bytes:
    body = _encode_delta(_DeltaRows(*rows))
    hdr = _encode_delta(_DeltaHeader(base[0], base[1], versions, zlib.crc32(body)))
    return _DELTA_MAGIC + len(hdr).to_bytes(4, "little") + hdr + body


def _load_delta(data: bytes, pk: _Packed, stamp: list[int]) -> tuple[_Version, _DeltaRows] | None:
    """The version ``stamp`` of a delta file that extends ``pk``'s cache file, and its rows; None if none matches."""
    at = len(_DELTA_MAGIC)
    if not data.startswith(_DELTA_MAGIC) or len(data) < at + 4:
        return None
    n = int.from_bytes(data[at:at + 4], "little")
    try:
        h = _decode_delta_header(data[at + 4:at + 4 + n])
        got = [v for v in h.versions if v.stamp == stamp]
        if not got or h.base != pk.hdr.stamp or h.base_count != pk.hdr.count:
            return None
        body = data[at + 4 + n:]
        if zlib.crc32(body) != h.crc:
            return None
        rows = _decode_delta_rows(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    v = got[-1]
    nums = rows.numbers
    if not (len(nums) == len(rows.strategies) == len(rows.run_ids) and 0 <= v.count <= len(nums)):
        return None
    nums, prev = nums[:v.count], pk.last_number()
    if any(not prev < x < 1 << 32 for x in nums[:1]) or any(a >= b for a, b in itertools.pairwise(nums)):
        return None                 # row numbers after the file's, in order: anything else is not sop's
    return v, _DeltaRows(nums, rows.strategies[:v.count], rows.run_ids[:v.count])


def _rows_after(view: SheetView, k: int) -> tuple[list[int], list[str], list[str]]:
    """``view``'s rows from index ``k`` on."""
    pk = view.packed
    if view._lists is None and pk is not None and k >= pk.hdr.count:
        j = k - pk.hdr.count
        return pk.extra[0][j:], pk.extra[1][j:], pk.extra[2][j:]
    return view.numbers[k:], view.strategies[k:], view.run_ids[k:]


_U64 = (1 << 64) - 1

_EOCD = b"PK\x05\x06"                 # end of central directory record
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_TAIL = 22 + 0xFFFF                    # the end record and the longest zip comment


def fingerprint(path: Path, expect: os.stat_result | None = None) -> str:
    """A workbook version's identity by content: SHA-256 (hex) of its zip central directory and end record.

    The central directory holds every member's name, CRC-32, sizes and offset, so two files with
    the same directory hold the same bytes (short of a CRC collision in every changed member),
    whatever their inode or mtime, and any save changes it.  It is read from the end of the file:
    a few hundred bytes for a workbook, however many rows it has.  A file whose end is not a zip
    end record is fingerprinted by its size and last 64 KiB (a reader refuses it anyway).

    ``expect``: the stat of the file just written (:func:`journal.fsops.atomic_write`'s hook);
    when the file at ``path`` is not that one (another program replaced it meanwhile), "" (not
    known) is returned, never the fingerprint of a file sop did not write; so is it for a file
    that cannot be read.
    """
    try:
        return _fingerprint(path, expect)
    except OSError:
        return ""


def _fingerprint(path: Path, expect: os.stat_result | None) -> str:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if expect is not None and (st.st_size, st.st_mtime_ns, st.st_ino) != (
                expect.st_size, expect.st_mtime_ns, expect.st_ino):
            return ""
        size = st.st_size
        start = max(0, size - _TAIL)
        f.seek(start)
        tail = f.read()
        at = tail.rfind(_EOCD)
        while at >= 0 and at + 22 + int.from_bytes(tail[at + 20:at + 22], "little") != len(tail):
            at = tail.rfind(_EOCD, 0, at)          # the signature's bytes inside the comment: look further back
        h = hashlib.sha256()
        if at < 0:
            h.update(b"no-zip-end %d " % size)
            h.update(tail[-65536:])
            return h.hexdigest()
        end = tail[at:]
        cd_size = int.from_bytes(end[12:16], "little")
        cd_off = int.from_bytes(end[16:20], "little")
        loc = at - 20
        if (cd_size == 0xFFFFFFFF or cd_off == 0xFFFFFFFF) and loc >= 0 and tail[loc:loc + 4] == _EOCD64_LOCATOR:
            f.seek(int.from_bytes(tail[loc + 8:loc + 16], "little"))
            rec = f.read(56)
            if rec[:4] == _EOCD64:
                cd_size = int.from_bytes(rec[40:48], "little")
                cd_off = int.from_bytes(rec[48:56], "little")
                end = rec + end
        if 0 <= cd_off and cd_off + cd_size <= start + at:
            if cd_off >= start:
                cd = tail[cd_off - start:cd_off - start + cd_size]
            else:
                f.seek(cd_off)
                cd = f.read(cd_size)
            h.update(cd)
        h.update(end)
        return h.hexdigest()


@dataclass(frozen=True)
class Written:
    """What a write of the sheet did: the appended rows' numbers, and the new file's fingerprint ("" unknown)."""

    numbers: list[int]
    fp: str


def _stamp(path: Path, st: os.stat_result | None = None) -> list[int]:
    """What identifies one version of the sheet: a save by anyone makes a new inode or mtime.

    The file id is kept whole as two 64-bit halves: on ReFS and Dev Drives
    it is 128 bits, more than a msgpack integer holds.
    """
    st = st or os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino & _U64, st.st_ino >> 64, st.st_dev & _U64]


# The index the current command loaded: (its Workspace object, sheet path, worksheet, view).  Keyed on
# the Workspace object, which each command opens anew, so one command loads the index once and the
# next one (in this process or another) looks at the cache file again.
_loaded: list[tuple[Workspace, str, str, SheetView]] = []


def _recall(ws: Workspace, path: Path, stamp: list[int]) -> SheetView | None:
    for w, p, sheet_name, view in _loaded:
        if w is ws and p == os.fspath(path) and sheet_name == ws.config.worksheet and view.stamp == stamp:
            return view
    return None


def _remember(ws: Workspace, view: SheetView) -> None:
    _loaded[:] = [(ws, os.fspath(view.path), ws.config.worksheet, view)]


def _cache_path(ws: Workspace, path: Path) -> Path:
    h = hashlib.sha256(f"{path}\0{ws.config.worksheet}".encode()).hexdigest()[:16]
    return ws.cache_dir / f"sheet-index-{h}.msgpack"


def read(ws: Workspace, *, all_columns: bool = False, path: Path | None = None, cache: bool = True,
         writing: bool = False) -> SheetView:
    """Read the Master Sheet's index; refuse (exit 5) one without Strategy and RunID columns.

    The index (strategies and run ids with their rows) is cached in
    ``.sop/cache/`` under the sheet's size, mtime, inode and device:
    any save (by Excel or by sop's atomic replace) changes them, and an
    unchanged sheet is not parsed again, so ``sop-begin`` starts fast.

    ``writing``: the caller will check the sheet for an append (:func:`check_writable`) and
    write it; a sheet that must be parsed is then also scanned for the append in the same
    pass, its XML check started beside it (``xlsx.read_table``'s ``prescan``).
    """
    path = path or ws.sheet
    _check_readable(path)
    if all_columns or not cache:
        return _read(ws, path, all_columns)
    stamp = _stamp(path)
    got = _recall(ws, path, stamp)
    if got is None:
        got = _cached(ws, path, stamp)
    if got is not None:
        return got                                 # loaded once per command while the sheet is unchanged
    view = _read(ws, path, False, writing)
    if _stamp(path) == stamp:                      # not saved while we read it
        view.stamp = stamp
        _save_index(ws, view)
    return view


def _cached(ws: Workspace, path: Path, stamp: list[int]) -> SheetView | None:
    """The index of version ``stamp`` from the cache: its file, or its file and the delta file; None if neither."""
    try:
        pk = _Packed.load(_open_cache(ws, _cache_path(ws, path)))
        h = pk.hdr
        writable, layout = h.writable, h.layout
        if h.stamp != stamp:
            got = _load_delta(_delta_path(ws, path).read_bytes(), pk, stamp)
            if got is None:
                return None
            v, rows = got
            pk.extra = (rows.numbers, rows.strategies, rows.run_ids)
            writable, layout = v.writable, v.layout
    except (OSError, ValueError, TypeError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    view = SheetView(path, h.worksheet, h.header_row, h.headers, h.columns, packed=pk)
    view.stamp = stamp
    view.writable = writable
    view.layout = layout
    view.base = (h.stamp, h.count)
    _remember(ws, view)
    return view


def _save_index(ws: Workspace, view: SheetView) -> None:
    secs, ascii_ = _sections(view)
    if _write_index(ws, view, secs, len(view), ascii_, _orders_for(view)):
        view.base = (view.stamp, len(view))
    _remember(ws, view)


def _read(ws: Workspace, path: Path, all_columns: bool, prescan: bool = False) -> SheetView:
    packer = None if all_columns else _Packer()

    def sink(numbers: list[int], values: list[dict[int, Any]], colmap: dict[str, int]) -> None:
        sc, rc = colmap.get(STRATEGY), colmap.get(RUNID)     # the index, packed chunk by chunk
        if packer is None or sc is None or rc is None:
            return                                          # no index: refused below
        packer.add(numbers, _texts(values, sc), _texts(values, rc))
    try:
        table = _x().read_table(path, ws.config.worksheet or None, None if all_columns else [STRATEGY, RUNID],
                                None if packer is None else sink, prescan)
    except PermissionError as e:
        raise SheetDamaged(f"cannot read the Master Sheet {path}: {e.strerror}") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise SheetDamaged(f"cannot read the Master Sheet {path}: {e}") from None
    missing = [h for h, k in (("Strategy", STRATEGY), ("RunID", RUNID)) if k not in table.columns]
    if missing:
        raise SheetDamaged(
            f"the Master Sheet {path.name} (worksheet '{table.worksheet}') has no "
            f"{' or '.join(missing)} column in its first 10 rows",
            detail="Action: add the header cells 'Strategy' and 'RunID' (any case; spaces, '_' and '-' are ignored).")
    if packer is not None:
        return SheetView(path, table.worksheet, table.header_row, dict(table.headers), dict(table.columns),
                         packed=packer.packed())
    sc, rc = table.columns[STRATEGY], table.columns[RUNID]
    rows = [SheetRow(r.number, names.cell_text(r.values.get(sc)), names.cell_text(r.values.get(rc)),
                     dict(r.values) if all_columns else {})
            for r in table.rows]
    return SheetView(path, table.worksheet, table.header_row, dict(table.headers), dict(table.columns), rows)


def _texts(values: list[dict[int, Any]], col: int) -> list[str]:
    """Column ``col`` of each row as :func:`names.cell_text` reads it; text cells (most) take a short cut."""
    text = names.cell_text
    return names.kept_texts([v.strip() if type(v) is str else text(v)
                             for v in map(operator.methodcaller("get", col), values)])


def cell_value(v: Any) -> xlsx.Value | None:
    """The typed cell for a value: numbers, booleans, or text (SPEC §2)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v if len(str(abs(v))) <= 15 else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return str(v)


def _text_if_unstorable(v: Any) -> Any:
    """NaN, infinities and integers past 15 digits as text, before the row is journaled (SPEC §2).

    The journal's JSON has no NaN or infinity (msgspec writes null), so a value that the
    sheet stores as text is made text first; the journaled row is the row written.
    """
    if isinstance(v, float) and not math.isfinite(v):
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[str(v)]
    if isinstance(v, int) and not isinstance(v, bool) and len(str(abs(v))) > 15:
        return str(v)
    return v


def build_row(view: SheetView, values: dict[str, Any]) -> dict[int, xlsx.Value]:
    """Cells by column index for a row given by header name; unknown headers are skipped."""
    out: dict[int, xlsx.Value] = {}
    for name, v in values.items():
        col = view.columns.get(names.header_key(name))
        cv = cell_value(v)
        if col is not None and cv is not None and col not in out:
            out[col] = cv
    return out


def row_from_metadata(meta: dict[str, Any], strategy: str, run_id: str, txid: str,
                      committed_at: str) -> dict[str, Any]:
    """Columns from the metadata's top-level scalars and its ``metrics`` (top level wins)."""
    row: dict[str, Any] = {}
    metrics = meta.get("metrics")
    for source in (metrics if isinstance(metrics, dict) else {}, meta):
        for k, v in source.items():
            if v is None or isinstance(v, (list, dict)):
                continue
            row[names.header_key(k)] = _text_if_unstorable(v)
    for k in (STRATEGY, RUNID, TXID, COMMITTED_AT):
        row.pop(k, None)
    row[STRATEGY] = strategy
    row[RUNID] = run_id
    row[TXID] = txid
    row[COMMITTED_AT] = committed_at
    return row


def check_row(view: SheetView, row: dict[str, Any]) -> None:
    """Refuse (exit 1) a row the workbook cannot store, before the commit decision is recorded.

    A decided row that the writer then refused would block every commit
    waiting behind it, so the gate runs the writer's own checks (length,
    characters XML cannot carry, types) first.
    """
    _x().encode_rows([build_row(view, row)])


def forget_checks() -> None:
    """Stop an XML check started beside a read for a write that will not happen (:func:`read`'s ``writing``)."""
    if "journal.xlsx" in sys.modules:
        _x().forget_scans()


def check_writable(ws: Workspace, count: int = 1, *, rows: list[dict[str, Any]] | None = None,
                   view: SheetView | None = None) -> None:
    """Refuse, before the commit decision is recorded, a Master Sheet the writer would refuse.

    Runs :func:`journal.xlsx.check_append` on the configured worksheet: every check
    :func:`append` makes before it writes (the workbook's shape, rows out of order or without
    ``r``, what sop does not edit, a malformed part, room for ``count`` rows, a table with a
    totals row that would have to grow), with the same errors, writing nothing.  The rows'
    columns decide which tables grow: those of ``rows`` (by header name) when given, else
    every header column.  Values are checked by :func:`check_row`.

    Raises:
        SheetDamaged: the writer would refuse the workbook (exit 5).
        Refused: the sheet has no room for ``count`` rows.
        PermissionError: the file cannot be read (locked).
    """
    path = ws.sheet
    _check_readable(path)
    if view is None or not view.stamp or view.stamp != _stamp(path):
        view = read(ws)
    if view.writable and view.stamp == _stamp(path):
        last = view.last_number()                              # sop wrote this version: only the room is new
        if last + count > _x().MAX_ROW:
            raise Refused(f"the Master Sheet is full: {count} new row(s) after row {last:,} would pass Excel's "
                          f"last row {_x().MAX_ROW:,}", detail="Start a new Master Sheet ([sheet] path).")
        return
    if rows is not None:
        columns = sorted({c for r in rows for c in build_row(view, r)}) or sorted(view.headers)
    else:
        columns = sorted(view.headers)
    _x().check_append(path, ws.config.worksheet or None, count, columns)
    if view.stamp and view.stamp == _stamp(path):           # trust this version from now on (keyed on its stat)
        view.writable = True
        _save_index(ws, view)


def append(ws: Workspace, rows: list[dict[str, Any]], view: SheetView | None = None) -> Written:
    """Append rows given by header name; returns their Excel row numbers and the new file's fingerprint.

    The index of the new file (old index plus the new rows, keyed on the
    stat of the bytes just written) is cached before the file takes the
    sheet's place, so no gate or ``sop-begin`` ever parses it again.  A PermissionError (the
    file is open elsewhere on Windows) propagates.
    """
    path = ws.sheet
    if view is None or not view.stamp or view.stamp != _stamp(path):
        view = read(ws)
    cells = [build_row(view, r) for r in rows]
    for c in cells:
        for v in c.values():
            if isinstance(v, str) and len(v) > 32767:
                raise Refused("a value is longer than 32,767 characters, the most an Excel cell holds")
    sc, rc = view.columns[STRATEGY], view.columns[RUNID]
    old = view

    new_stat: list[os.stat_result] = []

    def cache_new_index(numbers: list[int], st: os.stat_result, layout: xlsx.Layout | None) -> None:
        new_stat.append(st)
        if not old.stamp or _stamp(path) != old.stamp:
            return                  # the sheet was saved by someone else meanwhile: let the next read parse it
        strategies = [names.cell_text(c.get(sc)) for c in cells]
        run_ids = [names.cell_text(c.get(rc)) for c in cells]
        stamp = _stamp(path, st)
        lay = layout.to_list() if layout is not None else None
        base = old.base
        if base is not None:        # a cache file holds the rows up to base[1]: the rows after them go in a delta
            after = _rows_after(old, base[1])
            if len(after[0]) + len(numbers) <= _delta_limit(base[1]):
                versions = [_Version(stamp, len(after[0]) + len(numbers), True, lay)]
                if old.stamp != base[0]:        # the old version too, should the new file never take its place
                    versions.insert(0, _Version(old.stamp, len(after[0]), old.writable, old.layout))
                rows = (after[0] + numbers, after[1] + strategies, after[2] + run_ids)
                _cache_write(ws, _delta_path(ws, path), _encode_delta_file(base, versions, rows))
                return
        new = SheetView(path, old.worksheet, old.header_row, old.headers, old.columns, lists=([], [], []))
        new.stamp = stamp
        new.writable = True         # sop's own output, which its writer accepts
        new.layout = lay
        secs, ascii_ = _extended(old, numbers, strategies, run_ids)
        _write_index(ws, new, secs, len(old) + len(numbers), ascii_, _orders_for(old, (_keys(strategies),
                                                                                         _keys(run_ids))))

    x = _x()
    layout = x.Layout.from_list(view.layout) if view.layout else None
    numbers: list[int] = x.append_rows(path, ws.config.worksheet or None, cells, cache_new_index,
                                       layout=layout, checked=view.stamp if view.writable else None)
    return Written(numbers, fingerprint(path, new_stat[-1] if new_stat else None))


def remove(ws: Workspace, numbers: list[int]) -> str:
    """Remove rows by Excel row number in one rewrite (Excel's Delete Row: the rows below move up).

    Returns the new file's fingerprint.  A PermissionError (the file is open elsewhere on Windows) propagates.
    """
    _x().remove_rows(ws.sheet, ws.config.worksheet or None, sorted(set(numbers)))
    return fingerprint(ws.sheet)


def create(path: Path, headers: list[str] | None = None) -> None:
    _x().create_workbook(path, headers or DEFAULT_HEADERS)
