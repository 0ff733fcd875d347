"""The three-piece layout of the master sheet's deflate stream, which lets an append copy the rows.

What sop writes (every other reader sees one ordinary deflated zip member)
    When sop appends rows it deflates the master worksheet part as three
    pieces, each ended by a *full flush* (a deflate sync point: the output is
    byte-aligned, ends with the empty stored block ``00 00 FF FF``, and no
    later byte refers back past it), the last one by the end of the stream:

    ``head``
        the part up to and including ``<sheetData>`` (the dimension is there);
    ``rows``
        the rows up to and including the last row holding content;
    ``tail``
        any empty rows after it, ``</sheetData>`` and the rest of the part.

    A later append copies the compressed ``rows`` piece as it is and deflates
    only a new head, the new rows and the tail; the member's CRC-32 is
    combined from the pieces' (:func:`crc32_combine`).  Inflating the result
    gives exactly the bytes a full rewrite would have given.

The record (:class:`Layout`)
    What the writer returns after such a write and the caller keeps (sop keeps
    it in its sheet index cache, ``.sop/cache/sheet-index-*.msgpack``): the
    file's stat (size, mtime in ns, inode, device), the member's name, local
    header offset, compressed and uncompressed sizes and CRC-32, the
    compressed and uncompressed lengths of the ``head`` and ``rows`` pieces,
    the CRC-32 of the ``rows`` piece's bytes, and the last content row.  As a
    list of plain values (:meth:`Layout.to_list`), in that order.

Trust
    A record is used only for the very file it describes: the opened file's
    ``fstat`` must equal the recorded stat, the zip directory must give the
    member the recorded offset, sizes and CRC, both piece ends must be sync
    points, the head must inflate to its length and end with ``<sheetData>``,
    the tail must inflate to the rest and end the stream, and the CRC
    combined from head, rows and tail must be the member's.  Anything else
    (a save by Excel, a removal, a copy) falls back to the full rewrite, which
    lays the stream out this way again.  The rows themselves are not read:
    sop wrote and checked them, and the file has not changed since.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from . import deflate
from .constants import CHUNK
from .package import Copied, Package, Written, crc32_combine
from .scan import Scan, Segments, Sx

SYNC = b"\x00\x00\xff\xff"          # how a full flush ends (an empty stored block)

# --------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True)
class Layout:
    """Where the three pieces of the master sheet's deflate stream lie in one file sop wrote."""

    stamp: tuple[int, int, int, int]    # the file's size, mtime_ns, inode, device
    part: str
    offset: int                          # the member's local header
    csize: int
    usize: int
    crc: int
    head_c: int
    head_u: int
    rows_c: int
    rows_u: int
    rows_crc: int
    last_row: int                        # the last row holding content (the rows piece ends with it)

    def to_list(self) -> list[Any]:
        return [list(self.stamp), self.part, self.offset, self.csize, self.usize, self.crc, self.head_c,
                self.head_u, self.rows_c, self.rows_u, self.rows_crc, self.last_row]

    @classmethod
    def from_list(cls, v: list[Any]) -> Layout | None:
        """A record from :meth:`to_list`'s output; None when it is not one (an older cache)."""
        try:
            stamp, part, *nums = v
            if len(stamp) != 4 or not isinstance(part, str) or len(nums) != 10:
                return None
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in [*stamp, *nums]):
                return None
            return cls((stamp[0], stamp[1], stamp[2], stamp[3]), part, *nums)
        except (TypeError, ValueError):
            return None


def stamp_of(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def layout_of(stamp: tuple[int, int, int, int], part: str, written: Written, last_row: int) -> Layout | None:
    """The record of a member written as head, FLUSH, rows, FLUSH, tail (None when it was not)."""
    if len(written.marks) != 2:
        return None
    h, r = written.marks
    return Layout(stamp, part, written.offset, written.csize, written.usize, written.crc, h.c_end, h.u_end,
                  r.c_end - h.c_end, r.u_end - h.u_end, r.crc, last_row)


# --------------------------------------------------------------------------------------------
# Reading a laid-out member back


@dataclass
class Pieces:
    """A verified layout: the inflated head and tail, and where the compressed rows lie."""

    layout: Layout
    scan: Scan                           # head, tail, the rows after the last content row, as a scan gives them
    rows_at: int                         # file offset of the compressed rows piece


_SHEETDATA_END_RE = re.compile(rb"<([A-Za-z_][\w.-]*:)?sheetData(?:\s[^>]*?)?>\Z")


def _inflate(data: bytes, want: int, final: bool) -> bytes | None:
    d = deflate.decompressobj()
    try:
        out = d.decompress(data, want + 1)
    except deflate.error:
        return None
    if len(out) != want or d.unconsumed_tail or d.unused_data or d.eof != final:
        return None
    return out


def verify(pkg: Package, part: str, layout: Layout) -> Pieces | None:
    """The layout's pieces, when ``layout`` describes this very file; None otherwise (see *Trust*)."""
    from .package import root_prefix

    lay = layout
    if lay.part != part or stamp_of(os.fstat(pkg.f.fileno())) != lay.stamp:
        return None
    info = pkg.names.get(part)
    if (info is None or info.compress_type != 8 or info.header_offset != lay.offset or info.compress_size != lay.csize
            or info.file_size != lay.usize or info.CRC != lay.crc or info.flag_bits & 0x1
            or not (0 < lay.head_c and 0 < lay.rows_c and lay.head_c + lay.rows_c < lay.csize)
            or lay.head_u + lay.rows_u > lay.usize):
        return None
    f = pkg.f
    f.seek(lay.offset)
    lh = f.read(30)
    if len(lh) < 30 or lh[:4] != b"PK\x03\x04":
        return None
    n, e = struct.unpack("<HH", lh[26:30])
    start = lay.offset + 30 + n + e
    f.seek(start)
    head_z = f.read(lay.head_c)
    f.seek(start + lay.head_c + lay.rows_c - len(SYNC))
    rows_end = f.read(len(SYNC))
    tail_c = lay.csize - lay.head_c - lay.rows_c
    if tail_c > CHUNK * 4:               # a tail that large is not one sop laid out
        return None
    tail_z = f.read(tail_c)
    if not head_z.endswith(SYNC) or rows_end != SYNC or len(tail_z) != tail_c:
        return None
    tail_u = lay.usize - lay.head_u - lay.rows_u
    head = _inflate(head_z, lay.head_u, False)
    tail = _inflate(tail_z, tail_u, True)
    if head is None or tail is None:
        return None
    crc = crc32_combine(crc32_combine(zlib.crc32(head), lay.rows_crc, lay.rows_u), zlib.crc32(tail), tail_u)
    m = _SHEETDATA_END_RE.search(head)
    if crc != lay.crc or m is None:
        return None
    try:
        prefix = root_prefix(head, pkg.path, part, b"worksheet")
    except Exception:
        return None
    if (m.group(1) or b"") != prefix:
        return None
    sx = Sx(prefix)
    e_at = tail.find(sx.sheetdata_end)
    if e_at < 0 or sx.row_tag in tail[e_at:]:
        return None
    seg = Segments(head=head, tail=tail[e_at:], selfclosing=False, sx=sx)
    scan = Scan(seg, sx, last_content_row=lay.last_row, max_row=lay.last_row, rest=[tail[:e_at]])
    return Pieces(lay, scan, start + lay.head_c)


def copy_rows(pkg: Package, pieces: Pieces) -> Copied:
    """The rows piece, to be copied compressed as it is."""
    lay = pieces.layout
    return Copied(lay.rows_u, lay.rows_crc, pkg.f, pieces.rows_at, lay.rows_c)
