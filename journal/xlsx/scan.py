"""The worksheet scanner: the part cut into chunks at row boundaries, byte regexes, and the first pass of a write."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from xml.parsers import expat

from .constants import MAX_ROW
from .package import Package, SharedStrings, check_encoding, damaged, root_prefix
from .text import Value, parse_number, xml_text

# --------------------------------------------------------------------------------------------
# Byte regexes and the chunked part


class Sx:
    """Byte regexes for one worksheet part, bound to its namespace prefix."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = p0 = prefix
        p = re.escape(prefix)
        self.row_tag = b"<" + p0 + b"row"
        self.sheetdata_end = b"</" + p0 + b"sheetData>"
        self.sheetdata_re = re.compile(rb"<" + p + rb"sheetData(?:\s[^>]*?)?(/?)>")
        self.row_re = re.compile(rb"<" + p + rb"row(\s[^>]*?)?(/?)>")
        self.row_end = b"</" + p0 + b"row>"
        self.row_r_re = re.compile(rb'\s+r="(\d+)"')          # r first: the usual spelling
        self.cell_re = re.compile(rb"<" + p + rb"c(\s[^>]*?)?(?:/>|>(.*?)</" + p + rb"c>)", re.S)
        self.cell_tag_re = re.compile(rb"<" + p + rb"c(\s[^>]*?)?/?>")
        self.cell_r_re = re.compile(rb'\s+r="([A-Za-z]{1,3})(\d+)"')
        self.cell_t_re = re.compile(rb"""\st\s*=\s*["'](\w+)["']""")
        self.cell_s_re = re.compile(rb"""\ss\s*=\s*["'](\d+)["']""")
        self.v_re = re.compile(rb"<" + p + rb"v(?:\s[^>]*)?>(.*?)</" + p + rb"v>", re.S)
        self.is_re = re.compile(rb"<" + p + rb"is(?:\s[^>]*)?>(.*?)</" + p + rb"is>", re.S)
        self.value_re = re.compile(rb"<" + p + rb"v(?:\s[^>]*)?>[^<]|<" + p + rb"t(?:\s[^>]*)?>[^<]")
        self.content_re = re.compile(rb"<" + p + rb"v(?:\s[^>]*)?>[^<]|<" + p + rb"t(?:\s[^>]*)?>[^<]|<"
                                     + p + rb"f[\s>/]")
        self.sst = SharedStrings([], prefix)   # for inline rich text
        self.no_r_re = re.compile(rb"<" + p + rb"""(?:c|row)(?! r=")[\s>/]""")   # r missing or not first
        self.row_num_re = re.compile(rb"<" + p + rb'row r="(\d+)"')
        self.row_r = b"<" + p0 + b'row r="'
        self.cell_r = b"<" + p0 + b'c r="'
        self.v_open = b"<" + p0 + b"v>"
        self.v_close = b"</" + p0 + b"v>"
        self._r_chunk: bytes | None = None
        self._r_first = False

    def r_first(self, chunk: bytes) -> bool:
        """Whether every row and cell in a chunk carries ``r`` as its first attribute (the fast paths'
        condition); the reader and the scan of one pass ask it of the same chunk, so it is kept."""
        if chunk is not self._r_chunk:
            self._r_chunk, self._r_first = chunk, self.no_r_re.search(chunk) is None
        return self._r_first

    def row_number(self, attrs: bytes | None) -> int | None:
        """A row's ``r`` from its start tag's attributes, in any order; None when it has none (or not a number)."""
        if not attrs:
            return None
        m = self.row_r_re.match(attrs)
        if m:
            return int(m.group(1))
        v = attr_value(attrs, b"r")
        return int(v) if v is not None and v.isdigit() else None

    def cell_ref(self, attrs: bytes | None) -> tuple[bytes, bytes] | None:
        """A cell's ``r`` as (column letters, row digits), in any order; None when it has none."""
        if not attrs:
            return None
        m = self.cell_r_re.match(attrs)
        if m is None:
            v = attr_value(attrs, b"r")
            if v is None:
                return None
            m = _CELL_REF_RE.fullmatch(v)
            if m is None:
                return None
        return m.group(1), m.group(2)

    def row_numbers(self, chunk: bytes) -> list[int] | None:
        """The number of every row in a chunk, in order; None when a row or cell has no ``r``.

        The common spelling (``r`` the first attribute, in double quotes) costs two searches in
        C; any other order or quoting falls back to reading each row's and cell's attributes.
        """
        nums = self.row_num_re.findall(chunk)
        if len(nums) == chunk.count(self.row_r) and self.r_first(chunk):
            return list(map(int, nums))
        out = []
        for m in self.row_re.finditer(chunk):
            r = self.row_number(m.group(1))
            if r is None:
                return None
            out.append(r)
        for m in self.cell_tag_re.finditer(chunk):
            if self.cell_ref(m.group(1)) is None:
                return None
        return out

    def cell_value(self, attrs: bytes, inner: bytes | None, sst: SharedStrings) -> Value | None:
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
            return parse_number(raw)
        if t == b"b":
            return raw.strip() in (b"1", b"true")
        s = xml_text(raw)   # str, e (error text), d (ISO date text)
        return s or None


def _inline_text(body: bytes, sx: Sx) -> str:
    o, c = sx.sst.simple_tags
    if body.startswith(o) and body.endswith(c) and body.count(b"<") == 2:
        return xml_text(body[len(o):-len(c)])
    return sx.sst.decode_rich(body)


_SHEETDATA_ANY_RE = re.compile(rb"<([A-Za-z_][\w.-]*:)?sheetData(?:\s[^>]*?)?(/?)>")
_ATTR_RE = re.compile(rb"""([^\s=<>/"']+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_CELL_REF_RE = re.compile(rb"([A-Za-z]{1,3})(\d+)")


def attr_span(attrs: bytes, name: bytes) -> tuple[int, int] | None:
    """Where the value of attribute ``name`` (unprefixed) lies in a start tag's attribute text, in any
    order and either quote; None when the tag has no such attribute."""
    for m in _ATTR_RE.finditer(attrs):
        if m.group(1) == name:
            g = 2 if m.group(2) is not None else 3
            return m.start(g), m.end(g)
    return None


def attr_value(attrs: bytes, name: bytes) -> bytes | None:
    sp = attr_span(attrs, name)
    return None if sp is None else attrs[sp[0]:sp[1]]


@dataclass
class Segments:
    """A worksheet part split as head (through ``<sheetData>``), row chunks, and tail."""

    head: bytes = b""
    tail: bytes = b""
    selfclosing: bool = False
    sx: Sx | None = None
    oddities: list[tuple[int, str]] = field(default_factory=list)   # (byte offset in the part, what)


def _feed(parser: expat.XMLParserType, data: bytes, final: bool, pkg: Package, part: str) -> None:
    try:
        parser.Parse(data, final)
    except expat.ExpatError as e:
        raise damaged(pkg.path, f"{part} is not well-formed XML ({e})",
                      "Open and re-save it in Excel, or restore it from a backup.") from None


def iter_sheet(pkg: Package, part: str, validate: bool,
               seg: Segments) -> Iterator[bytes]:
    """Yield the bytes inside ``<sheetData>`` in chunks that end just before a ``<row``.

    Fills ``seg.head`` before the first chunk and ``seg.tail`` after the last.
    With ``validate`` every byte of the part also goes through expat.
    """
    parser = None
    if validate:
        parser = expat.ParserCreate()
        parser.UseForeignDTD(False)

        def no_dtd(*_a: object) -> None:
            raise damaged(pkg.path, f"{part} declares a DOCTYPE; refusing to edit it")
        parser.StartDoctypeDeclHandler = no_dtd
        parser.EntityDeclHandler = no_dtd
        # constructs the byte scanner does not follow: noted here at no cost when absent
        odd = seg.oddities

        def note(what: str) -> Callable[..., None]:
            return lambda *_a: odd.append((parser.CurrentByteIndex, what))  # type: ignore[union-attr]
        parser.CommentHandler = note("an XML comment")
        parser.ProcessingInstructionHandler = note("a processing instruction")
        parser.StartCdataSectionHandler = note("a CDATA section")

    sx: Sx | None = None
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
                    raise damaged(pkg.path, f"{part} has no <sheetData>")
                continue
            head = buf[:m.end()]
            check_encoding(head[:200], pkg.path, part)
            prefix = root_prefix(head, pkg.path, part, b"worksheet")
            if (m.group(1) or b"") != prefix:
                raise damaged(pkg.path, f"{part} mixes namespace prefixes, which sop does not edit")
            if b"<!--" in head or b"<![CDATA[" in head:
                raise damaged(pkg.path, f"{part} holds XML comments or CDATA, which sop does not edit",
                              "Open and re-save the workbook in Excel.")
            sx = Sx(prefix)
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
                raise damaged(pkg.path, f"{part} ends inside <sheetData>")
            else:
                cut = buf.rfind(sx.row_tag)
                if cut > 0:
                    yield buf[:cut]
                    buf = buf[cut:]
        if chunk is None:
            if state != 2:
                raise damaged(pkg.path, f"{part} has no <sheetData>")
            seg.tail = buf
            return


def row_spans(seg: bytes, sx: Sx) -> Iterator[tuple[int | None, int, int, int]]:
    """(row number or None when implied, start, end of start tag, end of element) of each row in a chunk."""
    pos = 0
    n = len(seg)
    row_re = sx.row_re
    row_end = sx.row_end
    while pos < n:
        m = row_re.search(seg, pos)
        if not m:
            return
        r = sx.row_number(m.group(1))
        if m.group(2):
            end = m.end()
        else:
            e = seg.find(row_end, m.end())
            if e < 0:
                raise ValueError("unterminated row")
            end = e + len(row_end)
        yield r, m.start(), m.end(), end
        pos = end


# --------------------------------------------------------------------------------------------
# Pass 1: scan the master sheet before a write; pass 2 reads its rows again

@dataclass
class Scan:
    seg: Segments
    sx: Sx
    last_content_row: int = 0      # the last row holding a value or a formula
    last_content_end: int = 0      # offset, in the sheetData body, just after that row's element
    max_row: int = 0
    body_len: int = 0
    rest: list[bytes] | None = None   # (``keep_rest``) the sheetData body after ``last_content_end``


def _check_chunk(chunk: bytes, sx: Sx, pkg: Package, part: str) -> list[int]:
    """Refuse what sop does not edit among the rows of a chunk; returns the chunk's row numbers."""
    if b"xmlns" in chunk:
        raise damaged(pkg.path, f"{part} holds a namespace declaration among its rows, which sop does not edit",
                      "Open and re-save the workbook in Excel.")
    nums = sx.row_numbers(chunk)
    if nums is None:
        raise damaged(pkg.path, f"{part} has rows or cells without an r attribute, which sop does not edit",
                      "Open and re-save the workbook in Excel.")
    return nums


class Scanner:
    """The first pass of a write, fed one chunk of the part at a time (:func:`iter_sheet`'s): checks
    the rows' shape and finds the last row holding content.  :func:`scan_sheet` drives it alone;
    :func:`.read.read_table` can drive it beside its own reading, so one pass does both."""

    def __init__(self, pkg: Package, part: str, seg: Segments, keep_rest: bool) -> None:
        self.pkg, self.part, self.seg, self.keep_rest = pkg, part, seg, keep_rest
        self.scan: Scan | None = None
        self.offset = 0
        self.prev = 0
        self.rest: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        pkg, part, seg = self.pkg, self.part, self.seg
        sx = seg.sx
        assert sx is not None
        scan = self.scan
        if scan is None:
            scan = self.scan = Scan(seg, sx)
        check_odd(pkg, part, seg)
        nums = _check_chunk(chunk, sx, pkg, part)
        if nums:
            prev = self.prev
            if nums[0] <= prev or nums[-1] > MAX_ROW or not all(map(operator.lt, nums, nums[1:])):
                bad = next((b for a, b in zip([prev, *nums], nums, strict=False) if b <= a), nums[-1])
                raise damaged(pkg.path, f"{part} has row {bad} out of order or past the last row",
                              "Open and re-save the workbook in Excel.")
            self.prev = nums[-1]
            scan.max_row = nums[-1]
        end = len(chunk)
        found = False
        while end > 0:
            s0 = chunk.rfind(sx.row_tag, 0, end)
            if s0 < 0:
                break
            if sx.content_re.search(chunk, s0, end):
                m = sx.row_re.match(chunk, s0)
                r = sx.row_number(m.group(1)) if m is not None else None
                if m is None or r is None:
                    raise damaged(pkg.path, f"{part}: a row cannot be parsed")
                if m.group(2):
                    row_end = m.end()
                else:
                    row_end = chunk.find(sx.row_end, m.end(), end)
                    if row_end < 0:
                        raise damaged(pkg.path, f"{part}: row {r} has no end tag")
                    row_end += len(sx.row_end)
                scan.last_content_row = r
                scan.last_content_end = self.offset + row_end
                found = True
                if self.keep_rest:
                    self.rest = [chunk[row_end:]]
                break
            end = s0
        if self.keep_rest and not found:
            self.rest.append(chunk)
        self.offset += len(chunk)

    def finish(self) -> Scan:
        scan = self.scan
        if scan is None:   # no rows at all
            assert self.seg.sx is not None
            scan = Scan(self.seg, self.seg.sx)
        scan.body_len = self.offset
        if self.keep_rest:
            scan.rest = self.rest
        check_odd(self.pkg, self.part, self.seg)
        return scan


def scan_sheet(pkg: Package, part: str, validate: bool = True, keep_rest: bool = False) -> Scan:
    """Check the part's shape, find the last row holding content, and (``validate``) run expat over it.

    With ``keep_rest`` the bytes after the last content row (where an append merges its rows) are
    kept in ``Scan.rest``, so an append can check them before it writes anything.
    """
    seg = Segments()
    scanner = Scanner(pkg, part, seg, keep_rest)
    for chunk in iter_sheet(pkg, part, validate, seg):
        scanner.feed(chunk)
    return scanner.finish()


def check_odd(pkg: Package, part: str, seg: Segments) -> None:
    """Refuse comments, processing instructions and CDATA anywhere in the part."""
    for _at, what in seg.oddities:
        raise damaged(pkg.path, f"{part} holds {what}, which sop does not edit",
                      "Open and re-save the workbook in Excel.")


def open_sheetdata(seg: Segments, sx: Sx) -> tuple[bytes, bytes]:
    """Head and tail with ``<sheetData/>`` spelled as an open and a close tag."""
    if not seg.selfclosing:
        return seg.head, seg.tail
    head = re.sub(rb"\s*/>\Z", b">", seg.head)
    return head, b"</" + sx.prefix + b"sheetData>" + seg.tail


def reread(pkg: Package, part: str, scan: Scan) -> Iterator[bytes]:
    """The part's rows again, chunk by chunk, for the second pass; refuse a part that changed since ``scan``."""
    total = 0
    for chunk in iter_sheet(pkg, part, False, Segments()):
        total += len(chunk)
        yield chunk
    if total != scan.body_len:
        raise damaged(pkg.path, f"{part} changed while it was being rewritten")
