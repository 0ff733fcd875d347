"""Plumbing: the Master Sheet's workbook reader and writer (streaming, fidelity-preserving).

People edit the Master Sheet by hand, in Excel or LibreOffice, and decorate it
with tables, filters, charts, formulas on other sheets, sparklines and macros.
A round trip through a workbook model (openpyxl) loses some of that and costs
~25-50 s and ~0.8-1.4 GB at 100k rows, so this package never builds one.  It
treats the .xlsx/.xlsm as what it is — a zip of XML parts — and edits bytes.

Reading (:func:`read_table`)
    Inflates the master worksheet part in 4 MB chunks cut at ``<row``
    boundaries and scans them with compiled byte regexes: rows 1–10 cell by
    cell until the header is found, then only the cells of the columns asked
    for.  Shared strings are decoded in bulk (rich ones on first use).  The
    only other parts read are ``_rels/.rels``, the workbook part and its
    rels.  Reading does not check the whole part's well-formedness (writes
    do): a damaged part may read oddly, but it is never rewritten.

Writing (:func:`append_rows`, :func:`remove_rows`)
    Two streaming passes over the master worksheet part.  The first checks
    that the part is in the shape this package can edit and finds what must
    change; the second copies the part through with only those changes,
    deflating it into the new zip.  Meanwhile expat reads every byte of the
    original part — in a child process on another core when there is one
    (expat holds the GIL and costs as much as both passes), else inline —
    and the new file replaces the old only after it passed, so malformed
    XML is refused, never propagated.  What is rewritten:

    * the master worksheet part: on append new ``<row>`` elements (inline
      strings: ``sharedStrings.xml`` is never touched), ``<dimension ref>``
      and ``<autoFilter ref>``; on removal the rows and cells below the
      removed rows and every range listed under *Removing*;
    * the sheet's table parts (``ref``, ``<autoFilter ref>``, sort state),
      when a table must grow or move;
    * on removal only, when the workbook has ``xl/calcChain.xml``: that part
      is dropped, with its ``<Override>`` in ``[Content_Types].xml`` and its
      ``<Relationship>`` in the workbook's rels (Excel rebuilds it).

    Untouched rows are copied byte for byte.  An append deflates the master
    worksheet part in three pieces — head (through ``<sheetData>``), the
    rows through the last one holding content, and the rest — each ended by
    a full flush, and reports where they lie (:class:`Layout`).  Given that
    record back for the very same file, the next append checks it against
    the file (its stat, the zip directory, the sync points, the CRC combined
    from the pieces) and *splices*: it copies the compressed rows as they
    are and deflates only a new head, the new rows and the tail, with no
    first pass and no XML check (sop wrote those bytes and the file has not
    changed since); any other file is rewritten whole and laid out anew.  A
    reader sees one ordinary deflate stream (see :mod:`.splice`).  Given
    the stat of a version whose checks passed (``checked``), a whole
    rewrite skips the XML check too.  Removal always rewrites whole, without
    the layout.  Every other zip member is
    copied with its compressed bytes (so its uncompressed bytes are
    identical), in the original order, with its name, time stamp and
    attributes; the zip container itself is written anew (no ZIP64: a part
    over 4 GB is refused).  ``docProps`` are left alone.  Every write goes
    through :func:`journal.fsops.atomic_write`.

Appending
    Rows go after the last row that holds content — a non-empty value, an
    inline string, or any formula (a formula is never overwritten, even one
    with no cached value) — and below any merged range they would overlap.
    Empty but formatted ``<row>`` elements there are merged with the new
    rows (their attributes, and the style of an empty cell a value lands in,
    are kept), so row numbers stay unique and ascending.  The dimension
    grows to cover the new cells; every table or autofilter that holds the
    last content row and shares a column with the new cells grows down to
    the last new row.  A table's calculated columns are not filled in.

Removing (Excel's Delete Row)
    Listed rows disappear and the rows below move up, with every range in
    the master worksheet part: dimension, merged cells, conditional formats
    and data validations (with their 2010 ``extLst`` twins), hyperlinks,
    autofilter and sort state, protected ranges, ignored errors, cell
    watches, row breaks, sparkline locations, and the sheet's table parts.
    A range that loses all its rows is dropped (a merge that shrinks to one
    cell too); a table keeps its header and at least one (empty) data row,
    and removing a table's header or total row is refused.  Pane and
    selection cells stay where they are.

    The sheet's own formulas follow their targets as in Excel: references
    to this sheet (unqualified, or qualified with its own name) below a
    removed row move up, a range spanning one shrinks, a reference to a
    removed cell becomes ``#REF!``.  Conditional-format and validation
    formulas are relative to their range, so their relative rows keep their
    distance to the range's (new) top row.  Shared formulas are written out
    cell by cell, each translated to its cell and then shifted; an array
    formula that a removal would cut, or a data table, is refused.
    References from *other* parts — other sheets' formulas, defined names,
    charts, pivot caches — and the anchors of comments and drawings are
    left as they are, so they may point at other rows afterwards (the man
    page says so).  A removed hyperlink's relationship stays, unused.

Values read back
    Shared, inline and formula (``t="str"``) strings → ``str``; numbers →
    ``int`` when integral (``123.0`` → ``123``), else ``float``
    (date-formatted numbers stay serial numbers); booleans → ``bool``; error
    cells → their text (``"#N/A"``); ``t="d"`` cells → their ISO text.
    Empty strings are no value.

Values written
    ``bool`` → ``t="b"``; ``int``/``float`` → a number, except integers of
    more than 15 significant digits, NaN and infinities, which become text;
    ``str`` → an inline string (text starting with ``=``, ``+``, ``-``,
    ``@``, tab or CR is text, never a formula: this package never writes
    ``<f>``).  Text over 32,767 characters or holding characters XML 1.0
    cannot carry is refused (:class:`Refused`), as is any other type.

Refusals
    :class:`SheetDamaged` (exit 5), the file untouched: not a zip, an
    encrypted workbook or legacy ``.xls`` (OLE compound file), Strict OOXML,
    a missing workbook/worksheet part or worksheet name, a corrupt zip
    member, a DOCTYPE, a non-UTF-8 part, and for writes malformed XML and
    anything outside the shape Excel, LibreOffice, openpyxl and XlsxWriter
    write (rows or cells without an ``r`` attribute — its place among the
    attributes and its quotes do not matter —, rows out of order or past
    row 1,048,576, comments, processing instructions or CDATA, namespace
    declarations among the rows, a table with a totals row that would have
    to grow, and on removal scenarios, data consolidation or smart tags
    that refer to a row the removal would move).  A cell past column XFD
    or a row past 1,048,576 is refused by reads too.  An append with no
    room left below the last row is :class:`Refused` (the sheet is full).
    :func:`check_append` raises, without writing, exactly what
    :func:`append_rows` would (the same code up to the first byte written),
    so a caller can refuse before it decides to append.  A sheet
    without a header row is *not* an error for :func:`read_table`: it
    returns ``header_row=0`` and empty ``headers``/``columns`` (the caller
    refuses it).  ``PermissionError`` and other ``OSError`` from writing
    propagate unchanged (the caller reads PermissionError as "the sheet is
    locked").

Modules
    ``constants`` limits, tuning, namespaces; ``ranges`` cell references,
    ranges and the row map of a removal; ``formulas`` formula references;
    ``text`` XML text, escapes, new cells and attribute edits; ``package`` the
    zip, its relationships and parts, shared strings, and the zip writer;
    ``scan`` the chunked worksheet scanner and the first pass of a write;
    ``validate`` the XML check run as a child process (a plain script: the
    standard library only), and ``edit`` the parent side of it, with opening
    a workbook for a rewrite and replacing it; ``read``, ``append``,
    ``remove`` and ``create`` the four operations (``append`` also holds
    :func:`check_append`); ``splice`` the three-piece layout of an appended
    sheet and its record.  The public names are the
    ones re-exported here (those of ``read``, ``remove``, ``create`` and
    ``formulas`` on first use: an append needs none of them).
    :mod:`journal.sheet` imports this package on first use (a cached sheet
    index needs none of it), and the package imports lxml only to edit the
    ranges of a removal, never at import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from journal.errors import Refused, SheetDamaged

from .append import append_rows, check_append
from .constants import (
    CHUNK,
    HEADER_SCAN_ROWS,
    MAX_CELL_CHARS,
    MAX_COL,
    MAX_ROW,
    NS_DOC_RELS,
    NS_MAIN,
    NS_PKG_RELS,
    NS_STRICT_DOC_RELS,
    NS_STRICT_MAIN,
    NS_X14,
    NS_XM,
    OLE_MAGIC,
    REL_CALC_CHAIN,
    REL_OFFICE_DOCUMENT,
    REL_SHARED_STRINGS,
    REL_TABLE,
    REL_WORKSHEET,
    SHEET_COMPRESSLEVEL,
    SMALL_COMPRESSLEVEL,
)
from .edit import forget_scans
from .package import Replacement
from .ranges import Range, RowMap, col_index, col_letters
from .splice import Layout
from .text import Value, encode_rows

if TYPE_CHECKING:
    from .create import create_workbook
    from .formulas import shift_formula, translate_formula
    from .read import Row, Table, normalize_header, read_table
    from .remove import remove_rows

# Imported on first use: an append (a commit) needs none of them (~5 ms at start-up).
_LAZY = {"create_workbook": "create", "shift_formula": "formulas", "translate_formula": "formulas", "Row": "read",
         "Table": "read", "normalize_header": "read", "read_table": "read", "remove_rows": "remove"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "CHUNK",
    "HEADER_SCAN_ROWS",
    "MAX_CELL_CHARS",
    "MAX_COL",
    "MAX_ROW",
    "Layout",
    "NS_DOC_RELS",
    "NS_MAIN",
    "NS_PKG_RELS",
    "NS_STRICT_DOC_RELS",
    "NS_STRICT_MAIN",
    "NS_X14",
    "NS_XM",
    "OLE_MAGIC",
    "REL_CALC_CHAIN",
    "REL_OFFICE_DOCUMENT",
    "REL_SHARED_STRINGS",
    "REL_TABLE",
    "REL_WORKSHEET",
    "SHEET_COMPRESSLEVEL",
    "SMALL_COMPRESSLEVEL",
    "Range",
    "Refused",
    "Replacement",
    "Row",
    "RowMap",
    "SheetDamaged",
    "Table",
    "Value",
    "append_rows",
    "check_append",
    "col_index",
    "col_letters",
    "create_workbook",
    "encode_rows",
    "forget_scans",
    "normalize_header",
    "read_table",
    "remove_rows",
    "shift_formula",
    "translate_formula",
]
