"""Plumbing: the Master Sheet's workbook reader and writer (streaming, fidelity-preserving).

People edit the Master Sheet by hand, in Excel or LibreOffice, and decorate it
with tables, filters, charts, formulas on other sheets, sparklines and macros.
A round trip through a workbook model (openpyxl) loses some of that and costs
~25-50 s and ~0.8-1.4 GB at 100k rows, so this module never builds one.  It
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
    that the part is in the shape this module can edit and finds what must
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

    Untouched rows are copied byte for byte.  Every other zip member is
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
    ``@``, tab or CR is text, never a formula: this module never writes
    ``<f>``).  Text over 32,767 characters or holding characters XML 1.0
    cannot carry is refused (:class:`Refused`), as is any other type.

Refusals
    :class:`SheetDamaged` (exit 5), the file untouched: not a zip, an
    encrypted workbook or legacy ``.xls`` (OLE compound file), Strict OOXML,
    a missing workbook/worksheet part or worksheet name, a corrupt zip
    member, a DOCTYPE, a non-UTF-8 part, and for writes malformed XML and
    anything outside the shape Excel, LibreOffice, openpyxl and XlsxWriter
    write (rows or cells without an ``r`` attribute or with ``r`` not
    first, rows out of order, comments, processing instructions or CDATA,
    namespace declarations among the rows, a table with a totals row that
    would have to grow, scenarios, data consolidation, smart tags).  A sheet
    without a header row is *not* an error for :func:`read_table`: it
    returns ``header_row=0`` and empty ``headers``/``columns`` (the caller
    refuses it).  ``PermissionError`` and other ``OSError`` from writing
    propagate unchanged (the caller reads PermissionError as "the sheet is
    locked").
"""

from __future__ import annotations

import bisect
import contextlib
import math
import numbers
import operator
import os
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO
from xml.parsers import expat

from journal import fsops
from journal.errors import Refused, SheetDamaged

Value = str | int | float | bool

__all__ = [
    "Row",
    "Table",
    "Value",
    "append_rows",
    "create_workbook",
    "normalize_header",
    "read_table",
    "remove_rows",
]


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


# --------------------------------------------------------------------------------------------
# Constants

MAX_ROW = 1_048_576
MAX_COL = 16_384
MAX_CELL_CHARS = 32_767
HEADER_SCAN_ROWS = 10
CHUNK = 1 << 22                     # inflate this much at a time
SHEET_COMPRESSLEVEL = 1             # deflate level of the rewritten sheet: 0.2 s less at 100k rows, ~20% larger
SMALL_COMPRESSLEVEL = 6
VALIDATOR_MIN_BYTES = 8 << 20       # below this a worksheet part is checked in process (a child costs ~50 ms)

NS_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
NS_STRICT_MAIN = "http://purl.oclc.org/ooxml/spreadsheetml/main"
NS_PKG_RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
NS_DOC_RELS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
NS_STRICT_DOC_RELS = "http://purl.oclc.org/ooxml/officeDocument/relationships"
REL_OFFICE_DOCUMENT = NS_DOC_RELS + "/officeDocument"
REL_WORKSHEET = NS_DOC_RELS + "/worksheet"
REL_SHARED_STRINGS = NS_DOC_RELS + "/sharedStrings"
REL_CALC_CHAIN = NS_DOC_RELS + "/calcChain"
REL_TABLE = NS_DOC_RELS + "/table"

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


# --------------------------------------------------------------------------------------------
# Cell references

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
class _Range:
    """A rectangular range ``c1 r1 : c2 r2``; whole rows/columns use the sheet's limits."""

    c1: int
    r1: int
    c2: int
    r2: int

    @classmethod
    def parse(cls, text: str) -> _Range:
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


# --------------------------------------------------------------------------------------------
# Text decoding and encoding

_ENTITY_RE = re.compile(rb"&(#[0-9]+|#x[0-9a-fA-F]+|lt|gt|amp|quot|apos);")
_ENTITIES = {b"lt": "<", b"gt": ">", b"amp": "&", b"quot": '"', b"apos": "'"}
_XESC_RE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def _xml_text(raw: bytes, xesc: bool = True) -> str:
    """XML character data as a parser would give it, then OOXML ``_xHHHH_`` escapes decoded."""
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if b"&" in raw:
        parts = _ENTITY_RE.split(raw)
        out = []
        for i, part in enumerate(parts):
            if i % 2:
                out.append(_entity_name(part))
            else:
                out.append(part.decode("utf-8"))
        s = "".join(out)
    else:
        s = raw.decode("utf-8")
    if xesc and "_x" in s:
        s = _XESC_RE.sub(lambda m: chr(int(m.group(1), 16)), s)
    return s


def _entity_name(name: bytes) -> str:
    if name[:2] == b"#x":
        return chr(int(name[2:], 16))
    if name[:1] == b"#":
        return chr(int(name[1:]))
    return _ENTITIES[name]


_ILLEGAL_XML_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XESC_LITERAL_RE = re.compile(r"_(x[0-9A-Fa-f]{4}_)")


def _escape_text(s: str) -> str:
    """Text for an XML text node that Excel reads back as exactly ``s``."""
    if "_x" in s:   # a literal "_x0041_" would be decoded by Excel: escape its underscore
        s = _XESC_LITERAL_RE.sub(r"_x005F_\1", s)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if "\r" in s:
        s = s.replace("\r", "&#13;")
    return s


def _escape_attr(s: str) -> str:
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;"))


def _number(text: str | bytes) -> int | float | None:
    """A cell's number: int when integral (``123.0`` -> 123), else float; None when not a number."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return None
    if math.isfinite(f) and f.is_integer() and abs(f) < 2**53:
        return int(f)
    return f


# --------------------------------------------------------------------------------------------
# The package: zip, relationships, parts


def _damaged(path: str | os.PathLike[str], what: str, detail: str | None = None) -> SheetDamaged:
    return SheetDamaged(f"Master Sheet {os.fspath(path)}: {what}", detail=detail)


def _xml_root(data: bytes, path: str | os.PathLike[str], part: str):  # -> lxml element
    from lxml import etree

    if b"<!DOCTYPE" in data[:4096] or b"<!ENTITY" in data:
        raise _damaged(path, f"{part} declares a DOCTYPE or entities; refusing to read it")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        raise _damaged(path, f"{part} is not well-formed XML ({e})",
                       "Open and re-save it in Excel, or restore it from a backup.") from None


def _resolve_target(base_part: str, target: str) -> str:
    """A relationship target relative to the part that owns the rels -> a zip member name."""
    if target.startswith("/"):
        return target.lstrip("/")
    base_dir = base_part.rsplit("/", 1)[0] if "/" in base_part else ""
    parts = [p for p in base_dir.split("/") if p] if base_dir else []
    for seg in target.split("/"):
        if seg == "..":
            if parts:
                parts.pop()
        elif seg and seg != ".":
            parts.append(seg)
    return "/".join(parts)


def _rels_name(part: str) -> str:
    d, _, name = part.rpartition("/")
    return f"{d}/_rels/{name}.rels" if d else f"_rels/{name}.rels"


@dataclass
class _Rel:
    rid: str
    type: str
    target: str        # resolved zip member name ("" for external)
    external: bool


@dataclass
class _SheetInfo:
    name: str
    part: str


class _Package:
    """An opened workbook zip with its workbook part and worksheet list resolved."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        try:
            self.f: BinaryIO = open(path, "rb")
        except FileNotFoundError:
            raise _damaged(path, "no such file", "Create it with `sop init`, or point [sheet].path at it.") from None
        try:
            self._open()
        except BaseException:
            self.f.close()
            raise

    def _open(self) -> None:
        path = self.path
        magic = self.f.read(8)
        self.f.seek(0)
        if magic == OLE_MAGIC:
            raise _damaged(path, "is an encrypted workbook or a legacy .xls file (OLE compound document)",
                           "Remove the password or save it as .xlsx/.xlsm in Excel.")
        if magic[:2] != b"PK":
            raise _damaged(path, "is not an .xlsx/.xlsm workbook (not a zip file)")
        try:
            self.zf = zipfile.ZipFile(self.f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as e:
            raise _damaged(path, f"is not a readable zip file ({e})") from None
        self.infos = self.zf.infolist()
        self.names: dict[str, zipfile.ZipInfo] = {}
        for info in self.infos:
            if info.filename in self.names:
                raise _damaged(path, f"holds the zip member {info.filename} twice")
            if info.flag_bits & 0x1:
                raise _damaged(path, f"zip member {info.filename} is encrypted")
            self.names[info.filename] = info
        self.names_ci = {n.casefold(): n for n in self.names}   # OPC part names are case-insensitive
        if "EncryptedPackage" in self.names or "EncryptionInfo" in self.names:
            raise _damaged(path, "is an encrypted workbook", "Remove the password in Excel.")
        rels = self.rels("")
        office = [r for r in rels if r.type == REL_OFFICE_DOCUMENT]
        if not office:
            if any(r.type.startswith(NS_STRICT_DOC_RELS) for r in rels):
                raise _damaged(path, "is a Strict Open XML workbook, which sop does not edit",
                               "Save it as 'Excel Workbook (.xlsx)' instead of 'Strict Open XML'.")
            raise _damaged(path, "has no workbook part (_rels/.rels names no officeDocument)")
        self.workbook_part = office[0].target
        wb = _xml_root(self.read(self.workbook_part), path, self.workbook_part)
        ns = wb.tag[1:].split("}")[0] if wb.tag.startswith("{") else ""
        if ns == NS_STRICT_MAIN:
            raise _damaged(path, "is a Strict Open XML workbook, which sop does not edit",
                           "Save it as 'Excel Workbook (.xlsx)' instead of 'Strict Open XML'.")
        if ns != NS_MAIN:
            raise _damaged(path, f"has a workbook part in an unknown namespace {ns!r}")
        self.workbook_rels = self.rels(self.workbook_part)
        by_id = {r.rid: r for r in self.workbook_rels}
        self.sheets: list[_SheetInfo] = []
        self.other_sheets: list[str] = []
        for el in wb.iter(f"{{{NS_MAIN}}}sheet"):
            rid = el.get(f"{{{NS_DOC_RELS}}}id")
            rel = by_id.get(rid or "")
            name = el.get("name") or ""
            if rel is None:
                raise _damaged(path, f"sheet {name!r} has no relationship {rid!r} in the workbook's rels")
            if rel.type == REL_WORKSHEET:
                self.sheets.append(_SheetInfo(name, rel.target))
            else:
                self.other_sheets.append(name)
        sst = [r for r in self.workbook_rels if r.type == REL_SHARED_STRINGS]
        self.sst_part = sst[0].target if sst and sst[0].target in self.names else None

    def close(self) -> None:
        self.zf.close()
        self.f.close()

    def __enter__(self) -> _Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, part: str) -> bytes:
        if part not in self.names:
            raise _damaged(self.path, f"is missing its part {part}")
        try:
            return self.zf.read(part)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            raise _damaged(self.path, f"part {part} cannot be inflated ({e})") from None

    def chunks(self, part: str, size: int = CHUNK) -> Iterator[bytes]:
        """Inflate a part piece by piece; a bad CRC or deflate stream is damage."""
        if part not in self.names:
            raise _damaged(self.path, f"is missing its part {part}")
        try:
            with self.zf.open(part) as f:
                while True:
                    b = f.read(size)
                    if not b:
                        return
                    yield b
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            raise _damaged(self.path, f"part {part} cannot be inflated ({e})") from None

    def rels(self, part: str) -> list[_Rel]:
        name = "_rels/.rels" if part == "" else _rels_name(part)
        if name not in self.names:
            return []
        root = _xml_root(self.read(name), self.path, name)
        out = []
        for el in root.iter(f"{{{NS_PKG_RELS}}}Relationship"):
            external = el.get("TargetMode") == "External"
            target = el.get("Target") or ""
            if not external:
                target = _resolve_target(part, target)
                target = self.names_ci.get(target.casefold(), target)
            out.append(_Rel(el.get("Id") or "", el.get("Type") or "", target, external))
        return out

    def sheet(self, worksheet: str | None) -> _SheetInfo:
        if not self.sheets:
            raise _damaged(self.path, "has no worksheet")
        if worksheet is None or worksheet == "":
            info = self.sheets[0]
        else:
            found = [s for s in self.sheets if s.name == worksheet]
            if not found:
                found = [s for s in self.sheets if s.name.casefold() == worksheet.casefold()]
            if not found:
                names = ", ".join(repr(s.name) for s in self.sheets)
                raise _damaged(self.path, f"has no worksheet named {worksheet!r} (it has {names})",
                               "Fix [sheet].worksheet in .sop/config.toml.")
            info = found[0]
        if info.part not in self.names:
            raise _damaged(self.path, f"is missing the part {info.part} of worksheet {info.name!r}")
        return info


# --------------------------------------------------------------------------------------------
# Shared strings


class _SharedStrings:
    """The shared string table: simple entries decoded in bulk, rich ones on first use."""

    def __init__(self, raw: list[tuple[bytes, bytes, bytes]], prefix: bytes) -> None:
        p = re.escape(prefix)
        self._t = re.compile(rb"<" + p + rb"t(?:\s[^>]*)?>(.*?)</" + p + rb"t>|<" + p + rb"t(?:\s[^>]*)?/>", re.S)
        self._rph = re.compile(rb"<" + p + rb"rPh\b.*?</" + p + rb"rPh>", re.S)
        self._simple = (b"<" + prefix + b"t>", b"</" + prefix + b"t>")
        # raw: (simple text, marker of a simple entry, rich body) per <si>, as the regex finds them
        simple = [t[0] for t in raw]
        joined = b"\x00".join(simple).decode("utf-8", "replace")
        strings: list[str | None] = [*joined.split("\x00")] if raw else []
        if "&" in joined or "_x" in joined or "\r" in joined:
            strings = [_xml_text(simple[i]) if ("&" in st or "_x" in st or "\r" in st) else st  # type: ignore[operator]
                       for i, st in enumerate(strings)]
        self.rich: dict[int, bytes] = {}
        if len(raw) != sum(1 for t in raw if t[1]):
            for i, t in enumerate(raw):
                if not t[1]:
                    strings[i] = None
                    self.rich[i] = t[2]
        self.strings = strings

    def get(self, index: int) -> str:
        try:
            s = self.strings[index]
        except IndexError:
            return ""
        if s is None:
            s = self.strings[index] = self.decode_rich(self.rich.pop(index))
        return s

    def decode_rich(self, body: bytes) -> str:
        if not body:
            return ""
        if b"rPh" in body:
            body = self._rph.sub(b"", body)
        return "".join(_xml_text(m.group(1) or b"") for m in self._t.finditer(body))


_ROOT_RE = re.compile(rb"<([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)((?:\s[^>]*)?)>")
_XMLNS_RE = re.compile(rb"""xmlns(?::([\w.-]+))?\s*=\s*(["'])(.*?)\2""")


def _root_prefix(head: bytes, path: str | os.PathLike[str], part: str, expect: bytes) -> bytes:
    """Find the root element and the prefix bound to the SpreadsheetML namespace ('' or 'x:')."""
    pos = 0
    while True:
        m = _ROOT_RE.search(head, pos)
        if not m:
            raise _damaged(path, f"{part} has no root element")
        if head[m.start() + 1:m.start() + 2] in (b"?", b"!"):
            pos = m.end()
            continue
        break
    pre = head[:m.start()]
    if b"<!DOCTYPE" in pre or b"<!ENTITY" in pre:
        raise _damaged(path, f"{part} declares a DOCTYPE; refusing to read it")
    prefix = m.group(1) or b""
    if m.group(2) != expect:
        raise _damaged(path, f"{part} is a <{m.group(2).decode()}>, not a <{expect.decode()}>")
    bound = {}
    for nm in _XMLNS_RE.finditer(m.group(3)):
        bound[(nm.group(1) or b"")] = nm.group(3).decode("utf-8", "replace")
    ns = bound.get(prefix[:-1] if prefix else b"")
    if ns == NS_STRICT_MAIN:
        raise _damaged(path, "is a Strict Open XML workbook, which sop does not edit",
                       "Save it as 'Excel Workbook (.xlsx)' instead of 'Strict Open XML'.")
    if ns != NS_MAIN:
        raise _damaged(path, f"{part} is in an unknown namespace {ns!r}")
    return prefix


def _check_encoding(head: bytes, path: str | os.PathLike[str], part: str) -> None:
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or head[:4] in (b"\x00<\x00?", b"<\x00?\x00"):
        raise _damaged(path, f"{part} is UTF-16 encoded, which sop does not edit",
                       "Open and re-save the workbook in Excel.")
    m = re.match(rb"(?:\xef\xbb\xbf)?<\?xml[^>]*encoding\s*=\s*[\"']([\w.-]+)[\"']", head)
    if m and m.group(1).lower() not in (b"utf-8", b"utf8"):
        raise _damaged(path, f"{part} is {m.group(1).decode()} encoded, which sop does not edit",
                       "Open and re-save the workbook in Excel.")


def _load_shared_strings(pkg: _Package) -> _SharedStrings:
    if pkg.sst_part is None:
        return _SharedStrings([], b"")
    data = pkg.read(pkg.sst_part)
    _check_encoding(data[:200], pkg.path, pkg.sst_part)
    prefix = _root_prefix(data[:4096], pkg.path, pkg.sst_part, b"sst")
    p = re.escape(prefix)
    si = re.compile(rb"<" + p + rb"si(?:\s[^>]*)?(?:/>|>(?:<" + p + rb't(?: xml:space="preserve")?>([^<]*)</' + p
                    + rb"t>(</)" + p + rb"si>|(.*?)</" + p + rb"si>))", re.S)
    return _SharedStrings(si.findall(data), prefix)


# --------------------------------------------------------------------------------------------
# The worksheet scanner


class _Sx:
    """Byte regexes for one worksheet part, bound to its namespace prefix."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = p0 = prefix
        p = re.escape(prefix)
        self.row_tag = b"<" + p0 + b"row"
        self.sheetdata_end = b"</" + p0 + b"sheetData>"
        self.sheetdata_re = re.compile(rb"<" + p + rb"sheetData(?:\s[^>]*)?(/?)>")
        self.row_re = re.compile(rb"<" + p + rb"row(\s[^>]*?)?(/?)>")
        self.row_end = b"</" + p0 + b"row>"
        self.row_r_re = re.compile(rb"""\sr\s*=\s*["'](\d+)["']""")
        self.cell_re = re.compile(rb"<" + p + rb"c(\s[^>]*?)?(?:/>|>(.*?)</" + p + rb"c>)", re.S)
        self.cell_r_re = re.compile(rb"""\sr\s*=\s*["']([A-Za-z]{1,3})(\d+)["']""")
        self.cell_t_re = re.compile(rb"""\st\s*=\s*["'](\w+)["']""")
        self.cell_s_re = re.compile(rb"""\ss\s*=\s*["'](\d+)["']""")
        self.v_re = re.compile(rb"<" + p + rb"v(?:\s[^>]*)?>(.*?)</" + p + rb"v>", re.S)
        self.is_re = re.compile(rb"<" + p + rb"is(?:\s[^>]*)?>(.*?)</" + p + rb"is>", re.S)
        self.value_re = re.compile(rb"<" + p + rb"v(?:\s[^>]*)?>[^<]|<" + p + rb"t(?:\s[^>]*)?>[^<]")
        self.content_re = re.compile(rb"<" + p + rb"v(?:\s[^>]*)?>[^<]|<" + p + rb"t(?:\s[^>]*)?>[^<]|<"
                                     + p + rb"f[\s>/]")
        self.sst = _SharedStrings([], prefix)   # for inline rich text
        self.no_r_re = re.compile(rb"<" + p + rb"""(?:c|row)(?! r=")[\s>/]""")
        self.row_num_re = re.compile(rb"<" + p + rb'row r="(\d+)"')
        self.row_r = b"<" + p0 + b'row r="'
        self.v_open = b"<" + p0 + b"v>"
        self.v_close = b"</" + p0 + b"v>"

    def cell_value(self, attrs: bytes, inner: bytes | None, sst: _SharedStrings) -> Value | None:
        """The value a cell shows (its cached value for formulas); None when empty."""
        if not inner:
            return None
        t = b"n"
        if attrs and b"t" in attrs:
            m = self.cell_t_re.search(attrs)
            if m:
                t = m.group(1)
        if t == b"inlineStr":
            m = self.is_re.search(inner)
            if not m:
                return None
            return _inline_text(m.group(1), self) or None
        m = self.v_re.search(inner)
        if not m:
            return None
        raw = m.group(1)
        if t == b"s":
            try:
                s = sst.get(int(raw))
            except ValueError:
                return None
            return s or None
        if t == b"n":
            return _number(raw)
        if t == b"b":
            return raw.strip() in (b"1", b"true")
        s = _xml_text(raw)   # str, e (error text), d (ISO date text)
        return s or None


def _inline_text(body: bytes, sx: _Sx) -> str:
    o, c = sx.sst._simple
    if body.startswith(o) and body.endswith(c) and body.count(b"<") == 2:
        return _xml_text(body[len(o):-len(c)])
    return sx.sst.decode_rich(body)


_SHEETDATA_ANY_RE = re.compile(rb"<([A-Za-z_][\w.-]*:)?sheetData(?:\s[^>]*)?(/?)>")


@dataclass
class _Segments:
    """A worksheet part split as head (through ``<sheetData>``), row chunks, and tail."""

    head: bytes = b""
    tail: bytes = b""
    selfclosing: bool = False
    sx: _Sx | None = None
    oddities: list[tuple[int, str]] = field(default_factory=list)   # (byte offset in the part, what)


def _feed(parser: expat.XMLParserType, data: bytes, final: bool, pkg: _Package, part: str) -> None:
    try:
        parser.Parse(data, final)
    except expat.ExpatError as e:
        raise _damaged(pkg.path, f"{part} is not well-formed XML ({e})",
                       "Open and re-save it in Excel, or restore it from a backup.") from None


def _iter_sheet(pkg: _Package, part: str, validate: bool,
                seg: _Segments) -> Iterator[bytes]:
    """Yield the bytes inside ``<sheetData>`` in chunks that end just before a ``<row``.

    Fills ``seg.head`` before the first chunk and ``seg.tail`` after the last.
    With ``validate`` every byte of the part also goes through expat.
    """
    parser = None
    if validate:
        parser = expat.ParserCreate()
        parser.UseForeignDTD(False)

        def no_dtd(*_a: object) -> None:
            raise _damaged(pkg.path, f"{part} declares a DOCTYPE; refusing to edit it")
        parser.StartDoctypeDeclHandler = no_dtd
        parser.EntityDeclHandler = no_dtd
        # constructs the byte scanner does not follow: noted here at no cost when absent
        odd = seg.oddities

        def note(what: str) -> Callable[..., None]:
            return lambda *_a: odd.append((parser.CurrentByteIndex, what))  # type: ignore[union-attr]
        parser.CommentHandler = note("an XML comment")
        parser.ProcessingInstructionHandler = note("a processing instruction")
        parser.StartCdataSectionHandler = note("a CDATA section")

    sx: _Sx | None = None
    buf = b""
    state = 0   # 0 head, 1 rows, 2 tail
    stream = pkg.chunks(part)
    while True:
        chunk = next(stream, None)
        if chunk is not None:
            if parser is not None:
                _feed(parser, chunk, False, pkg, part)
            buf += chunk
        elif parser is not None:
            _feed(parser, b"", True, pkg, part)
        if state == 0:
            m = _SHEETDATA_ANY_RE.search(buf)
            if not m:
                if chunk is None:
                    raise _damaged(pkg.path, f"{part} has no <sheetData>")
                continue
            head = buf[:m.end()]
            _check_encoding(head[:200], pkg.path, part)
            prefix = _root_prefix(head, pkg.path, part, b"worksheet")
            if (m.group(1) or b"") != prefix:
                raise _damaged(pkg.path, f"{part} mixes namespace prefixes, which sop does not edit")
            if b"<!--" in head or b"<![CDATA[" in head:
                raise _damaged(pkg.path, f"{part} holds XML comments or CDATA, which sop does not edit",
                               "Open and re-save the workbook in Excel.")
            sx = _Sx(prefix)
            seg.sx = sx
            seg.head = head
            buf = buf[m.end():]
            if m.group(2):
                seg.selfclosing = True
                state = 2
            else:
                state = 1
        if state == 1:
            assert sx is not None               # set when <sheetData> was found (state 0 -> 1)
            e = buf.find(sx.sheetdata_end)
            if e >= 0:
                if e:
                    yield buf[:e]
                buf = buf[e:]
                state = 2
            elif chunk is None:
                raise _damaged(pkg.path, f"{part} ends inside <sheetData>")
            else:
                cut = buf.rfind(sx.row_tag)
                if cut > 0:
                    yield buf[:cut]
                    buf = buf[cut:]
        if chunk is None:
            if state != 2:
                raise _damaged(pkg.path, f"{part} has no <sheetData>")
            seg.tail = buf
            return


# --------------------------------------------------------------------------------------------
# Reading


def _row_spans(seg: bytes, sx: _Sx) -> Iterator[tuple[int | None, int, int, int]]:
    """(row number or None when implied, start, end of start tag, end of element) of each row in a chunk."""
    pos = 0
    n = len(seg)
    row_re = sx.row_re
    row_end = sx.row_end
    while pos < n:
        m = row_re.search(seg, pos)
        if not m:
            return
        attrs = m.group(1)
        r = None
        if attrs:
            rm = sx.row_r_re.search(attrs)
            if rm:
                r = int(rm.group(1))
        if m.group(2):
            end = m.end()
        else:
            e = seg.find(row_end, m.end())
            if e < 0:
                raise ValueError("unterminated row")
            end = e + len(row_end)
        yield r, m.start(), m.end(), end
        pos = end


def _parse_cells(body: bytes, sx: _Sx, sst: _SharedStrings,
                 wanted: set[int] | None) -> tuple[dict[int, Value], bool]:
    """Every cell of one row body (handles implied positions); returns (values, row holds a value)."""
    out: dict[int, Value] = {}
    col = 0
    any_value = False
    for m in sx.cell_re.finditer(body):
        attrs = m.group(1) or b""
        rm = sx.cell_r_re.search(attrs) if attrs else None
        col = col_index(rm.group(1)) if rm else col + 1
        v = sx.cell_value(attrs, m.group(2), sst)
        if v is None:
            continue
        any_value = True
        if wanted is None or col in wanted:
            out[col] = v
    return out, any_value


def read_table(path: str | os.PathLike[str], worksheet: str | None = None,
               columns: list[str] | None = None) -> Table:
    """Read the master worksheet's header and data rows, streaming its XML.

    Args:
        path: the workbook.
        worksheet: the worksheet's name; None or "" means the first worksheet.
        columns: normalized header names whose values to load; None loads every column.

    Returns:
        A Table; ``header_row`` is 0 (and ``headers``/``columns`` empty) when none of rows
        1–10 holds a ``Strategy`` cell: the caller decides to refuse.

    Raises:
        SheetDamaged: the file is not a workbook this module can read (see the module docstring).
    """
    with _Package(path) as pkg:
        info = pkg.sheet(worksheet)
        sst = _load_shared_strings(pkg)
        seg = _Segments()
        header_row = 0
        headers: dict[int, str] = {}
        colmap: dict[str, int] = {}
        decided = False
        wanted: set[int] | None = None
        fast: re.Pattern[bytes] | None = None
        early: list[Row] = []          # rows 1-10 above the header (or of a sheet without one)
        rows: list[Row] = []
        last_r = 0
        for chunk in _iter_sheet(pkg, info.part, False, seg):
            sx = seg.sx
            assert sx is not None
            if not decided:
                pos = 0
                for r, _s0, s1, e in _row_spans(chunk, sx):
                    r = r if r is not None else last_r + 1
                    if r > HEADER_SCAN_ROWS:
                        decided = True
                        break
                    last_r, pos = r, e
                    vals, _ = _parse_cells(chunk[s1:e], sx, sst, None)
                    if any(isinstance(v, str) and normalize_header(v) == "strategy" for v in vals.values()):
                        header_row = r
                        headers = {c: str(v).strip() for c, v in sorted(vals.items())}
                        for c, text in headers.items():
                            colmap.setdefault(normalize_header(text), c)
                        decided = True
                        break
                    if vals:
                        early.append(Row(r, vals))
                if not decided:
                    continue
                wanted, fast = _wanted(columns, colmap, sx)
                if not header_row:
                    rows = _only(early, wanted)
                chunk = chunk[pos:]
            last_r = _read_chunk(chunk, sx, sst, wanted, fast, rows, last_r)
        if not decided:
            wanted, _ = _wanted(columns, colmap, None)
            rows = _only(early, wanted)
        return Table(info.name, header_row, headers, colmap, rows)


def _wanted(columns: list[str] | None, colmap: dict[str, int],
            sx: _Sx | None) -> tuple[set[int] | None, re.Pattern[bytes] | None]:
    """The column indexes asked for, and a regex that finds only their cells."""
    if columns is None:
        wanted = None
        letters = rb"[A-Z]{1,3}"
    else:
        wanted = {colmap[n] for n in (normalize_header(c) for c in columns) if n in colmap}
        letters = b"|".join(col_letters(c).encode() for c in sorted(wanted)) or b"(?!)"
    if sx is None:
        return wanted, None
    p = re.escape(sx.prefix)
    return wanted, re.compile(
        rb"<" + p + rb'c r="(' + letters + rb')(\d+)"([^>]*?)(?:/>|><' + p + rb"v>([^<]*)</" + p + rb"v></" + p
        + rb"c>|><" + p + rb"is><" + p + rb't(?: xml:space="preserve")?>([^<]*)</' + p + rb"t></" + p + rb"is></"
        + p + rb"c>|>(.*?)</" + p + rb"c>)", re.S)


def _only(rows: list[Row], wanted: set[int] | None) -> list[Row]:
    if wanted is None:
        return rows
    return [Row(r.number, {c: v for c, v in r.values.items() if c in wanted}) for r in rows]


_COL_INDEX: dict[bytes, int] = {}


def _col_of(letters: bytes) -> int:
    c = _COL_INDEX.get(letters)
    if c is None:
        c = _COL_INDEX[letters] = col_index(letters)
    return c


def _read_chunk(chunk: bytes, sx: _Sx, sst: _SharedStrings, wanted: set[int] | None,
                fast: re.Pattern[bytes] | None, rows: list[Row], last_r: int) -> int:
    """Append the rows of one chunk that hold a value; returns the last row number seen.

    The fast path needs every row and cell to carry its ``r`` first, as Excel, LibreOffice,
    openpyxl and XlsxWriter write them; anything else is parsed cell by cell.
    """
    if fast is not None and not sx.no_r_re.search(chunk):
        by_row: dict[bytes, dict[int, Value]] = {}
        cell_value = sx.cell_value
        v_open, v_close = sx.v_open, sx.v_close
        strings = sst.strings
        col_get = _COL_INDEX.get
        cur: bytes = b""
        d: dict[int, Value] = {}
        v: Value | None
        for letters, num, attrs, vtext, itext, inner in fast.findall(chunk):
            if vtext:
                if not attrs:
                    try:
                        v = int(vtext)
                    except ValueError:
                        v = _number(vtext)
                elif b't="s"' in attrs:
                    try:
                        v = strings[int(vtext)]
                    except (IndexError, ValueError):
                        v = None
                    if v is None:
                        v = sst.get(int(vtext)) if vtext.isdigit() else None
                    if not v:
                        continue
                elif b"t=" not in attrs or b't="n"' in attrs:
                    v = _number(vtext)
                else:
                    v = cell_value(attrs, v_open + vtext + v_close, sst)
            elif itext:
                if b"&" in itext or b"_x" in itext or b"\r" in itext:
                    v = _xml_text(itext)
                else:
                    v = itext.decode("utf-8")
            elif inner:
                v = cell_value(attrs, inner, sst)
            else:
                continue
            if v is None:
                continue
            if num != cur:
                cur = num
                d = by_row.get(num) or by_row.setdefault(num, {})
            d[col_get(letters) or _col_of(letters)] = v
        if by_row and len(by_row) == chunk.count(sx.row_tag):      # every row holds a wanted value
            rows.extend([Row(int(nb), d) for nb, d in by_row.items()])
            return int(next(reversed(by_row)))
        value_re = sx.value_re
        for nb in sx.row_num_re.findall(chunk):
            d = by_row.get(nb)  # type: ignore[assignment]
            if d is not None:
                rows.append(Row(int(nb), d))
            else:
                start = chunk.find(sx.row_r + nb + b'"')
                end = chunk.find(sx.row_tag, start + 1)
                body = chunk[start:end if end >= 0 else len(chunk)]
                if value_re.search(body) and _parse_cells(body, sx, sst, set())[1]:
                    rows.append(Row(int(nb), {}))
            last_r = int(nb)
        return last_r
    for r, _s0, s1, e in _row_spans(chunk, sx):
        r = r if r is not None else last_r + 1
        last_r = r
        if e == s1:
            continue
        vals, any_value = _parse_cells(chunk[s1:e], sx, sst, wanted)
        if any_value:
            rows.append(Row(r, vals))
    return last_r


# --------------------------------------------------------------------------------------------
# Encoding new cells


def _encode_value(value: object, where: str) -> tuple[bytes, str] | None:
    """(t attribute, payload) of a new cell; None for no cell.  Bad input is Refused."""
    if value is None:
        return None
    if isinstance(value, bool):
        return b"b", "1" if value else "0"
    if isinstance(value, numbers.Integral):
        n = int(value)
        digits = str(abs(n))
        if len(digits.rstrip("0")) > 15 or len(digits) > 300:
            return b"inlineStr", str(n)
        return b"", str(n)
    if isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f):
            return b"inlineStr", str(f)
        return b"", repr(f)
    if isinstance(value, str):
        if len(value) > MAX_CELL_CHARS:
            raise Refused(f"{where}: text of {len(value):,} characters is over Excel's limit of {MAX_CELL_CHARS:,}",
                          detail="Shorten the value in run_metadata.json.")
        m = _ILLEGAL_XML_RE.search(value)
        if m:
            raise Refused(f"{where}: the text holds the character U+{ord(m.group()):04X}, which a workbook cannot "
                          "store", detail="Remove control characters from the value in run_metadata.json.")
        if value == "":
            return None
        return b"inlineStr", value
    raise Refused(f"{where}: cannot store a {type(value).__name__} in the sheet (numbers, booleans and text only)")


def _encode_rows(rows: list[dict[int, Value]]) -> list[list[tuple[int, bytes, str]]]:
    out = []
    for i, row in enumerate(rows):
        cells = []
        for col, value in row.items():
            if isinstance(col, bool) or not isinstance(col, int) or not 1 <= col <= MAX_COL:
                raise Refused(f"row {i + 1}: column {col!r} is not a column index 1..{MAX_COL}")
            enc = _encode_value(value, f"row {i + 1}, column {col_letters(col)}")
            if enc is not None:
                cells.append((col, enc[0], enc[1]))
        cells.sort()
        out.append(cells)
    return out


def _cell_xml(p: bytes, ref: str, t: bytes, payload: str, style: bytes | None) -> bytes:
    s = b' s="' + style + b'"' if style else b""
    if t == b"inlineStr":
        return (b"<" + p + b'c r="' + ref.encode() + b'"' + s + b' t="inlineStr"><' + p + b"is><" + p
                + b't xml:space="preserve">' + _escape_text(payload).encode("utf-8") + b"</" + p + b"t></" + p
                + b"is></" + p + b"c>")
    tt = b' t="' + t + b'"' if t else b""
    return b"<" + p + b'c r="' + ref.encode() + b'"' + s + tt + b"><" + p + b"v>" + payload.encode() + b"</" + p \
        + b"v></" + p + b"c>"


# --------------------------------------------------------------------------------------------
# Attribute and range edits on small elements


def _attr_re(name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"(\s" + re.escape(name) + rb"""\s*=\s*)(["'])(.*?)\2""", re.S)


def _get_attr(tag: bytes, name: bytes) -> str | None:
    m = _attr_re(name).search(tag)
    return m.group(3).decode("utf-8") if m else None


def _set_attr(tag: bytes, name: bytes, value: str) -> bytes:
    rx = _attr_re(name)
    enc = _escape_attr(value).encode("utf-8")
    return rx.sub(lambda m: m.group(1) + m.group(2) + enc + m.group(2), tag, count=1)


def _grow(text: str, contains_row: int, cols: tuple[int, int], new_last: int) -> str | None:
    """A range that holds ``contains_row`` and shares a column with ``cols``, grown down to ``new_last``."""
    try:
        rg = _Range.parse(text)
    except ValueError:
        return None
    if not (rg.r1 <= contains_row <= rg.r2) or rg.c2 < cols[0] or rg.c1 > cols[1] or rg.r2 >= new_last:
        return None
    if rg.r2 == MAX_ROW:
        return None
    rg.r2 = new_last
    return str(rg)


# --------------------------------------------------------------------------------------------
# Writing the zip

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sBBBBHHHHIIIHHHHHII")
_EOCD = struct.Struct("<4sHHHHIIH")
_LIMIT = 0xFFFFFFFF


def _dos_time(dt: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    y, mo, d, h, mi, s = dt
    if y < 1980:
        y, mo, d, h, mi, s = 1980, 1, 1, 0, 0, 0
    return (h << 11) | (mi << 5) | (s // 2), ((y - 1980) << 9) | (mo << 5) | d


Replacement = bytes | Callable[[], Iterable[bytes]]


def _write_package(pkg: _Package, out: BinaryIO, replace: dict[str, Replacement], drop: set[str],
                   level: int = SHEET_COMPRESSLEVEL) -> None:
    """Write the package to ``out``: replaced members deflated anew, the others copied raw."""
    central: list[bytes] = []
    for info in pkg.infos:
        name = info.filename
        if name in drop:
            continue
        offset = out.tell()
        try:
            fname = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        except UnicodeEncodeError:
            fname = info.orig_filename.encode("utf-8")
        flags = info.flag_bits & ~0x8
        t, d = _dos_time(info.date_time)
        if name in replace:
            rep = replace[name]
            method = zipfile.ZIP_DEFLATED
            flags &= 0x800
            out.write(_LOCAL.pack(b"PK\x03\x04", 20, flags, method, t, d, 0, 0, 0, len(fname), 0) + fname)
            comp = zlib.compressobj(level if callable(rep) else SMALL_COMPRESSLEVEL, zlib.DEFLATED, -15)
            crc = usize = csize = 0
            for piece in ([rep] if isinstance(rep, bytes) else rep()):
                if not piece:
                    continue
                crc = zlib.crc32(piece, crc)
                usize += len(piece)
                z = comp.compress(piece)
                csize += len(z)
                out.write(z)
            z = comp.flush()
            csize += len(z)
            out.write(z)
            if usize >= _LIMIT or csize >= _LIMIT:
                raise _damaged(pkg.path, f"part {name} would be over 4 GB, which sop does not write")
            end = out.tell()
            out.seek(offset + 14)
            out.write(struct.pack("<III", crc, csize, usize))
            out.seek(end)
        else:
            method, crc, csize, usize = info.compress_type, info.CRC, info.compress_size, info.file_size
            out.write(_LOCAL.pack(b"PK\x03\x04", max(info.extract_version, 20), flags, method, t, d, crc, csize,
                                  usize, len(fname), 0) + fname)
            pkg.f.seek(info.header_offset)
            lh = pkg.f.read(30)
            if len(lh) < 30 or lh[:4] != b"PK\x03\x04":
                raise _damaged(pkg.path, f"zip member {name} has a bad local header")
            n, e = struct.unpack("<HH", lh[26:30])
            pkg.f.seek(info.header_offset + 30 + n + e)
            left = csize
            while left:
                b = pkg.f.read(min(left, CHUNK))
                if not b:
                    raise _damaged(pkg.path, f"zip member {name} is truncated")
                out.write(b)
                left -= len(b)
        if offset >= _LIMIT:
            raise _damaged(pkg.path, "the workbook would be over 4 GB, which sop does not write")
        version = max(info.extract_version, 20) if name not in replace else 20
        central.append(_CENTRAL.pack(b"PK\x01\x02", info.create_version, info.create_system, version, 0, flags,
                                     method, t, d, crc, csize, usize, len(fname), 0, len(info.comment), 0,
                                     info.internal_attr, info.external_attr, offset) + fname + info.comment)
    start = out.tell()
    for c in central:
        out.write(c)
    size = out.tell() - start
    if len(central) >= 0xFFFF or start >= _LIMIT:
        raise _damaged(pkg.path, "the workbook would need ZIP64, which sop does not write")
    comment = pkg.zf.comment or b""
    out.write(_EOCD.pack(b"PK\x05\x06", 0, 0, len(central), len(central), size, start, len(comment)) + comment)


# --------------------------------------------------------------------------------------------
# Pass 1: scan the master sheet before a write

@dataclass
class _Scan:
    seg: _Segments
    sx: _Sx
    last_content_row: int = 0      # the last row holding a value or a formula
    last_content_end: int = 0      # offset, in the sheetData body, just after that row's element
    max_row: int = 0
    body_len: int = 0


def _check_chunk(chunk: bytes, sx: _Sx, pkg: _Package, part: str) -> None:
    if b"xmlns" in chunk:
        raise _damaged(pkg.path, f"{part} holds a namespace declaration among its rows, which sop does not edit",
                       "Open and re-save the workbook in Excel.")
    if sx.no_r_re.search(chunk):
        raise _damaged(pkg.path, f"{part} has rows or cells without an r attribute, which sop does not edit",
                       "Open and re-save the workbook in Excel.")


_VALIDATOR = r"""
import sys, zipfile, zlib
from xml.parsers import expat
path, member = sys.argv[1], sys.argv[2]
p = expat.ParserCreate()
odd = []
p.CommentHandler = lambda *a: odd.append("an XML comment")
p.ProcessingInstructionHandler = lambda *a: odd.append("a processing instruction")
p.StartCdataSectionHandler = lambda *a: odd.append("a CDATA section")
p.StartDoctypeDeclHandler = lambda *a: odd.append("a DOCTYPE")
try:
    with zipfile.ZipFile(path) as z, z.open(member) as f:
        while not odd:
            b = f.read(1 << 22)
            p.Parse(b, not b)
            if not b:
                break
except expat.ExpatError as e:
    print(f"is not well-formed XML ({e})")
    sys.exit(3)
except (OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as e:
    print(f"cannot be inflated ({e})")
    sys.exit(3)
if odd:
    print(f"holds {odd[0]}, which sop does not edit")
    sys.exit(3)
"""


class _Validator:
    """Runs expat over the worksheet part in a child process, on the other core, while we rewrite it.

    Expat costs as much as the rest of an append together and holds the GIL, so on a machine
    with two or more cores it runs beside the two passes; ``join`` is called before the new file
    replaces the old one.  With one core, a part small enough that starting a child costs more
    than it saves, or when no child can be started, validation runs in process (``inline``).
    """

    def __init__(self, pkg: _Package, part: str) -> None:
        self.pkg, self.part = pkg, part
        self.proc: subprocess.Popen[bytes] | None = None
        if ((os.cpu_count() or 1) < 2 or not sys.executable or getattr(sys, "frozen", False)
                or pkg.names[part].file_size < VALIDATOR_MIN_BYTES):
            return
        try:
            self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _VALIDATOR, os.fspath(pkg.path), part],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError:
            self.proc = None

    @property
    def inline(self) -> bool:
        return self.proc is None

    def join(self) -> None:
        if self.proc is None:
            return
        out, _err = self.proc.communicate()
        code = self.proc.returncode
        self.proc = None
        if code == 3:
            raise _damaged(self.pkg.path, f"{self.part} {out.decode(errors='replace').strip()}",
                           "Open and re-save it in Excel, or restore it from a backup.")
        if code != 0:   # the child itself failed (killed, no memory…): check in process instead
            seg = _Segments()
            for _ in _iter_sheet(self.pkg, self.part, True, seg):
                pass
            _check_odd(self.pkg, self.part, seg)

    def cancel(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate()
            self.proc = None


def _scan(pkg: _Package, part: str, validate: bool = True) -> _Scan:
    """Check the part's shape, find the last row holding content, and (``validate``) run expat over it."""
    seg = _Segments()
    scan: _Scan | None = None
    offset = 0
    prev = 0
    for chunk in _iter_sheet(pkg, part, validate, seg):
        sx = seg.sx
        assert sx is not None
        if scan is None:
            scan = _Scan(seg, sx)
        _check_odd(pkg, part, seg)
        _check_chunk(chunk, sx, pkg, part)
        nums = list(map(int, sx.row_num_re.findall(chunk)))
        if nums:
            if nums[0] <= prev or nums[-1] > MAX_ROW or not all(map(operator.lt, nums, nums[1:])):
                bad = next((b for a, b in zip([prev, *nums], nums, strict=False) if b <= a), nums[-1])
                raise _damaged(pkg.path, f"{part} has row {bad} out of order or past the last row",
                               "Open and re-save the workbook in Excel.")
            prev = nums[-1]
            scan.max_row = nums[-1]
        end = len(chunk)
        while end > 0:
            s0 = chunk.rfind(sx.row_tag, 0, end)
            if s0 < 0:
                break
            if sx.content_re.search(chunk, s0, end):
                m = sx.row_re.match(chunk, s0)
                rm = sx.row_num_re.match(chunk, s0)
                if m is None or rm is None:
                    raise _damaged(pkg.path, f"{part}: a row cannot be parsed")
                if m.group(2):
                    row_end = m.end()
                else:
                    row_end = chunk.find(sx.row_end, m.end(), end)
                    if row_end < 0:
                        raise _damaged(pkg.path, f"{part}: row {rm.group(1).decode()} has no end tag")
                    row_end += len(sx.row_end)
                scan.last_content_row = int(rm.group(1))
                scan.last_content_end = offset + row_end
                break
            end = s0
        offset += len(chunk)
    if scan is None:   # no rows at all
        assert seg.sx is not None
        scan = _Scan(seg, seg.sx)
    scan.body_len = offset
    _check_odd(pkg, part, seg)
    return scan


def _check_odd(pkg: _Package, part: str, seg: _Segments) -> None:
    """Refuse comments, processing instructions and CDATA anywhere in the part."""
    for _at, what in seg.oddities:
        raise _damaged(pkg.path, f"{part} holds {what}, which sop does not edit",
                       "Open and re-save the workbook in Excel.")


def _sheet_tables(pkg: _Package, part: str) -> list[str]:
    return [r.target for r in pkg.rels(part) if r.type == REL_TABLE and not r.external and r.target in pkg.names]


# --------------------------------------------------------------------------------------------
# Appending


def _merge_row(row_xml: bytes, number: int, cells: list[tuple[int, bytes, str]], sx: _Sx,
               pkg: _Package) -> bytes:
    """Put new cells into an empty (formatted) row element, keeping its attributes and cell styles."""
    p = sx.prefix
    m = sx.row_re.match(row_xml)
    if not m:
        raise _damaged(pkg.path, f"row {number} cannot be parsed")
    attrs = m.group(1) or b""
    body = b"" if m.group(2) else row_xml[m.end():len(row_xml) - len(sx.row_end)]
    existing: dict[int, bytes] = {}
    for cm in sx.cell_re.finditer(body):
        a = cm.group(1) or b""
        rm = sx.cell_r_re.search(a)
        if not rm:
            raise _damaged(pkg.path, f"row {number} has a cell without an r attribute")
        existing[col_index(rm.group(1))] = cm.group(0)
    if sx.cell_re.sub(b"", body).strip():
        raise _damaged(pkg.path, f"row {number} holds something other than cells, which sop does not edit")
    out: dict[int, bytes] = dict(existing)
    for col, t, payload in cells:
        style = None
        old = existing.get(col)
        if old is not None:
            sm = sx.cell_s_re.search(old[:old.find(b">") + 1])
            style = sm.group(1) if sm else None
        out[col] = _cell_xml(p, f"{col_letters(col)}{number}", t, payload, style)
    spans = _get_attr(attrs, b"spans")
    if spans and cells and re.fullmatch(r"\d+:\d+", spans):
        a, b = (int(x) for x in spans.split(":"))
        attrs = _set_attr(attrs, b"spans", f"{min(a, cells[0][0])}:{max(b, cells[-1][0])}")
    return b"<" + p + b"row" + attrs + b">" + b"".join(out[c] for c in sorted(out)) + b"</" + p + b"row>"


def _new_row_xml(p: bytes, number: int, cells: list[tuple[int, bytes, str]]) -> bytes:
    return (b"<" + p + b'row r="' + str(number).encode() + b'">'
            + b"".join(_cell_xml(p, f"{col_letters(c)}{number}", t, v, None) for c, t, v in cells)
            + b"</" + p + b"row>")


def _append_rest(rest: bytes, first: int, encoded: list[list[tuple[int, bytes, str]]], sx: _Sx,
                 pkg: _Package) -> bytes:
    """The sheetData body after the last content row: empty rows merged with the new ones."""
    existing: list[tuple[int, bytes]] = []
    pos = 0
    for r, s0, _s1, e in _row_spans(rest, sx):
        if rest[pos:s0].strip():
            raise _damaged(pkg.path, "the sheet data holds something other than rows, which sop does not edit")
        existing.append((r or 0, rest[s0:e]))
        pos = e
    if rest[pos:].strip():
        raise _damaged(pkg.path, "the sheet data holds something other than rows, which sop does not edit")
    out: list[bytes] = []
    new = {first + i: cells for i, cells in enumerate(encoded)}
    pending = sorted(new)
    for r, xml in existing:
        while pending and pending[0] < r:
            n = pending.pop(0)
            out.append(_new_row_xml(sx.prefix, n, new[n]))
        if pending and pending[0] == r:
            pending.pop(0)
            out.append(_merge_row(xml, r, new[r], sx, pkg))
        else:
            out.append(xml)
    for n in pending:
        out.append(_new_row_xml(sx.prefix, n, new[n]))
    return b"".join(out)


def _grow_dimension(head: bytes, sx: _Sx, last_row: int, cols: tuple[int, int]) -> bytes:
    m = re.search(rb"<" + re.escape(sx.prefix) + rb"dimension\b[^>]*>", head)
    if not m:
        return head
    ref = _get_attr(m.group(0), b"ref")
    try:
        rg = _Range.parse(ref or "")
    except ValueError:
        return head
    grown = _Range(min(rg.c1, cols[0]), rg.r1, max(rg.c2, cols[1]), max(rg.r2, last_row))
    if str(grown) == ref:
        return head
    return head[:m.start()] + _set_attr(m.group(0), b"ref", str(grown)) + head[m.end():]


def _grow_ranges_in(xml: bytes, tag_re: re.Pattern[bytes], contains_row: int, cols: tuple[int, int],
                    new_last: int) -> bytes:
    def fix(m: re.Match[bytes]) -> bytes:
        tag = m.group(0)
        ref = _get_attr(tag, b"ref")
        grown = _grow(ref, contains_row, cols, new_last) if ref else None
        return _set_attr(tag, b"ref", grown) if grown else tag
    return tag_re.sub(fix, xml)


def _tag_re(prefix: bytes, name: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"<" + re.escape(prefix) + name + rb"\b[^>]*>")


def append_rows(path: str | os.PathLike[str], worksheet: str | None,
                rows: list[dict[int, Value]],
                before_replace: Callable[[list[int], os.stat_result], None] | None = None) -> list[int]:
    """Append rows after the last row holding content; returns their Excel row numbers.

    Args:
        path: the workbook.
        worksheet: the master worksheet's name; None or "" means the first worksheet.
        rows: each a {1-based column index: value}; None values are skipped.
        before_replace: called with the row numbers and the new file's stat
            just before it replaces the old one (see :func:`fsops.atomic_write`).

    Raises:
        Refused: a value cannot be stored (type, illegal character, over 32,767 characters).
        SheetDamaged: the workbook cannot be edited safely; it is left untouched.
        PermissionError: the file cannot be replaced (locked); it is left untouched.
    """
    encoded = _encode_rows(rows)
    if not rows:
        return []
    with _editing(path, worksheet) as (pkg, info, validator, scan):
        sx = scan.sx
        first = _clear_of_merges(scan.seg.tail, sx, scan.last_content_row + 1, len(rows))
        numbers = list(range(first, first + len(rows)))
        if numbers[-1] > MAX_ROW:
            raise Refused(f"the Master Sheet is full: row {numbers[-1]} is past Excel's last row {MAX_ROW:,}")
        used = [c for cells in encoded for c, _, _ in cells]
        cols = (min(used), max(used)) if used else (1, 1)
        head = _grow_dimension(scan.seg.head, sx, numbers[-1], cols)
        tail = scan.seg.tail
        anchor = scan.last_content_row or first
        tail = _grow_ranges_in(tail, _tag_re(sx.prefix, b"autoFilter"), anchor, cols, numbers[-1])
        replace: dict[str, Replacement] = {}
        for tpart in _sheet_tables(pkg, info.part):
            txml = pkg.read(tpart)
            new = _grow_table(pkg, tpart, txml, anchor, cols, numbers[-1])
            if new != txml:
                replace[tpart] = new
        if scan.seg.selfclosing:
            head = head[:-2].rstrip() + b">"
            tail = b"</" + sx.prefix + b"sheetData>" + tail

        def body() -> Iterator[bytes]:
            yield head
            seg2 = _Segments()
            offset = 0
            rest: list[bytes] = []
            for chunk in _iter_sheet(pkg, info.part, False, seg2):
                n = len(chunk)
                if offset + n <= scan.last_content_end:
                    yield chunk
                elif offset >= scan.last_content_end:
                    rest.append(chunk)
                else:
                    cut = scan.last_content_end - offset
                    yield chunk[:cut]
                    rest.append(chunk[cut:])
                offset += n
            if offset != scan.body_len:
                raise _damaged(pkg.path, f"{info.part} changed while it was being rewritten")
            yield _append_rest(b"".join(rest), first, encoded, sx, pkg)
            yield tail

        replace[info.part] = body

        def write(f: BinaryIO) -> None:
            try:
                _write_package(pkg, f, replace, set())
                validator.join()
            finally:
                pkg.close()

        hook = None if before_replace is None else (lambda st: before_replace(numbers, st))
        fsops.atomic_write(path, write, hook)
        return numbers


@contextlib.contextmanager
def _editing(path: str | os.PathLike[str], worksheet: str | None
             ) -> Iterator[tuple[_Package, _SheetInfo, _Validator, _Scan]]:
    """Open a workbook for a rewrite of its master sheet: the package, the sheet, the XML check
    started beside the rewrite, and the first scan.  The check is cancelled and the package
    closed however the rewrite ends (a finished rewrite has joined the check already)."""
    pkg = _Package(path)
    validator: _Validator | None = None
    try:
        info = pkg.sheet(worksheet)
        validator = _Validator(pkg, info.part)
        yield pkg, info, validator, _scan(pkg, info.part, validator.inline)
    finally:
        if validator is not None:
            validator.cancel()
        pkg.close()


def _clear_of_merges(tail: bytes, sx: _Sx, first: int, count: int) -> int:
    """The first row from ``first`` where ``count`` new rows overlap no merged range (they would hide)."""
    spans = []
    for m in re.finditer(rb"<" + re.escape(sx.prefix) + rb"mergeCell\b[^>]*>", tail):
        ref = _get_attr(m.group(0), b"ref")
        try:
            rg = _Range.parse(ref or "")
        except ValueError:
            continue
        spans.append((rg.r1, rg.r2))
    moved = True
    while moved:
        moved = False
        for r1, r2 in spans:
            if r1 <= first + count - 1 and r2 >= first:
                first = r2 + 1
                moved = True
    return first


def _grow_table(pkg: _Package, part: str, xml: bytes, anchor: int, cols: tuple[int, int], new_last: int) -> bytes:
    """A table part whose range grows to ``new_last`` when it holds the last content row."""
    m = re.search(rb"<([A-Za-z_][\w.-]*:)?table\b[^>]*>", xml)
    if not m:
        raise _damaged(pkg.path, f"table part {part} has no <table> element")
    prefix = m.group(1) or b""
    tag = m.group(0)
    ref = _get_attr(tag, b"ref")
    grown = _grow(ref, anchor, cols, new_last) if ref else None
    if not grown:
        return xml
    totals = _get_attr(tag, b"totalsRowCount")
    if totals and totals != "0":
        raise _damaged(pkg.path, f"table {_get_attr(tag, b'name')!r} has a totals row; sop cannot append below it",
                       "Turn off the table's Total Row in Excel, or move it.")
    new_tag = _set_attr(tag, b"ref", grown)
    xml = xml[:m.start()] + new_tag + xml[m.end():]
    af = _tag_re(prefix, b"autoFilter")
    return af.sub(lambda a: _set_attr(a.group(0), b"ref", grown) if _get_attr(a.group(0), b"ref") == ref
                  else a.group(0), xml, count=1)


# --------------------------------------------------------------------------------------------
# Creating a workbook

_CT = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
       b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
       b'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
       b'<Default Extension="xml" ContentType="application/xml"/>'
       b'<Override PartName="/xl/workbook.xml" '
       b'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
       b'<Override PartName="/xl/worksheets/sheet1.xml" '
       b'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
       b'<Override PartName="/xl/styles.xml" '
       b'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
       b'<Override PartName="/docProps/core.xml" '
       b'ContentType="application/vnd.openxmlformats-package.core-properties+xml"/>'
       b'<Override PartName="/docProps/app.xml" '
       b'ContentType="application/vnd.openxmlformats-officedocument.extended-properties+xml"/>'
       b"</Types>")
_ROOT_RELS = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
              b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
              b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
              b'officeDocument" Target="xl/workbook.xml"/>'
              b'<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/'
              b'core-properties" Target="docProps/core.xml"/>'
              b'<Relationship Id="rId3" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
              b'extended-properties" Target="docProps/app.xml"/>'
              b"</Relationships>")
_APP = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        b'<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/extended-properties" '
        b'xmlns:vt="http://schemas.openxmlformats.org/officeDocument/2006/docPropsVTypes">'
        b"<Application>sop</Application></Properties>")
_WORKBOOK = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
             b'<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
             b'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
             b'<bookViews><workbookView/></bookViews>'
             b'<sheets><sheet name="Master" sheetId="1" r:id="rId1"/></sheets></workbook>')
_WORKBOOK_RELS = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                  b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                  b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
                  b'relationships/worksheet" Target="worksheets/sheet1.xml"/>'
                  b'<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
                  b'relationships/styles" Target="styles.xml"/>'
                  b"</Relationships>")
_STYLES = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
           b'<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
           b'<fonts count="2"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font>'
           b'<font><b/><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>'
           b'<fills count="2"><fill><patternFill patternType="none"/></fill>'
           b'<fill><patternFill patternType="gray125"/></fill></fills>'
           b'<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
           b'<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
           b'<cellXfs count="2"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
           b'<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/></cellXfs>'
           b'<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
           b"</styleSheet>")


def _core_xml(now: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:dcterms="http://purl.org/dc/terms/" '
            'xmlns:dcmitype="http://purl.org/dc/dcmitype/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            '<dc:creator>sop</dc:creator>'
            f'<dcterms:created xsi:type="dcterms:W3CDTF">{now}</dcterms:created>'
            f'<dcterms:modified xsi:type="dcterms:W3CDTF">{now}</dcterms:modified>'
            "</cp:coreProperties>").encode()


def create_workbook(path: str | os.PathLike[str], headers: list[str], *, worksheet: str = "Master",
                    exist_ok: bool = False) -> None:
    """Write a new minimal workbook: one worksheet with the header row (bold), frozen below it.

    Raises:
        FileExistsError: ``path`` exists and ``exist_ok`` is false (``sop init`` never rewrites a sheet).
        Refused: a header cannot be stored.
    """
    import datetime
    import io

    if not exist_ok and os.path.lexists(path):
        raise FileExistsError(f"{os.fspath(path)} already exists")
    if not headers:
        raise Refused("a Master Sheet needs at least one header")
    cells = _encode_rows([{i + 1: h for i, h in enumerate(headers)}])[0]
    if not 0 < len(worksheet) <= 31 or re.search(r"[\[\]:*?/\\]", worksheet):
        raise Refused(f"{worksheet!r} is not a valid worksheet name")
    last = col_letters(len(headers))
    row = (b'<row r="1">' + b"".join(_cell_xml(b"", f"{col_letters(c)}1", t, v, b"1") for c, t, v in cells)
           + b"</row>")
    sheet = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
             b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
             b'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
             b'<dimension ref="A1:' + last.encode() + b'1"/>'
             b'<sheetViews><sheetView tabSelected="1" workbookViewId="0">'
             b'<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
             b'<selection pane="bottomLeft" activeCell="A2" sqref="A2"/></sheetView></sheetViews>'
             b'<sheetFormatPr defaultRowHeight="15"/>'
             b"<sheetData>" + row + b"</sheetData>"
             b'<pageMargins left="0.7" right="0.7" top="0.75" bottom="0.75" header="0.3" footer="0.3"/>'
             b"</worksheet>")
    workbook = _WORKBOOK.replace(b'name="Master"', b'name="' + _escape_attr(worksheet).encode() + b'"')
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in (("[Content_Types].xml", _CT), ("_rels/.rels", _ROOT_RELS),
                           ("docProps/app.xml", _APP), ("docProps/core.xml", _core_xml(now)),
                           ("xl/workbook.xml", workbook), ("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS),
                           ("xl/styles.xml", _STYLES), ("xl/worksheets/sheet1.xml", sheet)):
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    fsops.atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# Removing rows: the row map and formula references


class _RowMap:
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
        rg = _Range.parse(text)
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


def shift_formula(text: str, rows: _RowMap, own: str, *, anchor: tuple[int, int] | None = None) -> str:
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


# --------------------------------------------------------------------------------------------
# Removing rows: everything outside <sheetData>

NS_X14 = "http://schemas.microsoft.com/office/spreadsheetml/2009/9/main"
NS_XM = "http://schemas.microsoft.com/office/excel/2006/main"
_REFUSE_ON_REMOVE = {"scenarios": "scenarios", "dataConsolidate": "a data consolidation",
                     "smartTags": "smart tags"}


def _decl(head: bytes) -> bytes:
    """The bytes before the root element (XML declaration, BOM)."""
    m = _ROOT_RE.search(head)
    while m and head[m.start() + 1:m.start() + 2] in (b"?", b"!"):
        m = _ROOT_RE.search(head, m.end())
    return head[:m.start()] if m else b""


def _remove_outside_rows(pkg: _Package, head: bytes, tail: bytes, rows: _RowMap, own: str) -> tuple[bytes, bytes]:
    """Move every range in the worksheet part outside its rows (lxml on head + tail, no rows)."""
    from lxml import etree

    doc = head + tail
    root = _xml_root(doc, pkg.path, "the master worksheet")
    M = f"{{{NS_MAIN}}}"
    XM = f"{{{NS_XM}}}"
    X14 = f"{{{NS_X14}}}"

    for name, what in _REFUSE_ON_REMOVE.items():
        if root.find(M + name) is not None:
            raise _damaged(pkg.path, f"the master worksheet holds {what}, which sop cannot move when removing rows",
                           "Remove the row in Excel instead.")

    def drop(el: etree._Element) -> None:
        parent = el.getparent()
        if parent is not None:
            parent.remove(el)

    def fix_attr(el: etree._Element, attr: str, is_sqref: bool = False) -> bool:
        """Move a ref/sqref attribute; False when nothing of it is left."""
        v = el.get(attr)
        if v is None:
            return True
        try:
            nv = rows.sqref(v) if is_sqref else rows.range(v)
        except ValueError:
            raise _damaged(pkg.path, f"the master worksheet has a range {v!r} that sop cannot read") from None
        if nv is None:
            return False
        if nv != v:
            el.set(attr, nv)
        return True

    def anchor_of(sqref: str | None, new_sqref: str | None) -> tuple[int, int] | None:
        if not sqref or not new_sqref:
            return None
        old = min(_Range.parse(t).r1 for t in sqref.split())
        new = min(_Range.parse(t).r1 for t in new_sqref.split())
        return old, new

    def fix_text(el: etree._Element, anchor: tuple[int, int] | None) -> None:
        if el.text:
            nt = shift_formula(el.text, rows, own, anchor=anchor)
            if nt != el.text:
                el.text = nt

    dim = root.find(M + "dimension")
    if dim is not None and not fix_attr(dim, "ref"):
        dim.set("ref", "A1")

    merges = root.find(M + "mergeCells")
    if merges is not None:
        for mc in list(merges.findall(M + "mergeCell")):
            if not fix_attr(mc, "ref") or ":" not in mc.get("ref", ""):
                drop(mc)
        left = len(merges.findall(M + "mergeCell"))
        if not left:
            drop(merges)
        elif merges.get("count") is not None:
            merges.set("count", str(left))

    for cf in list(root.findall(M + "conditionalFormatting")):
        old = cf.get("sqref")
        if not fix_attr(cf, "sqref", True):
            drop(cf)
            continue
        anchor = anchor_of(old, cf.get("sqref"))
        for f in cf.iter(M + "formula"):
            fix_text(f, anchor)

    dvs = root.find(M + "dataValidations")
    if dvs is not None:
        for dv in list(dvs.findall(M + "dataValidation")):
            old = dv.get("sqref")
            if not fix_attr(dv, "sqref", True):
                drop(dv)
                continue
            anchor = anchor_of(old, dv.get("sqref"))
            for tag in ("formula1", "formula2"):
                for f in dv.findall(M + tag):
                    fix_text(f, anchor)
        left = len(dvs.findall(M + "dataValidation"))
        if not left:
            drop(dvs)
        elif dvs.get("count") is not None:
            dvs.set("count", str(left))

    links = root.find(M + "hyperlinks")
    if links is not None:
        for h in list(links.findall(M + "hyperlink")):
            if not fix_attr(h, "ref"):
                drop(h)
        if not len(links.findall(M + "hyperlink")):
            drop(links)

    af = root.find(M + "autoFilter")
    if af is not None:
        if not fix_attr(af, "ref"):
            drop(af)
        else:
            for el in af.iter(M + "sortState", M + "sortCondition"):
                if not fix_attr(el, "ref"):
                    drop(el)
    for el in root.findall(M + "sortState"):
        if not fix_attr(el, "ref"):
            drop(el)
        else:
            for sc in el.iter(M + "sortCondition"):
                if not fix_attr(sc, "ref"):
                    drop(sc)

    for container, item, attr in (("protectedRanges", "protectedRange", "sqref"),
                                  ("ignoredErrors", "ignoredError", "sqref"),
                                  ("cellWatches", "cellWatch", "r")):
        box = root.find(M + container)
        if box is None:
            continue
        for el in list(box.findall(M + item)):
            if not fix_attr(el, attr, attr == "sqref"):
                drop(el)
        if not len(box.findall(M + item)):
            drop(box)

    breaks = root.find(M + "rowBreaks")
    if breaks is not None:
        for brk in list(breaks.findall(M + "brk")):
            n = rows.row(int(brk.get("id", "0") or 0)) if (brk.get("id") or "0").isdigit() else None
            if n is None:
                drop(brk)
            elif str(n) != brk.get("id"):
                brk.set("id", str(n))
        left = breaks.findall(M + "brk")
        if not left:
            drop(breaks)
        else:
            if breaks.get("count") is not None:
                breaks.set("count", str(len(left)))
            if breaks.get("manualBreakCount") is not None:
                breaks.set("manualBreakCount", str(sum(1 for b in left if b.get("man") in ("1", "true"))))

    # extension lists: 2010 conditional formats and validations, sparklines
    for sq in list(root.iter(XM + "sqref")):
        owner = sq.getparent()
        old = (sq.text or "").strip()
        try:
            new = rows.sqref(old) if old else None
        except ValueError:
            raise _damaged(pkg.path, f"the master worksheet has a range {old!r} that sop cannot read") from None
        if new is None:
            box = owner.getparent() if owner is not None else None
            drop(owner)
            if box is not None and box.tag in (X14 + "conditionalFormattings", X14 + "dataValidations",
                                               X14 + "sparklines") and not len(box):
                grand = box.getparent()
                drop(box)
                if grand is not None and grand.tag == X14 + "sparklineGroup" and not len(grand):
                    drop(grand)
            continue
        if new != old:
            sq.text = new
        if owner is not None and owner.tag in (X14 + "conditionalFormatting", X14 + "dataValidation"):
            anchor = anchor_of(old, new)
            for f in owner.iter(XM + "f"):
                fix_text(f, anchor)
        elif owner is not None:
            for f in owner.iter(XM + "f"):
                fix_text(f, None)
    dvs14 = root.find(f".//{X14}dataValidations")
    if dvs14 is not None and dvs14.get("count") is not None:
        dvs14.set("count", str(len(dvs14.findall(X14 + "dataValidation"))))

    body = etree.tostring(root, encoding="UTF-8", xml_declaration=False)
    p = (root.prefix + ":") if root.prefix else ""
    marker = f"<{p}sheetData/>".encode()
    i = body.find(marker)
    if i < 0 or body.find(marker, i + 1) >= 0:
        raise _damaged(pkg.path, "the master worksheet could not be rewritten around its rows")
    return (_decl(head) + body[:i] + f"<{p}sheetData>".encode(),
            f"</{p}sheetData>".encode() + body[i + len(marker):])


def _shift_table(pkg: _Package, part: str, xml: bytes, rows: _RowMap) -> bytes:
    """A table part after row removal: its ref, autofilter and sort state move or shrink."""
    m = re.search(rb"<([A-Za-z_][\w.-]*:)?table\b[^>]*>", xml)
    if not m:
        raise _damaged(pkg.path, f"table part {part} has no <table> element")
    prefix = m.group(1) or b""
    tag = m.group(0)
    name = _get_attr(tag, b"displayName") or _get_attr(tag, b"name") or part
    ref = _get_attr(tag, b"ref")
    if not ref:
        raise _damaged(pkg.path, f"table {name!r} has no range")
    rg = _Range.parse(ref)
    if rg.r2 < rows.first:
        return xml
    header = (_get_attr(tag, b"headerRowCount") or "1") != "0"
    totals = int(_get_attr(tag, b"totalsRowCount") or "0")
    if header and rg.r1 in rows.dset:
        raise Refused(f"row {rg.r1} is the header row of table {name!r}; sop does not remove it",
                      detail="Remove the row in Excel instead.")
    if totals and any(r in rows.dset for r in range(rg.r2 - totals + 1, rg.r2 + 1)):
        raise Refused(f"row {rg.r2} is the total row of table {name!r}; sop does not remove it",
                      detail="Remove the row in Excel instead.")
    sp = rows.span(rg.r1, rg.r2)
    if sp is None:   # a table without a header row lost every row
        raise Refused(f"removing these rows would remove all of table {name!r}",
                      detail="Remove the rows in Excel instead.")
    top = sp[0]
    bottom = sp[1]
    minimum = top + (1 if header else 0) + totals
    if bottom < minimum:  # no data row left: Excel keeps one empty data row
        bottom = minimum
    new_ref = str(_Range(rg.c1, top, rg.c2, bottom))
    out = xml[:m.start()] + _set_attr(tag, b"ref", new_ref) + xml[m.end():]

    def fix(el: re.Match[bytes]) -> bytes:
        t = el.group(0)
        v = _get_attr(t, b"ref")
        if not v:
            return t
        if v == ref:
            return _set_attr(t, b"ref", new_ref)
        nv = rows.range(v)
        return _set_attr(t, b"ref", nv) if nv else t
    for name_ in (b"autoFilter", b"sortState", b"sortCondition"):
        out = _tag_re(prefix, name_).sub(fix, out)
    return out


# --------------------------------------------------------------------------------------------
# Removing rows: the rows themselves


class _RowShifter:
    """Rewrites the sheetData body chunk by chunk: drops removed rows, renumbers, fixes formulas.

    Shared formulas are written out as one formula per cell (each translated to its cell, then
    shifted): after a removal a group's cells no longer stand in the same relation to each other.
    """

    def __init__(self, pkg: _Package, sx: _Sx, rows: _RowMap, own: str) -> None:
        self.pkg, self.sx, self.rows, self.own = pkg, sx, rows, own
        p = re.escape(sx.prefix)
        self.renum_re = re.compile(rb"(<" + p + rb'(?:row|c) r="[A-Za-z]*)\d+"')
        self.f_tag = b"<" + sx.prefix + b"f"
        self.f_re = re.compile(rb"<" + p + rb"f(\s[^>]*)?(?:/>|>(.*?)</" + p + rb"f>)", re.S)
        self.shared: dict[str, tuple[int, int, str]] = {}

    def chunk(self, chunk: bytes) -> bytes:
        sx, rows = self.sx, self.rows
        has_f = self.f_tag in chunk
        if not has_f:
            last = sx.row_num_re.findall(chunk)
            if not last or int(last[-1]) < rows.first:
                return chunk
        out: list[bytes] = []
        pos = 0
        for r, s0, _s1, e in _row_spans(chunk, sx):
            assert r is not None
            out.append(chunk[pos:s0])
            pos = e
            xml = chunk[s0:e]
            new = rows.row(r)
            if new is None:
                if has_f and self.f_tag in xml:
                    self.formulas(xml, r, None)
                continue
            if new != r:
                nb = str(new).encode()
                def renumber(m: re.Match[bytes], nb: bytes = nb) -> bytes:
                    return m.group(1) + nb + b'"'
                xml = self.renum_re.sub(renumber, xml)
            if has_f and self.f_tag in xml:
                xml = self.formulas(xml, r, new)
            out.append(xml)
        out.append(chunk[pos:])
        return b"".join(out)

    def formulas(self, row_xml: bytes, r: int, new: int | None) -> bytes:
        """Rewrite the formulas of one row (old number ``r``); ``new`` None: the row goes away."""
        sx = self.sx

        def cell(m: re.Match[bytes]) -> bytes:
            c_xml = m.group(0)
            if self.f_tag not in c_xml:
                return c_xml
            rm = sx.cell_r_re.search(m.group(1) or b"")
            if not rm:
                raise _damaged(self.pkg.path, f"row {r} has a formula cell without an r attribute")
            col = col_index(rm.group(1))
            return self.f_re.sub(lambda fm: self.formula(fm, r, col, new), c_xml, count=1)
        return sx.cell_re.sub(cell, row_xml)

    def formula(self, fm: re.Match[bytes], r: int, col: int, new: int | None) -> bytes:
        attrs = fm.group(1) or b""
        raw = fm.group(2)
        text = _xml_text(raw, xesc=False) if raw else ""
        t = _get_attr(attrs, b"t") or "normal"
        where = f"{col_letters(col)}{r}"
        if t == "dataTable":
            raise _damaged(self.pkg.path, f"cell {where} is part of a data table, which sop cannot move",
                           "Remove the row in Excel instead.")
        if t == "shared":
            si = _get_attr(attrs, b"si") or ""
            if _get_attr(attrs, b"ref") is not None or si not in self.shared:
                if not text:
                    raise _damaged(self.pkg.path, f"cell {where} uses shared formula {si} before its master")
                self.shared[si] = (r, col, text)
            else:
                mr, mc, mtext = self.shared[si]
                text = translate_formula(mtext, r - mr, col - mc)
            attrs = _drop_attrs(attrs, (b"t", b"ref", b"si"))
        elif t == "array":
            ref = _get_attr(attrs, b"ref")
            if ref:
                rg = _Range.parse(ref)
                cut = [x for x in range(rg.r1, rg.r2 + 1) if x in self.rows.dset]
                if cut and len(cut) != rg.r2 - rg.r1 + 1:
                    raise _damaged(self.pkg.path, f"removing row {cut[0]} would cut the array formula in {ref}",
                                   "Remove the row in Excel instead (it asks what to do with the array).")
                nref = self.rows.range(ref)
                if nref and nref != ref:
                    attrs = _set_attr(attrs, b"ref", nref)
        if new is None:
            return fm.group(0)
        new_text = shift_formula(text, self.rows, self.own) if text else text
        if new_text == text and attrs == (fm.group(1) or b""):
            return fm.group(0)
        p = self.sx.prefix
        return b"<" + p + b"f" + attrs + b">" + _escape_xml(new_text).encode("utf-8") + b"</" + p + b"f>"


def _escape_xml(s: str) -> str:
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("\r", "&#13;")


def _drop_attrs(attrs: bytes, names: tuple[bytes, ...]) -> bytes:
    for n in names:
        attrs = _attr_re(n).sub(b"", attrs, count=1)
    return attrs


def _open_sheetdata(seg: _Segments, sx: _Sx) -> tuple[bytes, bytes]:
    """Head and tail with ``<sheetData/>`` spelled as an open and a close tag."""
    if not seg.selfclosing:
        return seg.head, seg.tail
    head = re.sub(rb"\s*/>\Z", b">", seg.head)
    return head, b"</" + sx.prefix + b"sheetData>" + seg.tail


def _drop_calc_chain(pkg: _Package, replace: dict[str, Replacement], drop: set[str]) -> None:
    """Remove xl/calcChain.xml with its content-type override and relationship (Excel rebuilds it)."""
    rels = [r for r in pkg.workbook_rels if r.type == REL_CALC_CHAIN and not r.external]
    if not rels:
        return
    part = rels[0].target
    drop.add(part)
    ct = pkg.read("[Content_Types].xml")
    ct_new = re.sub(rb"<([\w.-]+:)?Override\b[^>]*?PartName\s*=\s*[\"']/" + re.escape(part.encode())
                    + rb"[\"'][^>]*?(?:/>|>\s*</\1?Override>)", b"", ct, flags=re.I)
    if ct_new != ct:
        replace["[Content_Types].xml"] = ct_new
    rels_part = _rels_name(pkg.workbook_part)
    wr = pkg.read(rels_part)
    ids = {r.rid for r in rels}

    def keep(m: re.Match[bytes]) -> bytes:
        return b"" if (_get_attr(m.group(0), b"Id") or "") in ids else m.group(0)
    wr_new = re.sub(rb"<([\w.-]+:)?Relationship\b[^>]*?(?:/>|>\s*</\1?Relationship>)", keep, wr)
    if wr_new != wr:
        replace[rels_part] = wr_new


def remove_rows(path: str | os.PathLike[str], worksheet: str | None, numbers: list[int]) -> None:
    """Remove rows like Excel's Delete Row: rows below move up, with every range in the sheet.

    See the module docstring for what moves and what is left as it is.

    Raises:
        Refused: a row number is not a row, or the removal would take a table's header or total row.
        SheetDamaged: the workbook cannot be edited safely; it is left untouched.
        PermissionError: the file cannot be replaced (locked); it is left untouched.
    """
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ROW:
            raise Refused(f"{n!r} is not a row number (1..{MAX_ROW:,})")
    if not numbers:
        return
    rows = _RowMap(numbers)
    with _editing(path, worksheet) as (pkg, info, validator, scan):
        sx = scan.sx
        head, tail = _open_sheetdata(scan.seg, sx)
        head, tail = _remove_outside_rows(pkg, head, tail, rows, info.name)
        replace: dict[str, Replacement] = {}
        drop: set[str] = set()
        for tpart in _sheet_tables(pkg, info.part):
            txml = pkg.read(tpart)
            new = _shift_table(pkg, tpart, txml, rows)
            if new != txml:
                replace[tpart] = new
        _drop_calc_chain(pkg, replace, drop)
        shifter = _RowShifter(pkg, sx, rows, info.name)

        def body() -> Iterator[bytes]:
            yield head
            seg2 = _Segments()
            total = 0
            for chunk in _iter_sheet(pkg, info.part, False, seg2):
                total += len(chunk)
                yield shifter.chunk(chunk)
            if total != scan.body_len:
                raise _damaged(pkg.path, f"{info.part} changed while it was being rewritten")
            yield tail

        replace[info.part] = body

        def write(f: BinaryIO) -> None:
            try:
                _write_package(pkg, f, replace, drop)
                validator.join()
            finally:
                pkg.close()

        fsops.atomic_write(path, write)
